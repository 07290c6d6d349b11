"""ImageGenerationAsyncHook (httpx, for triggers) against the emulator over real HTTP on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from airflow.sdk.exceptions import AirflowFailException

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationRejectedError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook, TaskState
from tests.conftest import API_KEY, set_imggen_connection, task_queries
from tests.integration.hooks.test_image_generation import fast_hook

T = TypeVar("T")


def run_async(call: Callable[[ImageGenerationAsyncHook], Awaitable[T]], **hook_kwargs: object) -> T:
    """Run ``call(hook)`` on a fresh event loop, with a hook whose backoff is short enough for tests."""

    async def main() -> T:
        async with ImageGenerationAsyncHook(
            retry_wait_initial=0.01,
            retry_wait_max=0.05,
            **hook_kwargs,  # type: ignore[arg-type]
        ) as hook:
            return await call(hook)

    return asyncio.run(main())


def comparable(state: TaskState) -> TaskState:
    """A state without the per-query request id."""
    import dataclasses

    return dataclasses.replace(state, request_id=None)


def test_get_task_parses_exactly_like_the_sync_hook(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(fail_next_task_images=[[1]])
    hook = fast_hook()
    task_id = hook.submit_task("three foxes", n=3, size="512x512", seed=5).generation_task_id

    async_state = run_async(lambda hook: hook.get_task(task_id))

    assert async_state.status == "SUCCEEDED" and async_state.request_id
    assert [image.index for image in async_state.images] == [0, 2]
    assert [failed.index for failed in async_state.failed_images] == [1]
    assert comparable(async_state) == comparable(hook.get_task(task_id))


@pytest.mark.parametrize(
    ("faults", "status", "code"),
    [
        ({"fail_next_tasks": ["InvalidParameter"]}, "FAILED", "InvalidParameter"),
        ({"task_pending_ms": 600_000}, "PENDING", None),
        ({"task_duration_ms": 600_000}, "RUNNING", None),
    ],
)
def test_get_task_statuses(
    dashscope_conn: EmulatorServer, faults: dict, status: str, code: str | None
) -> None:
    dashscope_conn.set_faults(**faults)
    task_id = fast_hook().submit_task("x").generation_task_id
    state = run_async(lambda hook: hook.get_task(task_id))
    assert (state.status, state.code) == (status, code)


def test_unknown_and_expired(dashscope_conn: EmulatorServer) -> None:
    task_id = fast_hook().submit_task("x").generation_task_id
    dashscope_conn.expire_task(task_id)

    async def both(hook: ImageGenerationAsyncHook) -> list[str]:
        return [(await hook.get_task(name)).status for name in (task_id, "no-such-task")]

    assert run_async(both) == ["UNKNOWN", "UNKNOWN"]


def test_cancel_task(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(task_pending_ms=600_000)
    task_id = fast_hook().submit_task("x").generation_task_id

    async def cancel_twice(hook: ImageGenerationAsyncHook) -> tuple[bool, bool, str]:
        first = await hook.cancel_task(task_id)
        second = await hook.cancel_task(task_id)
        return first, second, (await hook.get_task(task_id)).status

    assert run_async(cancel_twice) == (True, False, "CANCELED")


def test_transient_failures_are_retried(dashscope_conn: EmulatorServer) -> None:
    task_id = fast_hook().submit_task("x").generation_task_id
    dashscope_conn.set_faults(fail_next=["drop", "500", "429", "200_error"], retry_after_seconds=0.01)
    assert run_async(lambda hook: hook.get_task(task_id), max_retries=4).status == "SUCCEEDED"
    assert [entry["fault"] for entry in task_queries(dashscope_conn)] == [
        "drop",
        "500",
        "429",
        "200_error",
        None,
    ]


def test_retries_run_out_with_a_plain_api_error(dashscope_conn: EmulatorServer) -> None:
    dashscope_conn.set_faults(rate_503=1.0)
    with pytest.raises(ImageGenerationAPIError) as raised:
        run_async(lambda hook: hook.get_task("t"), max_retries=1)
    assert not isinstance(raised.value, AirflowFailException)
    assert raised.value.status == 503 and "gave up after 2 attempt(s)" in str(raised.value)
    assert len(task_queries(dashscope_conn)) == 2


def test_unreachable_api(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    set_imggen_connection(
        monkeypatch, f"http://127.0.0.1:{port}", password="sk-unreachable-1", api_style="dashscope"
    )
    with pytest.raises(ImageGenerationAPIError, match="ConnectError") as raised:
        run_async(lambda hook: hook.get_task("t"), max_retries=1)
    assert "failed after 2 attempt(s)" in str(raised.value) and "sk-unreachable-1" not in str(raised.value)


def test_wrong_key_is_redacted(
    dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    wrong_key = "sk-wrong-async-0123456789"
    set_imggen_connection(monkeypatch, dashscope_conn.base_url, password=wrong_key, api_style="dashscope")
    with pytest.raises(ImageGenerationRejectedError) as raised:
        run_async(lambda hook: hook.get_task("t"))
    assert raised.value.status == 401 and raised.value.code == "InvalidApiKey"
    assert "Incorrect API key provided" in str(raised.value)
    assert wrong_key not in str(raised.value) + repr(raised.value) + "".join(capfd.readouterr())
    assert len(task_queries(dashscope_conn)) == 1  # a 401 is not retried


def test_urls_and_key_never_in_logs_or_reprs(
    dashscope_conn: EmulatorServer, capfd: pytest.CaptureFixture[str]
) -> None:
    task_id = fast_hook().submit_task("x", n=2, size="512x512").generation_task_id
    dashscope_conn.set_faults(fail_next=["500"], retry_after_seconds=0.01)
    state = run_async(lambda hook: hook.get_task(task_id))
    logged = "".join(capfd.readouterr())
    assert "retrying in" in logged  # the retry was logged...
    for image in state.images:
        assert image.url and image.url not in logged and image.url not in repr(state)  # ...URLs never
    assert API_KEY not in logged + repr(state)


@pytest.mark.parametrize(
    ("call", "parameter"),
    [
        (lambda hook: hook.get_task(""), "generation_task_id"),
        (lambda hook: hook.cancel_task("a/b"), "generation_task_id"),
    ],
)
def test_bad_task_id_is_refused_before_any_request(
    dashscope_conn: EmulatorServer, call: Callable, parameter: str
) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        run_async(call)
    assert raised.value.parameter == parameter
    assert dashscope_conn.requests_log() == []


def test_needs_api_style_dashscope(imggen_conn: EmulatorServer) -> None:
    with pytest.raises(ImageGenerationValidationError, match="api_style"):
        run_async(lambda hook: hook.get_task("t"))
    assert imggen_conn.requests_log() == []


def test_client_lifecycle(dashscope_conn: EmulatorServer) -> None:
    task_id = fast_hook().submit_task("x").generation_task_id

    async def main() -> None:
        # Without the context manager, each call has a client of its own, closed afterwards.
        standalone = ImageGenerationAsyncHook()
        assert (await standalone.get_task(task_id)).succeeded
        assert standalone._client is None
        async with ImageGenerationAsyncHook() as hook:
            client = hook._client
            assert client is not None
            for _ in range(3):
                await hook.get_task(task_id)
            assert hook._client is client and not client.is_closed  # one pool for every call
        assert hook._client is None and client.is_closed

    asyncio.run(main())


def test_uses_no_blocking_client(dashscope_conn: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    task_id = fast_hook().submit_task("x").generation_task_id

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the async hook must not use requests")

    monkeypatch.setattr(requests.Session, "send", refuse)
    assert run_async(lambda hook: hook.get_task(task_id)).succeeded
