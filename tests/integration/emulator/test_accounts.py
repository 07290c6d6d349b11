"""
The emulator's accounts, quotas and task list as api-notes §7 describes them, over real HTTP on loopback:
several keys per account, quotas per account and model (the published figures), the status-query limit, the
queue mode beyond the concurrency quota, and the task list's documented form (YYYYMMDDhhmmss, read in UTC+8,
at most 24 hours, every key of the account, never another account's).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer

KEY = "sk-main-1"
KEY_SAME_ACCOUNT = "sk-main-2"
KEY_OTHER_ACCOUNT = "sk-other-1"
SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
SYNC_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
BEIJING = timezone(timedelta(hours=8))
REPO_ROOT = Path(__file__).resolve().parents[3]


def auth(key: str = KEY, *, asynchronous: bool = False) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {key}"}
    return {**headers, "X-DashScope-Async": "enable"} if asynchronous else headers


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    config = EmulatorConfig(api_key=KEY, extra_keys={KEY_SAME_ACCOUNT: "main", KEY_OTHER_ACCOUNT: "acme"})
    with EmulatorServer(config) as emulator:
        yield emulator


@pytest.fixture
def emu(server: EmulatorServer) -> EmulatorServer:
    server.reset()
    return server


def submit(
    emu: EmulatorServer,
    key: str = KEY,
    *,
    model: str = "wan2.2-t2i-flash",
    prompt: str = "a lighthouse",
    **params: Any,
) -> requests.Response:
    params.setdefault("n", 1)
    params.setdefault("size", "512*512")
    return requests.post(
        f"{emu.base_url}{SUBMIT_PATH}",
        json={"model": model, "input": {"prompt": prompt}, "parameters": params},
        headers=auth(key, asynchronous=True),
        timeout=30,
    )


def sync(emu: EmulatorServer, key: str = KEY, *, model: str, **params: Any) -> requests.Response:
    body = {
        "model": model,
        "input": {"messages": [{"role": "user", "content": [{"text": "a lighthouse"}]}]},
        "parameters": params,
    }
    return requests.post(f"{emu.base_url}{SYNC_PATH}", json=body, headers=auth(key), timeout=30)


def task_list(emu: EmulatorServer, key: str = KEY, **query: Any) -> requests.Response:
    return requests.get(f"{emu.base_url}/api/v1/tasks", params=query, headers=auth(key), timeout=30)


def status(emu: EmulatorServer, task_id: str, key: str = KEY) -> requests.Response:
    return requests.get(f"{emu.base_url}/api/v1/tasks/{task_id}", headers=auth(key), timeout=30)


def window(zone: timezone, seconds: float = 120) -> dict[str, str]:
    now = datetime.now(zone)
    form = "%Y%m%d%H%M%S"
    return {
        "start_time": (now - timedelta(seconds=seconds)).strftime(form),
        "end_time": (now + timedelta(seconds=seconds)).strftime(form),
    }


# Accounts and quotas --------------------------------------------------------------------------------------
def test_keys_of_one_account_share_its_quota_and_another_account_does_not(emu: EmulatorServer) -> None:
    # wan2.2: 2 submissions per second per account, every key together.
    assert submit(emu, KEY).status_code == 200
    assert submit(emu, KEY_SAME_ACCOUNT).status_code == 200
    third = submit(emu, KEY_SAME_ACCOUNT)
    assert third.status_code == 429 and third.json()["code"] == "Throttling.RateQuota"
    assert submit(emu, KEY_OTHER_ACCOUNT).status_code == 200
    # Per model: another model of the same account has its own quota.
    assert submit(emu, KEY, model="wanx2.1-t2i-turbo").status_code == 200
    accounts = [entry["account"] for entry in emu.requests_log()]
    assert accounts == ["main", "main", "main", "acme", "main"]


def test_concurrency_is_per_account_on_the_task_api(emu: EmulatorServer) -> None:
    emu.set_faults(task_pending_ms=60_000, quota_submissions_per_second=100)
    assert submit(emu, KEY).status_code == 200
    assert submit(emu, KEY_SAME_ACCOUNT).status_code == 200
    refused = submit(emu, KEY)
    assert refused.status_code == 429 and refused.json()["code"] == "Throttling"
    assert submit(emu, KEY_OTHER_ACCOUNT).status_code == 200


def test_the_synchronous_endpoint_has_no_concurrency_quota(emu: EmulatorServer) -> None:
    emu.set_faults(latency_ms=400, quota_submissions_per_second=100)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: sync(emu, model="qwen-image", size="1328*1328"), range(4)))
    assert [answer.status_code for answer in answers] == [200] * 4
    # The same model on the task API: 2 concurrent tasks per account.
    emu.set_faults(latency_ms=0, task_pending_ms=60_000)
    codes = [submit(emu, model="qwen-image", size="1328*1328").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


@pytest.mark.parametrize(
    ("model", "params", "allowed"),
    [
        ("qwen-image-max", {"size": "1328*1328"}, 2),  # 2 per minute
        ("qwen-image-2.0-pro", {"size": "1024*1024"}, 2),  # 2 per minute
        ("qwen-image-2.0", {"size": "1024*1024"}, 2),  # 2 per second
    ],
)
def test_synchronous_model_quotas(
    emu: EmulatorServer, model: str, params: dict[str, Any], allowed: int
) -> None:
    codes = [sync(emu, model=model, **params).status_code for _ in range(allowed + 1)]
    assert codes == [200] * allowed + [429]
    # Another account of the same emulator is not throttled.
    assert sync(emu, KEY_OTHER_ACCOUNT, model=model, **params).status_code == 200


def test_per_minute_quota_does_not_refill_within_a_second(emu: EmulatorServer) -> None:
    assert [sync(emu, model="qwen-image-2.0-pro").status_code for _ in range(2)] == [200, 200]
    time.sleep(1.1)
    assert sync(emu, model="qwen-image-2.0-pro").status_code == 429
    # qwen-image-2.0 (2/s) has refilled by then.
    assert [sync(emu, model="qwen-image-2.0").status_code for _ in range(2)] == [200, 200]
    time.sleep(1.1)
    assert sync(emu, model="qwen-image-2.0").status_code == 200


def test_wan25_preview_allows_five_per_second_and_five_concurrent(emu: EmulatorServer) -> None:
    emu.set_faults(task_pending_ms=60_000)
    codes = [submit(emu, model="wan2.5-t2i-preview", size="1280*1280").status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]


def test_status_queries_are_limited_to_20_per_second_per_account(emu: EmulatorServer) -> None:
    task_id = submit(emu).json()["output"]["task_id"]
    started, codes = time.monotonic(), []
    while len(codes) < 200 and 429 not in codes:
        codes.append(status(emu, task_id, KEY if len(codes) % 2 else KEY_SAME_ACCOUNT).status_code)
    elapsed = time.monotonic() - started
    assert codes[-1] == 429, "never throttled"
    # 20 back to back, then 20 a second: every key of the account together.
    assert 20 <= codes.count(200) <= 20 + 20 * elapsed + 1
    # Another account has its own 20.
    assert status(emu, task_id, KEY_OTHER_ACCOUNT).status_code == 200


def test_the_task_list_counts_as_a_status_query(emu: EmulatorServer) -> None:
    emu.set_faults(quota_status_queries_per_second=0.5)
    task_id = submit(emu).json()["output"]["task_id"]
    assert status(emu, task_id).status_code == 200
    throttled = task_list(emu)
    assert throttled.status_code == 429 and throttled.json()["code"] == "Throttling"
    assert status(emu, task_id, KEY_SAME_ACCOUNT).status_code == 429
    assert [entry["outcome"] for entry in emu.requests_log()][-2:] == ["throttled", "throttled"]


def test_queue_mode_keeps_a_task_beyond_the_concurrency_quota_pending(emu: EmulatorServer) -> None:
    emu.set_faults(concurrency_overflow="queue", quota_submissions_per_second=100, task_duration_ms=2000)
    ids = [submit(emu).json()["output"]["task_id"] for _ in range(3)]
    states = [status(emu, task_id).json()["output"]["task_status"] for task_id in ids]
    assert states == ["RUNNING", "RUNNING", "PENDING"]
    deadline = time.monotonic() + 10
    while status(emu, ids[2]).json()["output"]["task_status"] != "SUCCEEDED":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert emu.billed_images() == 3


def test_refuse_mode_is_the_default(emu: EmulatorServer) -> None:
    assert emu.state.faults.concurrency_overflow == "refuse"


# Task list ------------------------------------------------------------------------------------------------
def test_task_list_shows_every_key_of_the_account_and_no_other_account(emu: EmulatorServer) -> None:
    emu.set_faults(quotas=False)
    mine = submit(emu, KEY).json()["output"]["task_id"]
    colleague = submit(emu, KEY_SAME_ACCOUNT).json()["output"]["task_id"]
    stranger = submit(emu, KEY_OTHER_ACCOUNT).json()["output"]["task_id"]
    for key in (KEY, KEY_SAME_ACCOUNT):
        body = task_list(emu, key, **window(BEIJING)).json()
        assert [item["task_id"] for item in body["data"]] == [colleague, mine]
        assert body["total"] == 2
        assert all("prompt" not in str(sorted(item)) for item in body["data"])
    keys = {item["task_id"]: item["api_key_id"] for item in task_list(emu, **window(BEIJING)).json()["data"]}
    assert keys[mine] != keys[colleague]
    other = task_list(emu, KEY_OTHER_ACCOUNT, **window(BEIJING)).json()
    assert [item["task_id"] for item in other["data"]] == [stranger]
    by_id = task_list(emu, task_id=mine, **window(BEIJING)).json()
    assert [item["task_id"] for item in by_id["data"]] == [mine]


def test_task_list_reads_its_times_in_beijing_time(emu: EmulatorServer) -> None:
    submit(emu)
    assert task_list(emu, **window(BEIJING)).json()["total"] == 1
    # The same wall-clock window written in UTC is 8 hours in the past for the service.
    assert task_list(emu, **window(UTC)).json()["total"] == 0


@pytest.mark.parametrize(
    "query",
    [
        {"start_time": "2026-12-06 10:00:00", "end_time": "2026-12-06 11:00:00"},
        {"start_time": "1765000000000", "end_time": "1765003600000"},
        {"start_time": "2026120610000", "end_time": "20261206110000"},
        {"start_time": "20261306100000", "end_time": "20261306110000"},
        # More than 24 hours apart, and out of order.
        {"start_time": "20261205100000", "end_time": "20261206100001"},
        {"start_time": "20261206110000", "end_time": "20261206100000"},
    ],
)
def test_task_list_refuses_other_time_forms_and_spans_over_24_hours(
    emu: EmulatorServer, query: dict[str, str]
) -> None:
    refused = task_list(emu, **query)
    assert refused.status_code == 400 and refused.json()["code"] == "InvalidParameter", query


def test_task_list_accepts_exactly_24_hours(emu: EmulatorServer) -> None:
    answer = task_list(emu, start_time="20261205100000", end_time="20261206100000")
    assert answer.status_code == 200
    assert set(answer.json()) == {"request_id", "data", "total", "total_page", "page_no", "page_size"}


def test_finished_task_status_carries_the_prompts(emu: EmulatorServer) -> None:
    extended = submit(emu, prompt="a red lighthouse").json()["output"]["task_id"]
    plain = submit(emu, prompt="a blue lighthouse", prompt_extend=False).json()["output"]["task_id"]
    first = status(emu, extended).json()["output"]["results"][0]
    assert first["orig_prompt"] == "a red lighthouse" and first["actual_prompt"]
    second = status(emu, plain).json()["output"]["results"][0]
    assert second["orig_prompt"] == "a blue lighthouse" and "actual_prompt" not in second


def test_expired_task_ids_read_unknown_and_leave_the_list(emu: EmulatorServer) -> None:
    emu.set_faults(task_ttl_ms=300)
    task_id = submit(emu).json()["output"]["task_id"]
    time.sleep(0.4)
    assert status(emu, task_id).json()["output"] == {"task_id": task_id, "task_status": "UNKNOWN"}
    assert task_list(emu, **window(BEIJING)).json()["total"] == 0


def test_status_times_are_beijing_time(emu: EmulatorServer) -> None:
    task_id = submit(emu).json()["output"]["task_id"]
    submitted = status(emu, task_id).json()["output"]["submit_time"]
    shown = datetime.strptime(submitted, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=BEIJING)
    assert abs(shown.timestamp() - time.time()) < 60


def test_result_urls_expire_about_seven_days_out(emu: EmulatorServer) -> None:
    task_id = submit(emu).json()["output"]["task_id"]
    url = status(emu, task_id).json()["output"]["results"][0]["url"]
    expires = int(parse_qs(urlsplit(url).query)["Expires"][0])
    assert abs(expires - (time.time() + 7 * 86400)) < 120
    assert "Signature" in parse_qs(urlsplit(url).query)


def test_cli_takes_extra_keys_and_the_new_options() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        *(sys.executable, "-m", "airflow_provider_imggen.emulator", "--port", str(port), "--api-key", KEY),
        *("--extra-key", KEY_SAME_ACCOUNT, "--extra-key", f"{KEY_OTHER_ACCOUNT}=acme"),
        *("--concurrency-overflow", "queue", "--gateway-models", "gpt-image-1,dall-e-3"),
        *("--relay-retries", "1", "--no-multimodal-text-item", "--quota-status-queries-per-second", "5"),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT) as process:
        try:
            assert process.stdout is not None
            assert "listening" in process.stdout.readline().decode()
            base = f"http://127.0.0.1:{port}"
            faults = requests.get(f"{base}/_emulator/faults", timeout=30).json()
            assert faults["concurrency_overflow"] == "queue"
            assert faults["gateway_models"] == ["gpt-image-1", "dall-e-3"]
            assert (faults["relay_retries"], faults["multimodal_text_item"]) == (1, False)
            assert faults["quota_status_queries_per_second"] == 5.0
            for key in (KEY, KEY_SAME_ACCOUNT, KEY_OTHER_ACCOUNT):
                answer = requests.get(f"{base}/api/v1/tasks", headers=auth(key), timeout=30)
                assert answer.status_code == 200, key
            assert (
                requests.get(f"{base}/api/v1/tasks", headers=auth("sk-nobody"), timeout=30).status_code == 401
            )
            accounts = {
                entry["account"]
                for entry in requests.get(f"{base}/_emulator/requests", timeout=30).json()["requests"]
            }
            assert accounts == {"main", "acme", None}
        finally:
            process.terminate()
            process.wait(timeout=20)
