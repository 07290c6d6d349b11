"""
An https URL given as an input image is fetched by the worker under the same result-URL policy as a
download (connection extras ``result_hosts`` and ``allow_private_result_hosts``), and its query, a
credential, is never recorded.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable

import pytest

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.inputs.resolve import resolve_input_images
from airflow_provider_imggen.request import validate_generation_request
from tests.input_images import png, sha256
from tests.integration.security.conftest import Names, Server, image, use_gateway


def _resolve(url: str) -> object:
    request = validate_generation_request(model="wan2.6-image", prompt="restyle it", images=[url])
    return resolve_input_images(request, aws_conn_id=None, imggen_conn_id="imggen_default")


@pytest.fixture
def cdn(servers: Callable[..., Server], tls: ssl.SSLContext, names: Names) -> Server:
    names.table["store.imggen.test"] = ["127.0.0.1"]
    small, large = png(512, 512), png(900, 900, noise=True)
    return servers({"/small.png": image(small), "/large.png": image(large)}, tls=tls)


def test_an_allowed_https_input_is_read_checked_and_sent(
    cdn: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_gateway(
        monkeypatch, cdn, result_hosts=[f"store.imggen.test:{cdn.port}"], allow_private_result_hosts=True
    )
    small_url = cdn.url("/small.png?Expires=1&Signature=input-secret-1", "store.imggen.test")
    (small,) = _resolve(small_url).images
    assert small.sha256 == sha256(png(512, 512))
    # Small: the very bytes checked go inline, so the service edits what was hashed.
    assert small.wire == "data:image/png;base64," + base64.b64encode(png(512, 512)).decode()
    assert "input-secret-1" not in str(small.record()) and "Signature=***" in small.record()["uri"]
    large_url = cdn.url("/large.png?Signature=input-secret-2", "store.imggen.test")
    (large,) = _resolve(large_url).images
    assert large.wire == large_url  # large: the service fetches it itself
    assert "input-secret-2" not in str(large.record()) and "input-secret-2" not in repr(large)


def test_an_input_host_outside_result_hosts_is_refused_before_any_fetch(
    cdn: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_gateway(monkeypatch, cdn, allow_private_result_hosts=True)  # default result hosts: DashScope's
    with pytest.raises(ImageGenerationValidationError, match="result_hosts") as raised:
        _resolve(cdn.url("/small.png?Signature=input-secret-3", "store.imggen.test"))
    assert "input-secret-3" not in str(raised.value)
    assert cdn.gets() == []


def test_an_input_on_a_private_address_needs_the_opt_in(cdn: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    use_gateway(monkeypatch, cdn, result_hosts=[f"store.imggen.test:{cdn.port}"])
    with pytest.raises(ImageGenerationValidationError, match="public address"):
        _resolve(cdn.url("/small.png", "store.imggen.test"))
    assert cdn.gets() == []


def test_a_plain_http_input_is_refused(
    servers: Callable[..., Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = servers({"/small.png": image(png())})
    api = servers({})
    use_gateway(monkeypatch, api, result_hosts=["*"], allow_private_result_hosts=True)
    with pytest.raises(ImageGenerationValidationError, match="scheme"):
        _resolve(plain.url("/small.png"))
    assert plain.gets() == []


def test_a_signed_input_url_rendered_into_images_is_registered_with_the_masker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Rendered fields are stored and shown: the URL's query values are masked there and in logs."""
    import airflow.sdk.log

    from tests.integration.operators.test_image_generation import make_context, make_operator

    registered: list[object] = []
    monkeypatch.setattr(
        airflow.sdk.log,
        "mask_secret",
        lambda secret, name=None: registered.extend(secret if isinstance(secret, list) else [secret]),
    )
    operator = make_operator(
        model="wan2.6-image",
        images="{{ params.photo }}",
        params={"photo": "https://cdn.example.com/p.png?sig=s3cr3t-v4lue"},
    )
    operator.render_template_fields(make_context(operator))  # type: ignore[arg-type]
    assert operator.images == "https://cdn.example.com/p.png?sig=s3cr3t-v4lue"
    assert "s3cr3t-v4lue" in registered
