"""
Issue 25: a result URL signed in its path (CDN URL-signing styles put the token there) is as much a
credential as one signed in its query: XCom, logs and the Images view never show it usable.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from airflow_provider_imggen.utils import MASK, is_masked_url, mask_url, url_secrets
from tests.integration.security.conftest import Server, gateway_answer, image, use_gateway
from tests.integration.transfers.test_image_generation_to_s3 import generate, make_operator, png_bytes, run
from tests.s3_fixtures import S3Bucket

PNG = png_bytes(16, 16)
MD5 = "a1f5c0e9d8b7a6f5e4d3c2b1a0f9e8d7"
# The signing styles that put the credential in the path, each with the secret it must hide.
PATH_SIGNED = {
    "Alibaba Cloud CDN type B": (f"https://cdn.example.com/201508150800/{MD5}/images/cat.png", MD5),
    "Alibaba Cloud CDN type C": (f"https://cdn.example.com/{MD5}/55CE8100/images/cat.png", MD5),
    "Tencent Cloud CDN type C": (f"https://cdn.example.com/{MD5}/5e577978/cat.png", MD5),
    "Akamai path token": (
        "https://cdn.example.com/hdnts=exp=1700000000~hmac=9f86d081884c7d65/cat.png",
        "hmac=9",
    ),
    "nginx secure_link": (
        "https://cdn.example.com/s/AuLDV3AA9P4hr0hVjiKmYg/1700000000/cat.png",
        "AuLDV3AA9P4",
    ),
    "token as file name": (f"https://cdn.example.com/get/{MD5}.png", MD5),
    "base64url segment": ("https://cdn.example.com/t/eyJleHAiOjE3MDB9.c2lnbmF0dXJl/cat.png", "eyJleHAi"),
}


@pytest.mark.parametrize(("url", "secret"), PATH_SIGNED.values(), ids=PATH_SIGNED.keys())
def test_a_credential_in_the_path_is_masked_and_known_to_the_masker(url: str, secret: str) -> None:
    shown = mask_url(url)
    assert secret not in shown and MASK in shown
    assert shown.startswith("https://cdn.example.com/") and shown.rsplit(".", 1)[1] in ("png",)
    assert is_masked_url(shown) and not is_masked_url(url)
    assert mask_url(shown) == shown, "masking is idempotent"
    assert any(secret in part for part in url_secrets(url)), "logs mask it too"
    assert any(secret in part for part in url_secrets(url, whole_only=True))


def test_only_the_query_signing_stores_keep_their_paths_whole() -> None:
    # Elsewhere a word may be a token: only digits (dates, times), segments of 4 characters at most and the
    # extension are shown.
    shown = mask_url("https://cdn.example.com/images/2026/12/07/cat.png")
    assert shown == f"https://cdn.example.com/{MASK}/2026/12/07/cat.png"
    # A store's name inside another host's proves nothing.
    assert MASK in mask_url("https://amazonaws.com.cdn.example/SECRETSECRETSECRET/a.png")
    assert MASK in mask_url("https://x.execute-api.us-east-1.amazonaws.com/SECRETSECRETSECRET/a.png")
    oss = "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1d/0b5f2a34-9c1e-4a7b/ab12cd34.png?Signature=s"
    assert mask_url(oss) == oss.replace("Signature=s", f"Signature={MASK}")
    s3 = f"https://bucket.s3.us-east-1.amazonaws.com/out/{MD5}.png?X-Amz-Signature=s"
    assert MD5 in mask_url(s3), "S3 signs in the query: its object key is shown"


def test_a_path_signed_result_url_is_never_usable_from_xcom_or_the_logs(
    servers: Callable[..., Server],
    monkeypatch: pytest.MonkeyPatch,
    s3: S3Bucket,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = f"/1700000000/{MD5}/cat.png"
    gateway = servers({path: image(PNG)})
    gateway.post = gateway_answer([gateway.url(path)])
    use_gateway(monkeypatch, gateway)

    generation = generate(n=1)
    stored = run(make_operator(generation=generation, s3_bucket=s3.name, s3_key="r/{index}.{ext}"))

    (record,) = generation["images"]
    assert record["url"] == gateway.url(f"/1700000000/{MASK}/cat.png")
    assert MD5 not in json.dumps(generation) and MD5 not in json.dumps(stored)
    assert s3.read(stored[0]["key"]) == PNG, "the transfer still downloads it (sealed)"
    captured = capsys.readouterr()
    assert MD5 not in captured.out + captured.err + caplog.text
