"""
The worker's HTTP transport: one pooled ``requests`` session per hook, and :meth:`_request_json`, which
sends one request and retries it per the billing-safe :class:`~airflow_provider_imggen.retry_policy.
RetryPolicy`.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from airflow_provider_imggen.http_client import new_session, requests_verify
from airflow_provider_imggen.retry_policy import (
    SAFE_TO_RESEND,
    BillableRequest,
    TransientAPIError,
    give_up,
    requests_failure,
)

if TYPE_CHECKING:
    import requests

from airflow_provider_imggen.hooks.base import ImageGenerationHookBase


class JournalSteps(Protocol):
    """What a billable request's billing journal records between its sends (see ``_request_json``)."""

    def nothing_happened(self) -> None: ...

    def maybe_billed(self, code: str | None) -> None: ...

    def before_resend(self) -> None: ...


class BlockingHookBase(ImageGenerationHookBase):
    """The blocking hooks' transport (the triggerer's hook has its own, on httpx)."""

    def get_conn(self) -> requests.Session:
        """The hook's pooled HTTP session, authenticated with the connection's key."""
        return self._session

    @cached_property
    def _session(self) -> requests.Session:
        # Proxy and CA-bundle variables are resolved once per host (see _environment_settings) rather than
        # on every request, and ~/.netrc is ignored: requests would let its credentials replace the key.
        return new_session(self._headers())

    def _environment_settings(self, url: str) -> dict[str, Any]:
        """``proxies`` and ``verify`` for a URL from the environment, as requests would find them."""
        from requests.utils import get_environ_proxies

        host = urlsplit(url)[:2]
        settings = self._environment_cache.get(host)
        if settings is None:
            settings = {"proxies": get_environ_proxies(url), "verify": requests_verify()}
            self._environment_cache[host] = settings
        return settings

    @cached_property
    def _environment_cache(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {}

    def close(self) -> None:
        """Close the pooled HTTP session (``on_kill`` calls this to abort a request in flight)."""
        session = self.__dict__.pop("_session", None)
        if session is not None:
            session.close()

    def _request_json(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        read_timeout: float | None = None,
        billable: BillableRequest | None = None,
        journal_steps: JournalSteps | None = None,
        **kwargs: Any,
    ) -> tuple[dict[str, Any], str | None]:
        """
        Send one request and return its JSON body and request id, retried per :class:`RetryPolicy`: a
        ``billable`` request only when the service provably did nothing with it.

        :param journal_steps: for a billable request, what to record in its billing journal between its
            sends: a throttled send settles as not processed before the wait, a re-send is a new intent
        """
        import requests
        from tenacity import Retrying

        policy = self._policy(billable=billable is not None)
        timeout = read_timeout or self.effective_request_timeout
        attempts = 0
        sent_at = datetime.now(tz=UTC)
        # The worst failure of a billable request's attempts: a 500 then 429s may still have billed.
        worst: TransientAPIError | None = None
        try:
            for attempt in Retrying(**policy.tenacity_kwargs(self._log_retry(method, url, policy))):
                with attempt:
                    attempts += 1
                    if attempts > 1 and journal_steps is not None:
                        journal_steps.before_resend()
                    sent_at = datetime.now(tz=UTC)
                    try:
                        try:
                            response = self.get_conn().request(
                                method,
                                url,
                                headers=headers,
                                timeout=(self.connect_timeout, timeout),
                                **self._environment_settings(url),
                                **kwargs,
                            )
                        except requests.RequestException as error:
                            raise self._transport_error(error, requests_failure(error), timeout) from None
                        return self._decode(
                            response.status_code, response.reason, response.headers, response.text
                        )
                    except TransientAPIError as error:
                        if billable is not None and error.failure not in SAFE_TO_RESEND:
                            worst = error
                            if journal_steps is not None:
                                journal_steps.maybe_billed(error.code)
                        elif journal_steps is not None and worst is None:
                            # Before the wait: a try killed while it waits has paid for nothing.
                            journal_steps.nothing_happened()
                        raise
        except TransientAPIError as error:
            if worst is not None and error.failure in SAFE_TO_RESEND:
                error = worst
            raise give_up(
                error,
                attempts=attempts,
                method=method,
                url=url,
                policy=policy,
                billable=dataclasses.replace(billable, submitted_at=sent_at) if billable else None,
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")
