"""
Issue 25: an API that echoes the key it was sent, in any form, gets it into no XCom, log or S3 metadata.

A hostile gateway answers with the key in ``usage`` (as sent), in ``revised_prompt`` (after ``Bearer``),
URL-encoded, base64-encoded inside a longer text (``Authorization: Bearer <key>``) at each alignment, and
as its ``x-request-id``. The generation's XCom, the transfer's XCom and S3 metadata, and everything
logged must hold none of them.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from urllib.parse import quote

import pytest

from airflow_provider_imggen.utils import MASK, redact_json, secret_forms
from tests.conftest import API_KEY
from tests.integration.security.conftest import Route, Server, image, json_answer, use_gateway
from tests.integration.transfers.test_image_generation_to_s3 import generate, make_operator, png_bytes, run
from tests.s3_fixtures import S3Bucket

PNG = png_bytes(16, 16)
# The forms the service echoes, each as it appears in the answer (an independent spelling of each form).
ECHOES = {
    "as sent": API_KEY,
    "bearer": f"Bearer {API_KEY}",
    "url-encoded": quote(f"key={API_KEY}&x=/", safe=""),
    **{
        f"base64 at offset {offset}": base64.b64encode(
            f"{'x' * offset}Authorization: Bearer {API_KEY}; trace=1".encode()
        ).decode()
        for offset in range(3)
    },
    "url-safe base64": base64.urlsafe_b64encode(f"??>{API_KEY}".encode()).decode(),
}


def leaks(text: str) -> list[str]:
    """The echoed forms whose key part survives in ``text`` (decoded again wherever it was encoded)."""
    found = [name for name, echo in ECHOES.items() if echo in text]
    if API_KEY in text or quote(API_KEY, safe="") in text:
        found.append("the key itself")
    return found


def echoing_answer(server: Server) -> Route:
    payload = {
        "created": int(time.time()),
        "data": [{"url": server.url("/results/a.png"), "revised_prompt": f"a cat ({ECHOES['bearer']})"}],
        "usage": {"echo": ECHOES["as sent"], "trace": list(ECHOES.values()), ECHOES["as sent"]: 1},
    }
    return json_answer(payload, request_id=API_KEY)


@pytest.fixture
def echoing(servers: Callable[..., Server], monkeypatch: pytest.MonkeyPatch) -> Server:
    server = servers({"/results/a.png": image(PNG)})
    server.post = echoing_answer(server)
    use_gateway(monkeypatch, server)
    return server


def test_an_echoed_key_reaches_neither_xcom_nor_s3_metadata_nor_the_logs(
    echoing: Server,
    s3: S3Bucket,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    generation = generate(n=1)
    stored = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="r/{index}.{ext}"))

    assert leaks(json.dumps(generation)) == []
    assert MASK in generation["usage"]["echo"] and MASK in generation["images"][0]["revised_prompt"]
    assert generation["request_id"] is None or leaks(generation["request_id"]) == []
    assert leaks(json.dumps(stored)) == []
    (entry,) = stored
    assert s3.read(entry["key"]) == PNG
    assert leaks(json.dumps(s3.head(entry["key"])["Metadata"])) == []
    captured = capsys.readouterr()
    assert leaks(captured.out + captured.err + caplog.text) == []


def test_every_form_is_known_to_the_redaction() -> None:
    """The forms the test plants are each found by secret_forms (none survives a redaction)."""
    for name, echo in ECHOES.items():
        text = f"<{echo}>"
        assert redact_json({"v": text}, API_KEY)["v"] != text, name
    assert all(len(form) >= 8 for form in secret_forms(API_KEY))


def test_a_key_too_short_to_encode_safely_is_still_redacted_as_sent() -> None:
    assert redact_json({"k": "abc-x-abc"}, "x") == {"k": f"abc-{MASK}-abc"}


def test_an_error_body_cut_for_the_message_shows_no_part_of_a_key_straddling_the_cut() -> None:
    from airflow_provider_imggen.exceptions import ImageGenerationAPIError
    from airflow_provider_imggen.wire.errors import decode_response

    for before in range(285, 300):
        with pytest.raises(ImageGenerationAPIError) as raised:
            decode_response(502, "Bad Gateway", {}, "x" * before + API_KEY, API_KEY)
        assert API_KEY[:6] not in str(raised.value), before
