"""
No usable signed URL outside the tasks that fetch it: masking (every query value, user credentials), the
Fernet-sealed copy and its round trip, key rotation and absence, the secrets masker, and the typed XCom
records the operator, the sensor and the transfer exchange.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.fernet import Fernet

from airflow_provider_imggen import sealed_urls
from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError, ResultUrlSealError
from airflow_provider_imggen.records import GenerationRecord, ImageRecord, StoredImageRecord
from airflow_provider_imggen.sealed_urls import seal, unseal
from airflow_provider_imggen.utils import MASK, is_masked_url, mask_url, url_secrets
from tests.conftest import task_queries, task_submissions
from tests.integration.transfers.test_image_generation_to_s3 import generate, make_operator
from tests.integration.transfers.test_image_generation_to_s3 import run as run_transfer
from tests.s3_fixtures import S3Bucket

# Signed URLs of the stores in the wild: each secret must vanish from what mask_url shows.
SIGNED_URLS = [
    pytest.param(
        "https://dashscope-result-bj.oss-cn-beijing.aliyuncs.com/1/a.png"
        "?Expires=1764500000&OSSAccessKeyId=LTAI5tSecretKeyId&Signature=abc%2Bdef%3D",
        ["1764500000", "LTAI5tSecretKeyId", "abc%2Bdef%3D", "abc+def="],
        id="oss",
    ),
    pytest.param(
        "https://b.s3.amazonaws.com/k.png?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIAEXAMPLE%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
        "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"
        "&X-Amz-Signature=0123456789abcdef",
        ["AKIAEXAMPLE", "0123456789abcdef", "20260101T000000Z"],
        id="s3-sigv4",
    ),
    pytest.param(
        "https://cdn.example.com/a.png?auth_key=1764500000-0-0-9f86d081884c7d65", ["9f86d081"], id="auth_key"
    ),
    pytest.param("https://cdn.example.com/a.png?md5=Xk2jsd8Kq&expires=1764500000", ["Xk2jsd8Kq"], id="md5"),
    pytest.param(
        "https://cdn.example.com/a.png?hdnts=exp=1764500000~acl=/*~hmac=7c1e5a9b3f",
        ["7c1e5a9b3f", "exp=1764500000"],
        id="akamai-hdnts",
    ),
    pytest.param("https://cdn.example.com/a.png?Zm9vYmFyc2VjcmV0", ["Zm9vYmFyc2VjcmV0"], id="bare-token"),
    pytest.param("https://cdn.example.com/a.png?sig=s3cr3tSig;v=2", ["s3cr3tSig"], id="semicolon"),
    pytest.param(
        "https://alice:pa55word@store.example.com/a.png?token=t0k3nValue#frag-secret",
        ["alice", "pa55word", "t0k3nValue", "frag-secret"],
        id="userinfo-and-fragment",
    ),
]


@pytest.mark.parametrize(("url", "secrets"), SIGNED_URLS)
def test_mask_url_masks_every_query_value_whatever_its_name(url: str, secrets: list[str]) -> None:
    shown = mask_url(url)

    assert not [secret for secret in secrets if secret in shown], shown
    assert "@" not in shown and "#" not in shown
    assert shown.split("?")[0] == url.split("?")[0].replace("alice:pa55word@", "")
    assert all(
        value == MASK
        for item in shown.split("?", 1)[1].split("&")
        for value in [item.partition("=")[2] or item]
    )
    assert is_masked_url(shown) and not is_masked_url(url)
    assert mask_url(shown) == shown, "masking is idempotent"


def test_mask_url_keeps_names_and_leaves_plain_urls_alone() -> None:
    assert (
        mask_url("https://h/p.png?Expires=1&OSSAccessKeyId=k&Signature=abc")
        == "https://h/p.png?Expires=***&OSSAccessKeyId=***&Signature=***"
    )
    assert mask_url("https://example.com/x.png") == "https://example.com/x.png"
    assert not is_masked_url("https://example.com/x.png"), "no query: nothing was masked, usable as it is"
    assert mask_url("http://[::1/x?Signature=abc") == MASK, "an unparsable URL is masked whole"


@pytest.mark.parametrize(("url", "secrets"), SIGNED_URLS)
def test_url_secrets_lists_every_value_as_written_and_decoded(url: str, secrets: list[str]) -> None:
    listed = url_secrets(url)
    for secret in secrets:
        if secret == "frag-secret":
            continue  # the fragment is never sent nor shown: mask_url drops it
        assert any(secret in value for value in listed), (secret, listed)


# -- the sealed copy ----------------------------------------------------------------------------------


@pytest.fixture
def fernet_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set [core] fernet_key for this test (Airflow caches its Fernet: the cache is cleared around it)."""
    from airflow.sdk.crypto import get_fernet

    def use(key: str) -> None:
        monkeypatch.setenv("AIRFLOW__CORE__FERNET_KEY", key)
        get_fernet.cache_clear()

    get_fernet.cache_clear()
    yield use
    get_fernet.cache_clear()
    monkeypatch.undo()
    get_fernet.cache_clear()


@pytest.fixture
def masked_secrets(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What is registered with Airflow's secrets masker."""
    import airflow.sdk.log

    registered: list[object] = []

    def mask_secret(secret: object, name: str | None = None) -> None:
        # Airflow's masker takes a list of secrets too (the provider registers a URL's in one call).
        registered.extend(secret if isinstance(secret, list) else [secret])

    monkeypatch.setattr(airflow.sdk.log, "mask_secret", mask_secret)
    return registered


SIGNED = (
    "https://results.example.com/a.png?Expires=1764500000&OSSAccessKeyId=LTAI5tKeyId&Signature=s1gN%2Fx%3D"
)


def test_sealed_url_round_trip_holds_nothing_readable(fernet_key: Any, masked_secrets: list[object]) -> None:
    fernet_key(Fernet.generate_key().decode())

    token = seal(SIGNED)

    assert token is not None
    assert "s1gN" not in token and "LTAI5tKeyId" not in token and "results.example.com" not in token
    assert json.loads(json.dumps({"url_sealed": token})) == {"url_sealed": token}
    assert seal(SIGNED) != token, "Fernet tokens are randomised: equal URLs are not recognisable"
    assert unseal(token, label="image 0") == SIGNED
    # Opening it registered its secrets: any later log line of this process is redacted.
    assert {"s1gN%2Fx%3D", "s1gN/x=", "LTAI5tKeyId"} <= {s for s in masked_secrets if isinstance(s, str)}


def test_a_rotated_key_opens_old_seals_while_the_old_key_is_kept(fernet_key: Any) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    fernet_key(old)
    token = seal(SIGNED)
    assert token is not None

    fernet_key(f"{new},{old}")  # rotation as Airflow documents it: new first, old kept to decrypt
    assert unseal(token, label="image 0") == SIGNED

    fernet_key(new)  # the old key dropped
    with pytest.raises(
        ResultUrlSealError, match=r"image 0.*sealed with a Fernet key this worker does not have"
    ):
        unseal(token, label="image 0")


@pytest.mark.parametrize("key", ["", "not-a-fernet-key"])
def test_without_a_usable_key_nothing_is_sealed_and_opening_says_why(fernet_key: Any, key: str) -> None:
    token = Fernet(Fernet.generate_key()).encrypt(SIGNED.encode()).decode()
    fernet_key(key)

    assert not sealed_urls.can_seal() and seal(SIGNED) is None
    with pytest.raises(ResultUrlSealError, match=r"this worker has none: set \[core\] fernet_key"):
        unseal(token, label="image 0")


# -- the operator, the sensor and the transfer ------------------------------------------------------------


def test_the_generating_task_registers_every_query_value_with_the_masker(
    imggen_conn: EmulatorServer, masked_secrets: list[object]
) -> None:
    generation = generate(n=2)

    for image in generation["images"]:
        signed = unseal(image["url_sealed"], label="image")
        query = dict(item.split("=", 1) for item in signed.split("?", 1)[1].split("&"))
        registered = {secret for secret in masked_secrets if isinstance(secret, str)}
        assert {query["Signature"], query["OSSAccessKeyId"], query["Expires"]} <= registered
        assert image["url"] == mask_url(signed)


def test_gateway_without_a_fernet_key_refuses_before_anything_is_billed(
    imggen_conn: EmulatorServer, fernet_key: Any
) -> None:
    fernet_key("")

    with pytest.raises(ResultUrlSealError, match=r"Nothing was sent or billed.*fernet_key"):
        generate(n=1)
    assert imggen_conn.billed_images() == 0 and imggen_conn.requests_log() == []


def test_sensor_to_transfer_works_from_the_xcom_alone(
    dashscope_conn: EmulatorServer, s3: S3Bucket, fernet_key: Any
) -> None:
    """The sensor's XCom, as stored (JSON) and read by a fresh process: the transfer needs nothing else."""
    from tests.integration.operators.test_deferrable import make_sensor, submit
    from tests.integration.operators.test_image_generation import make_context

    fernet_key("x1Sn0hD8nL4p1ZkN0r3Jb2m9bQ8K6wEo2o3cY4f5T7E=")
    generation_task_id = submit(n=2)
    sensor = make_sensor(generation_task_id=generation_task_id)
    xcom = json.loads(json.dumps(sensor.execute(make_context(sensor))))  # type: ignore[arg-type]
    assert "Signature=" not in json.dumps(xcom).replace("Signature=***", "")
    queries = len(task_queries(dashscope_conn))
    fernet_key("x1Sn0hD8nL4p1ZkN0r3Jb2m9bQ8K6wEo2o3cY4f5T7E=")  # a restarted worker: nothing cached

    entries = run_transfer(make_operator(generation=xcom, s3_bucket=s3.name, s3_key="sensed/{index}.{ext}"))

    assert [entry["key"] for entry in entries] == ["sensed/0.png", "sensed/1.png"]
    assert len(task_queries(dashscope_conn)) == queries, "the transfer did not ask the API"
    assert len(task_submissions(dashscope_conn)) == 1
    _check_landed(s3, entries)


def test_native_results_without_a_fernet_key_are_read_again_from_the_task(
    dashscope_conn: EmulatorServer, s3: S3Bucket, fernet_key: Any
) -> None:
    """No key when generating: XCom has masked URLs only, and the transfer reads the task again (free)."""
    from tests.integration.operators.test_deferrable import make_sensor, submit
    from tests.integration.operators.test_image_generation import make_context

    fernet_key("")
    sensor = make_sensor(generation_task_id=submit(n=2))
    xcom = json.loads(json.dumps(sensor.execute(make_context(sensor))))  # type: ignore[arg-type]
    assert all(image["url_sealed"] is None and is_masked_url(image["url"]) for image in xcom["images"])
    queries = len(task_queries(dashscope_conn))

    entries = run_transfer(make_operator(generation=xcom, s3_bucket=s3.name, s3_key="reread/{index}.{ext}"))

    assert len(task_queries(dashscope_conn)) == queries + 1, "one status query, nothing billed"
    assert len(task_submissions(dashscope_conn)) == 1
    _check_landed(s3, entries)


def test_a_seal_the_worker_cannot_open_falls_back_to_reading_the_native_task(
    dashscope_conn: EmulatorServer, s3: S3Bucket, fernet_key: Any
) -> None:
    """The key was rotated without keeping the old one: a native task's results are read again."""
    from tests.integration.operators.test_deferrable import make_sensor, submit
    from tests.integration.operators.test_image_generation import make_context

    fernet_key(Fernet.generate_key().decode())
    sensor = make_sensor(generation_task_id=submit(n=1))
    xcom = json.loads(json.dumps(sensor.execute(make_context(sensor))))  # type: ignore[arg-type]
    assert xcom["images"][0]["url_sealed"]
    fernet_key(Fernet.generate_key().decode())
    queries = len(task_queries(dashscope_conn))

    entries = run_transfer(make_operator(generation=xcom, s3_bucket=s3.name, s3_key="rotated/{index}.{ext}"))

    assert len(task_queries(dashscope_conn)) == queries + 1
    _check_landed(s3, entries)


def test_a_gateway_seal_the_worker_cannot_open_fails_naming_the_key(
    imggen_conn: EmulatorServer, s3: S3Bucket, fernet_key: Any
) -> None:
    fernet_key(Fernet.generate_key().decode())
    generation = generate(n=1)
    fernet_key(Fernet.generate_key().decode())

    with pytest.raises(ResultUrlSealError, match=r"Fernet key this worker does not have.*'new,old'"):
        run_transfer(make_operator(generation=generation, s3_bucket=s3.name, s3_key="x.png"))
    assert s3.object_keys() == []


def test_a_masked_url_without_a_sealed_copy_or_a_task_is_refused_by_name(
    imggen_conn: EmulatorServer, s3: S3Bucket
) -> None:
    generation = generate(n=1)
    generation["images"][0]["url_sealed"] = None

    with pytest.raises(ImageGenerationValidationError, match=r"masked.*neither 'url_sealed' nor"):
        run_transfer(make_operator(generation=generation, s3_bucket=s3.name, s3_key="x.png"))
    assert s3.object_keys() == []


def _check_landed(s3: S3Bucket, entries: list[dict[str, Any]]) -> None:
    import hashlib

    for entry in entries:
        record = StoredImageRecord.from_dict(entry)
        assert hashlib.sha256(s3.read(record.key)).hexdigest() == record.sha256
        assert not record.skipped


# -- typed records ------------------------------------------------------------------------------------------


def test_generation_record_round_trips_and_reads_older_xcoms() -> None:
    record = GenerationRecord(
        model="wan2.2-t2i-flash",
        prompt="p",
        n=1,
        seed=5,
        images=(ImageRecord(index=0, seed=5, url="https://h/a.png?Signature=***", url_sealed="gAAAA"),),
        generation_task_id="t-1",
        task_status="SUCCEEDED",
    )
    assert GenerationRecord.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    # Pushed before generation_task_id was renamed, and before url_sealed existed.
    older = {"task_id": "t-0", "images": [{"index": 0, "url": "https://h/a.png?Signature=" + quote("x/y")}]}
    parsed = GenerationRecord.from_dict(older)
    assert parsed.generation_task_id == "t-0" and parsed.images[0].url_sealed is None


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"images": [{"index": "first"}]}, "generation['images'][0]['index']"),
        ({"images": [{"url": 7}]}, "generation['images'][0]['url']"),
        ({"images": "none"}, "generation['images']"),
        ({"prompt_upsampling": "maybe"}, "generation['prompt_upsampling']"),
    ],
)
def test_a_malformed_record_names_the_field(value: dict[str, Any], where: str) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        GenerationRecord.from_dict(value)
    assert raised.value.parameter == where  # type: ignore[attr-defined]


def test_urls_registered_together_are_all_redacted_with_one_pattern(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A transfer of 200 images registers every URL's secrets in this process's own masker at once (one
    pattern, not one per secret: one per secret cost a worker about 70 s), and sends the supervisor each
    URL's whole query in one message.
    """
    import airflow.sdk.log
    from airflow.sdk._shared.secrets_masker import _secrets_masker, redact

    sent: list[object] = []
    real_mask_secret = airflow.sdk.log.mask_secret

    def mask_secret(secret: object, name: str | None = None) -> None:
        sent.append(secret)
        real_mask_secret(secret, name)  # type: ignore[arg-type]

    monkeypatch.setattr(airflow.sdk.log, "mask_secret", mask_secret)
    masker = _secrets_masker()
    urls = [
        f"https://results.example.com/{n}.png?Expires=17645{n:05d}&OSSAccessKeyId=LTAI{n:06d}K&Signature=s{n:04d}%2Fx%3D"
        for n in range(200)
    ]
    compiled: list[int] = []
    real_compile = sealed_urls.re.compile
    monkeypatch.setattr(sealed_urls.re, "compile", lambda p, *a: compiled.append(1) or real_compile(p, *a))

    with sealed_urls.registered_together():
        for url in urls:
            sealed_urls.register_secrets(url)
        assert sent == [] and not compiled, "registered when the block ends, not URL by URL"

    assert len(compiled) == 1
    assert len(sent) == 1 and sorted(sent[0]) == sorted(url.partition("?")[2] for url in urls)  # type: ignore[arg-type]
    for n in (0, 117, 199):
        line = f"signature s{n:04d}/x= of LTAI{n:06d}K, escaped s{n:04d}%2Fx%3D"
        assert f"s{n:04d}" not in str(redact(line)) and f"LTAI{n:06d}K" not in str(redact(line))
    assert masker.replacer is not None
