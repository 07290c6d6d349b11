"""
The emulator as hostile as the real service, over real HTTP on loopback: quotas, billed-then-failed
answers, partial and malformed bodies, relay error shapes, the task list, and the request log that counts
every payment.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from airflow_provider_imggen.emulator import EmulatorConfig, EmulatorServer, FaultConfig

API_KEY = "sk-hostile"
BEIJING = timezone(timedelta(hours=8))
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ASYNC = {**AUTH, "X-DashScope-Async": "enable"}
SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    # The emulator's own defaults: quotas on, as on the real service.
    with EmulatorServer(EmulatorConfig(api_key=API_KEY)) as emulator:
        yield emulator


@pytest.fixture
def emu(server: EmulatorServer) -> EmulatorServer:
    server.reset()
    return server


def generate(emu: EmulatorServer, *, timeout: float = 30, **body: Any) -> requests.Response:
    body.setdefault("model", "wan2.2-t2i-flash")
    body.setdefault("prompt", "a red fox in the snow")
    body.setdefault("size", "512x512")
    return requests.post(f"{emu.base_url}/v1/images/generations", json=body, headers=AUTH, timeout=timeout)


def submit(emu: EmulatorServer, *, model: str = "wan2.2-t2i-flash", **parameters: Any) -> requests.Response:
    parameters.setdefault("n", 1)
    parameters.setdefault("size", "512*512")
    return requests.post(
        f"{emu.base_url}{SUBMIT_PATH}",
        json={"model": model, "input": {"prompt": "a lighthouse"}, "parameters": parameters},
        headers=ASYNC,
        timeout=30,
    )


def entries(emu: EmulatorServer, kind: str) -> list[dict[str, Any]]:
    return [entry for entry in emu.requests_log() if entry["kind"] == kind]


# Quotas ----------------------------------------------------------------------------------------------------
def test_quotas_are_on_by_default_with_the_documented_limits(emu: EmulatorServer) -> None:
    assert emu.state.faults.quotas is True
    # 2 submissions per second per (key, model): the third back-to-back one is throttled, not billed.
    started = time.monotonic()
    responses = [submit(emu) for _ in range(3)]
    assert time.monotonic() - started < 0.5, "too slow to test a 2/s quota"
    assert [response.status_code for response in responses] == [200, 200, 429]
    throttled = responses[2]
    assert throttled.json() == {
        "code": "Throttling.RateQuota",
        "message": "Requests rate limit exceeded, please try again later.",
        "request_id": throttled.headers["x-request-id"],
    }
    assert "retry-after" not in throttled.headers  # DashScope documents none
    # Another model has its own quota.
    assert submit(emu, model="qwen-image", size="1328*1328").status_code == 200
    time.sleep(0.6)  # a token back (2 per second)
    assert submit(emu).status_code == 200
    submitted = entries(emu, "submit")
    assert [entry["outcome"] for entry in submitted] == ["ok", "ok", "throttled", "ok", "ok"]
    assert [entry["billed"] for entry in submitted] == [True, True, False, True, True]
    assert emu.billed_images() == 4 and len(emu.tasks()) == 4


def test_concurrent_task_quota_counts_running_native_tasks(emu: EmulatorServer) -> None:
    emu.set_faults(quota_submissions_per_second=1000, task_duration_ms=600_000, quota_retry_after_seconds=1.5)
    assert [submit(emu).status_code for _ in range(2)] == [200, 200]
    refused = submit(emu)
    assert refused.status_code == 429
    assert refused.json()["code"] == "Throttling" and "concurrent" in refused.json()["message"]
    assert refused.headers["retry-after"] == "2" and refused.headers["retry-after-ms"] == "1500"
    # A gateway generation of the same model counts against the same concurrency.
    relayed = generate(emu)
    assert relayed.status_code == 429
    assert relayed.json()["error"]["code"] == "Throttling"
    emu.set_faults(quota_concurrent_tasks=3)
    assert submit(emu).status_code == 200
    assert emu.billed_images() == 0  # nothing has finished yet


def test_gateway_generations_in_flight_count_as_concurrent(emu: EmulatorServer) -> None:
    emu.set_faults(latency_ms=600, quota_submissions_per_second=1000)
    with ThreadPoolExecutor(max_workers=3) as pool:
        responses = list(pool.map(lambda _: generate(emu), range(3)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 200, 429]
    [refused] = [response for response in responses if response.status_code == 429]
    assert refused.json()["error"] == {
        "message": "Requests throttling triggered: too many concurrent tasks, please try again later.",
        "type": "rate_limit_error",
        "param": None,
        "code": "Throttling",
    }
    assert emu.billed_images() == 2
    # Finished generations free their slots.
    assert generate(emu).status_code == 200


def test_gateway_relays_the_rate_quota(emu: EmulatorServer) -> None:
    statuses = [generate(emu).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    [entry] = [entry for entry in entries(emu, "generate") if entry["status"] == 429]
    assert (entry["outcome"], entry["billed_images"], entry["fault"]) == ("throttled", 0, None)
    emu.set_faults(quotas=False)
    assert all(generate(emu).status_code == 200 for _ in range(5))


def test_scripted_throttle_is_a_rate_quota_429(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next=["throttle"])
    response = generate(emu)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "Throttling.RateQuota"
    assert emu.requests_log()[-1]["outcome"] == "throttle" and emu.billed_images() == 0


# Billed, then failed ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fault", "status", "content_type"),
    [
        ("billed_500", 500, "application/json"),
        ("billed_502", 502, "text/html"),
        ("billed_504", 504, "text/html"),
    ],
)
def test_gateway_bills_then_answers_an_error(
    emu: EmulatorServer, fault: str, status: int, content_type: str
) -> None:
    emu.set_faults(fail_next=[fault])
    response = generate(emu, n=3)
    assert response.status_code == status
    assert response.headers["content-type"].startswith(content_type)
    [entry] = entries(emu, "generate")
    assert (entry["billed_images"], entry["billed"], entry["outcome"], entry["status"]) == (
        3,
        True,
        fault,
        status,
    )
    assert emu.billed_images() == 3
    assert generate(emu).status_code == 200  # scripted once


def test_gateway_bills_then_drops_the_connection(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next=["billed_drop"])
    with pytest.raises(requests.ConnectionError):
        generate(emu, n=2)
    [entry] = entries(emu, "generate")
    assert (entry["status"], entry["outcome"], entry["billed_images"]) == (0, "billed_drop", 2)


def test_gateway_bills_then_stalls_past_the_read_timeout(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next=["billed_stall", "billed_stall"], stall_ms=400)
    with pytest.raises(requests.ReadTimeout):
        generate(emu, timeout=0.15)
    started = time.monotonic()
    waited = generate(emu)
    assert waited.status_code == 504 and time.monotonic() - started >= 0.4
    assert [entry["billed_images"] for entry in entries(emu, "generate")] == [1, 1]
    assert emu.billed_images() == 2


@pytest.mark.parametrize("fault", ["billed_500", "billed_502", "billed_504", "billed_drop"])
def test_native_submission_answer_fails_but_the_task_runs_and_bills(emu: EmulatorServer, fault: str) -> None:
    emu.set_faults(fail_next=[fault])
    if fault == "billed_drop":
        with pytest.raises(requests.ConnectionError):
            submit(emu, n=2)
    else:
        assert submit(emu, n=2).status_code == int(fault[-3:])
    [task] = emu.tasks()
    assert (task["task_status"], task["billed_images"]) == ("SUCCEEDED", 2)
    [entry] = entries(emu, "submit")
    assert (entry["outcome"], entry["task_id"], entry["billed_images"]) == (fault, task["task_id"], 2)
    assert emu.billed_images() == 2


def test_log_fingerprints_tell_a_resend_from_another_generation(emu: EmulatorServer) -> None:
    emu.set_faults(quotas=False, fail_next=["billed_500"])
    assert generate(emu, seed=1).status_code == 500
    assert generate(emu, seed=1).status_code == 200  # the same body sent again: paid twice
    assert generate(emu, seed=2).status_code == 200
    assert requests.get(f"{emu.base_url}/v1/models", headers=AUTH, timeout=30).status_code == 200
    first, again, other, models = emu.requests_log()
    assert first["fingerprint"] == again["fingerprint"] != other["fingerprint"]
    assert len(first["fingerprint"]) == 16 and models["fingerprint"] is None
    assert (first["billed_images"], again["billed_images"]) == (1, 1)


def test_billed_faults_wait_for_a_billable_request(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next=["billed_500"])
    # A model list or status query is not billable: the scripted billed fault stays queued.
    assert requests.get(f"{emu.base_url}/v1/models", headers=AUTH, timeout=30).status_code == 200
    assert generate(emu).status_code == 500
    assert emu.billed_images() == 1


# Partial and malformed answers ------------------------------------------------------------------------------
def test_partial_answer_bills_only_the_real_items(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next=["partial"], seed=3)
    response = generate(emu, n=4)
    assert response.status_code == 200
    data = response.json()["data"]
    empty = [item for item in data if not item.get("url")]
    assert len(data) == 4 and 1 <= len(empty) <= 4
    assert all(item in ({}, {"url": "", "b64_json": "", "revised_prompt": ""}) for item in empty)
    real = [item for item in data if item.get("url")]
    assert all(requests.get(item["url"], timeout=30).status_code == 200 for item in real)
    [entry] = entries(emu, "generate")
    assert (entry["outcome"], entry["billed_images"], entry["n"]) == ("partial", len(real), 4)


def test_partial_single_image_bills_nothing(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next=["partial"])
    assert generate(emu).json()["data"][0].get("url", "") == ""
    [entry] = entries(emu, "generate")
    assert (entry["billed"], entry["billed_images"]) == (False, 0)


def _malformed(emu: EmulatorServer, kind: str, **body: Any) -> requests.Response:
    emu.set_faults(fail_next=[f"malformed:{kind}"])
    response = generate(emu, **body)
    assert response.status_code == 200
    [entry] = entries(emu, "generate")
    assert entry["billed_images"] == body.get("n", 1) and entry["billed"]
    return response


def test_malformed_url_not_string(emu: EmulatorServer) -> None:
    assert _malformed(emu, "url_not_string", n=2).json()["data"] == [{"url": 12345}, {"url": 12345}]


def test_malformed_data_strings(emu: EmulatorServer) -> None:
    data = _malformed(emu, "data_strings").json()["data"]
    assert isinstance(data[0], str) and data[0].startswith("http://127.0.0.1")


def test_malformed_bad_base64(emu: EmulatorServer) -> None:
    [item] = _malformed(emu, "bad_base64", response_format="b64_json").json()["data"]
    with pytest.raises(binascii.Error):
        base64.b64decode(item["b64_json"], validate=True)
    emu.clear_log()
    # In url mode it falls back to url_not_string.
    assert _malformed(emu, "bad_base64").json()["data"] == [{"url": 12345}]
    assert emu.requests_log()[-1]["outcome"] == "malformed:url_not_string"


def test_malformed_created_string(emu: EmulatorServer) -> None:
    body = _malformed(emu, "created_string").json()
    assert body["created"] == "yesterday" and body["data"][0]["url"].startswith("http")


def test_malformed_too_many_images(emu: EmulatorServer) -> None:
    data = _malformed(emu, "too_many_images").json()["data"]
    assert len(data) == 50 and len({item["url"] for item in data}) == 50


def test_malformed_not_json(emu: EmulatorServer) -> None:
    response = _malformed(emu, "not_json", n=2)
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.text)
    assert response.text.startswith('{"created":')


def test_relay_200_error_in_ali_error_shape(emu: EmulatorServer) -> None:
    emu.set_faults(fail_next=["200_error"], error_200_type="ali_error")
    response = generate(emu)
    assert response.status_code == 200
    assert response.json() == {
        "error": {
            "message": "upstream task failed: InternalError.Algo",
            "type": "ali_error",
            "param": None,
            "code": "InternalError.Algo",
        }
    }
    assert emu.billed_images() == 0


def test_seeded_rates_repeat_and_count_exactly(emu: EmulatorServer) -> None:
    def run() -> list[tuple[str, int]]:
        emu.reset()
        emu.set_faults(
            quotas=False,
            seed=11,
            rate_billed_500=0.1,
            rate_billed_504=0.1,
            rate_partial=0.1,
            rate_malformed=0.1,
        )
        for _ in range(40):
            generate(emu, n=2)
        return [(entry["outcome"], entry["billed_images"]) for entry in entries(emu, "generate")]

    first = run()
    assert first == run()
    outcomes = {outcome.partition(":")[0] for outcome, _ in first}
    assert {"ok", "billed_500", "billed_504", "partial", "malformed"} <= outcomes
    billing = requests.get(f"{emu.base_url}/_emulator/billing", timeout=30).json()
    assert billing["billed_images"] == sum(images for _, images in first) == emu.billed_images()
    assert billing["billed_requests"] == sum(1 for _, images in first if images)


def test_new_fault_fields_are_validated(emu: EmulatorServer) -> None:
    for bad in (
        {"fail_next": ["malformed:nonsense"]},
        {"error_200_type": "teapot"},
        {"invalid_native_params": "maybe"},
        {"quotas": "yes"},
        {"quota_concurrent_tasks": 0},
        {"quota_submissions_per_second": 0},
        {"rate_billed_500": 1.5},
        {"malformed_kinds": []},
    ):
        response = requests.put(f"{emu.base_url}/_emulator/faults", json=bad, timeout=30)
        assert response.status_code == 400, bad
    response = requests.put(
        f"{emu.base_url}/_emulator/faults",
        json={"fail_next": ["billed_stall", "malformed:not_json", "throttle"], "quota_concurrent_tasks": 5},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.json()["fail_next"] == ["billed_stall", "malformed:not_json", "throttle"]


# Task list --------------------------------------------------------------------------------------------------
def list_tasks(emu: EmulatorServer, headers: dict[str, str] = AUTH, **params: Any) -> requests.Response:
    return requests.get(f"{emu.base_url}/api/v1/tasks", params=params, headers=headers, timeout=30)


def _window(seconds: float) -> dict[str, str]:
    # The task list reads its times as YYYYMMDDhhmmss in Beijing time (UTC+8).
    now = datetime.now(BEIJING)
    form = "%Y%m%d%H%M%S"
    return {
        "start_time": (now - timedelta(seconds=seconds)).strftime(form),
        "end_time": (now + timedelta(seconds=seconds)).strftime(form),
    }


def test_task_list_filters_and_pages(emu: EmulatorServer) -> None:
    emu.set_faults(quotas=False, fail_next_tasks=["none", "InvalidParameter"])
    ids = [submit(emu).json()["output"]["task_id"] for _ in range(3)]
    qwen = submit(emu, model="qwen-image", size="1328*1328").json()["output"]["task_id"]
    emu.set_faults(task_pending_ms=600_000)
    pending = submit(emu).json()["output"]["task_id"]

    everything = list_tasks(emu, **_window(60))
    assert everything.status_code == 200
    body = everything.json()
    assert set(body) == {"request_id", "data", "total", "total_page", "page_no", "page_size"}
    assert (body["total"], body["total_page"], body["page_no"], body["page_size"]) == (5, 1, 1, 10)
    assert [item["task_id"] for item in body["data"]] == [pending, qwen, *reversed(ids)]  # newest first
    first = body["data"][-1]
    assert first["status"] == "SUCCEEDED" and first["model_name"] == "wan2.2-t2i-flash"
    assert isinstance(first["gmt_create"], int) and abs(first["gmt_create"] / 1000 - time.time()) < 60
    submission_ids = {entry["task_id"]: entry["request_id"] for entry in entries(emu, "submit")}
    assert all(item["request_id"] == submission_ids[item["task_id"]] for item in body["data"])

    by_model = list_tasks(emu, model_name="qwen-image", **_window(60)).json()
    assert [item["task_id"] for item in by_model["data"]] == [qwen]
    failed = list_tasks(emu, status="FAILED").json()
    assert [item["task_id"] for item in failed["data"]] == [ids[1]]
    assert [item["task_id"] for item in list_tasks(emu, status="PENDING").json()["data"]] == [pending]

    page = list_tasks(emu, page_no=2, page_size=2).json()
    assert (page["total"], page["total_page"], len(page["data"])) == (5, 3, 2)
    assert [item["task_id"] for item in page["data"]] == [ids[2], ids[1]]

    past = datetime.now(BEIJING) - timedelta(hours=2)
    old_window = {
        "start_time": past.strftime("%Y%m%d%H%M%S"),
        "end_time": (past + timedelta(hours=1)).strftime("%Y%m%d%H%M%S"),
    }
    assert list_tasks(emu, **old_window).json()["total"] == 0
    assert {entry["billed_images"] for entry in entries(emu, "list")} == {0}


def test_task_list_is_per_key_and_validated(emu: EmulatorServer) -> None:
    submit(emu)
    assert list_tasks(emu, headers={"Authorization": "Bearer sk-other"}).status_code == 401
    for bad in ({"status": "DONE"}, {"page_size": "101"}, {"page_no": "0"}, {"start_time": "yesterday"}):
        refused = list_tasks(emu, **bad)
        assert refused.status_code == 400 and refused.json()["code"] == "InvalidParameter", bad
    emu.set_faults(fail_next=["503"])
    assert list_tasks(emu).status_code == 503
    assert list_tasks(emu).json()["total"] == 1


# Independence and start-up ----------------------------------------------------------------------------------
def test_default_fault_config_is_the_real_service() -> None:
    defaults = FaultConfig()
    assert defaults.quotas is True and defaults.invalid_native_params == "fail_task"
    assert defaults.quota_retry_after_seconds is None


def test_emulator_package_loads_no_airflow_and_no_provider_module() -> None:
    # In a fresh interpreter: import every module of the package, then look at sys.modules.
    script = """
import importlib, json, pkgutil, sys
import airflow_provider_imggen.emulator as package
for module in pkgutil.iter_modules(package.__path__):
    importlib.import_module(f"{package.__name__}.{module.name}")
loaded = sorted(sys.modules)
print(json.dumps({
    "emulator": [name for name in loaded if name.startswith("airflow_provider_imggen.emulator")],
    "airflow": [name for name in loaded if name == "airflow" or name.startswith("airflow.")],
    "provider": [
        name for name in loaded
        if name.startswith("airflow_provider_imggen.")
        and not name.startswith("airflow_provider_imggen.emulator")
    ],
}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO_ROOT, timeout=120
    )
    loaded = json.loads(result.stdout)
    expected = (
        {
            f"airflow_provider_imggen.emulator.{name}"
            for name in (
                "__main__",
                "admin",
                "app",
                "gateway",
                "images",
                "models",
                "native",
                "results",
                "server",
            )
        }
        | {
            f"airflow_provider_imggen.emulator.{name}"
            for name in ("accounts", "backend", "calls", "errors", "faults", "objects", "quotas", "relay")
        }
        | {
            f"airflow_provider_imggen.emulator.{name}"
            for name in ("request_log", "state", "tasks", "transport", "validation", "wire")
        }
    )
    assert expected <= set(loaded["emulator"])
    assert loaded["airflow"] == []
    assert loaded["provider"] == []


def test_cli_start_up_time() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with subprocess.Popen(
        [
            sys.executable,
            "-m",
            "airflow_provider_imggen.emulator",
            "--port",
            str(port),
            "--api-key",
            "sk-cli",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().decode()
            elapsed = time.monotonic() - started
            assert line.strip() == f"imggen emulator listening on http://127.0.0.1:{port}"
            print(f"emulator start-up: {elapsed:.3f} s until the listening line")
            assert elapsed < 2.0
        finally:
            process.terminate()
            assert process.wait(timeout=20) == 0


def test_cli_takes_every_fault_field_as_a_flag() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [
        *(sys.executable, "-m", "airflow_provider_imggen.emulator", "--port", str(port)),
        *("--api-key", API_KEY, "--no-quotas", "--rate-billed-500", "1", "--fail-next", "partial,none"),
        *("--malformed-kinds", "not_json,too_many_images", "--invalid-native-params", "reject"),
        *("--quota-retry-after-seconds", "2.5", "--fault-seed", "5", "--retry-after", "3"),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT) as process:
        try:
            assert process.stdout is not None
            assert "listening" in process.stdout.readline().decode()
            faults = requests.get(f"http://127.0.0.1:{port}/_emulator/faults", timeout=30).json()
            assert faults["quotas"] is False and faults["rate_billed_500"] == 1.0
            assert faults["fail_next"] == ["partial", "none"]
            assert faults["malformed_kinds"] == ["not_json", "too_many_images"]
            assert faults["invalid_native_params"] == "reject"
            assert (faults["quota_retry_after_seconds"], faults["seed"], faults["retry_after_seconds"]) == (
                2.5,
                5,
                3.0,
            )
        finally:
            process.terminate()
            process.wait(timeout=20)
    bad = subprocess.run(
        [sys.executable, "-m", "airflow_provider_imggen.emulator", "--error-200-type", "teapot"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and "error_200_type" in bad.stderr
