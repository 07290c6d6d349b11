"""
The triggerer's hook: status queries and cancels on DashScope's task API, without blocking the event loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from airflow_provider_imggen.connection_settings import (
    ConnectionSettings,
    parse_connection,
)
from airflow_provider_imggen.exceptions import (
    ImageGenerationRejectedError,
)
from airflow_provider_imggen.http_client import ssl_context
from airflow_provider_imggen.results import (
    SubmittedTask,
    TaskState,
)
from airflow_provider_imggen.retry_policy import (
    BillableRequest,
    TransientAPIError,
    give_up,
    httpx_failure,
)
from airflow_provider_imggen.wire import native

if TYPE_CHECKING:
    from types import TracebackType

    import httpx
    from pydantic import JsonValue

from airflow_provider_imggen.hooks.base import ImageGenerationHookBase


class ImageGenerationAsyncHook(ImageGenerationHookBase):
    """
    The asyncio hook for triggers: status queries and cancels on DashScope's native task API.

    It submits only through :meth:`submit_once`, which a batch's trigger calls under a claim it won in the
    billing ledger (a trigger may run more than once, and a submission bills: nothing else may send one from
    the triggerer). It never calls the synchronous multimodal generation, and it never blocks the event
    loop: the connection comes from ``aget_connection``, the HTTP client (httpx) is built in a thread (it
    loads CA certificates from disk), retries sleep with ``asyncio.sleep`` (tenacity's ``AsyncRetrying``).
    Connection parsing, the retry policy, response and task parsing, errors and masking are the same as
    :class:`ImageGenerationHook`'s.

    httpx rather than aiohttp: httpx is a dependency of Airflow's core and Task SDK (aiohttp only comes with
    the http provider), it has connect and read timeouts like ``requests``, and it never reads ``~/.netrc``,
    whose credentials could replace the key (aiohttp's ``trust_env`` does read it).

    Use it as an async context manager to keep one connection pool for many calls::

        async with ImageGenerationAsyncHook("imggen_default") as hook:
            state = await hook.get_task(generation_task_id)

    Called outside one, each call uses a client of its own.
    """

    def __init__(
        self, imggen_conn_id: str = ImageGenerationHookBase.default_conn_name, **kwargs: Any
    ) -> None:
        super().__init__(imggen_conn_id, **kwargs)
        self._client: httpx.AsyncClient | None = None

    async def aget_settings(self) -> ConnectionSettings:
        """The parsed connection, loaded without blocking the event loop (once; then cached)."""
        if "settings" not in self.__dict__:
            from airflow.sdk.log import amask_secret

            from airflow_provider_imggen.connections import aextra_dejson, aget_connection
            from airflow_provider_imggen.utils import secret_forms

            # Not self.aget_connection: that misses metadata-DB connections under `airflow dags test`.
            conn = await aget_connection(self.imggen_conn_id)
            settings = parse_connection(conn, await aextra_dejson(conn))
            await amask_secret(cast("list[JsonValue]", secret_forms(settings.api_key)))
            self.__dict__["connection"] = conn
            self.__dict__["settings"] = settings
        return self.settings

    async def __aenter__(self) -> ImageGenerationAsyncHook:
        if self._client is None:
            self._client = await self._new_client()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _new_client(self) -> httpx.AsyncClient:
        import asyncio

        await self.aget_settings()
        return await asyncio.to_thread(self._build_client)

    def _build_client(self) -> httpx.AsyncClient:
        import httpx

        return httpx.AsyncClient(
            headers=self._headers(),
            timeout=httpx.Timeout(self.effective_request_timeout, connect=self.connect_timeout),
            # The CA bundle variables requests honours (a file or a directory), so both hooks and the
            # transfer trust the same servers; proxies and NO_PROXY come from the environment (trust_env),
            # ~/.netrc is never read.
            verify=ssl_context(),
            trust_env=True,
        )

    @contextlib.asynccontextmanager
    async def _client_in_use(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._client is not None:
            yield self._client
            return
        async with await self._new_client() as client:
            yield client

    async def get_task(self, generation_task_id: str) -> TaskState:
        """As :meth:`ImageGenerationHook.get_task`: the task's status and, once SUCCEEDED, its images."""
        await self.aget_settings()
        self._require_dashscope("get_task()")
        url = self._task_url(generation_task_id)
        body, request_id = await self._request_json("GET", url)
        return self._parse_task_state(body, request_id, generation_task_id)

    async def cancel_task(self, generation_task_id: str) -> bool:
        """As :meth:`ImageGenerationHook.cancel_task`: True if canceled, False if no longer pending."""
        await self.aget_settings()
        self._require_dashscope("cancel_task()")
        url = self._task_url(generation_task_id, "/cancel")
        try:
            await self._request_json("POST", url)
        except ImageGenerationRejectedError as error:
            if self._cancel_refused(error, generation_task_id):
                return False
            raise
        self.log.info("Canceled task %s", generation_task_id)
        return True

    async def submit_once(self, body: dict[str, Any], *, model: str, images: int) -> SubmittedTask:
        """
        Send one native task submission, once: never retried here, whatever happens (the caller holds the
        ledger's claim for exactly one send, and decides what a failure means for it).

        :param body: the submission body, from :func:`~airflow_provider_imggen.wire.native.submission_body`
        :param model: the model (what may be billed)
        :param images: the image count (what may be billed)
        :raises ImageGenerationThrottledError: a 429 (nothing billed)
        :raises ImageGenerationSubmissionUnknownError: sent, outcome unknown (a 5xx, a timeout, a dropped
            connection); :class:`ImageGenerationMalformedResponseError`: answered unreadably
        :raises ImageGenerationAPIError: never connected (``nothing_sent``), or refused (4xx: nothing billed)
        """
        import httpx

        await self.aget_settings()
        self._require_dashscope("submit_once()")
        url = f"{self.settings.base_url}{native.SUBMIT_PATH}"
        billable = BillableRequest(model=model, images=images, submitted_at=datetime.now(tz=UTC), native=True)
        try:
            try:
                async with self._client_in_use() as client:
                    response = await client.post(url, json=body, headers=native.ASYNC_HEADER)
            except httpx.HTTPError as error:
                raise self._transport_error(
                    error, httpx_failure(error), self.effective_request_timeout
                ) from None
            answer, request_id = self._decode(
                response.status_code, response.reason_phrase, response.headers, response.text
            )
        except TransientAPIError as error:
            policy = self._policy(billable=True)
            raise give_up(
                error, attempts=1, method="POST", url=url, policy=policy, billable=billable
            ) from None
        return native.parse_submitted_task(answer, request_id, body)

    async def _request_json(self, method: str, url: str) -> tuple[dict[str, Any], str | None]:
        """Send one idempotent request, retried on every transient failure; its JSON body and request id."""
        import httpx
        from tenacity import AsyncRetrying

        policy = self._policy(billable=False)
        attempts = 0
        try:
            async for attempt in AsyncRetrying(
                **policy.tenacity_kwargs(self._log_retry(method, url, policy))
            ):
                with attempt:
                    attempts += 1
                    try:
                        async with self._client_in_use() as client:
                            response = await client.request(method, url)
                    except httpx.HTTPError as error:
                        raise self._transport_error(
                            error, httpx_failure(error), self.effective_request_timeout
                        ) from None
                    return self._decode(
                        response.status_code, response.reason_phrase, response.headers, response.text
                    )
        except TransientAPIError as error:
            raise give_up(error, attempts=attempts, method=method, url=url, policy=policy) from None
        raise AssertionError("unreachable: tenacity either returns or raises")
