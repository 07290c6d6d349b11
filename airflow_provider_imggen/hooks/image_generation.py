"""Hook for text-to-image APIs: OpenAI-compatible gateways and DashScope (qwen-image, wan2.2-t2i)."""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from airflow.sdk import BaseHook

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationRejectedError,
    ImageGenerationValidationError,
)
from airflow_provider_imggen.models import GenerationRequest, coerce_int, validate_generation_request
from airflow_provider_imggen.utils import mask_url, redact, url_expiry

if TYPE_CHECKING:
    import requests
    from airflow.sdk import Connection
    from tenacity import RetryCallState

ApiStyle = Literal["openai", "dashscope"]
API_STYLES: tuple[str, ...] = ("openai", "dashscope")
DEFAULT_REQUEST_TIMEOUT = 180.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_CONNECT_TIMEOUT = 10.0
# Statuses worth another try: timeouts, throttling and server-side failures.
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Error codes that share a retryable status but that no retry can fix (quota, billing, missing model).
PERMANENT_ERROR_CODES = frozenset(
    {"insufficient_quota", "Arrearage", "BillOverdue", "model_not_found", "Throttling.AllocationQuota"}
)
PROMPT_LOG_CHARS = 200


@dataclass(frozen=True)
class ConnectionSettings:
    """What the hook reads from an ``imggen`` connection."""

    base_url: str
    api_key: str = field(repr=False)
    default_model: str | None
    request_timeout: float
    max_retries: int
    api_style: ApiStyle


@dataclass(frozen=True)
class GeneratedImage:
    """
    One generated image.

    :param index: position in the response (image ``i`` of a seeded request used ``seed + i``)
    :param url: signed result URL, for ``response_format="url"`` (a credential: log
        :attr:`masked_url` instead)
    :param data: decoded image bytes, for ``response_format="b64_json"``
    :param revised_prompt: the prompt the API actually used, when it rewrote it
    :param url_expires_at: when the signed URL stops working, if the URL says
    """

    index: int
    url: str | None = None
    data: bytes | None = None
    revised_prompt: str | None = None
    url_expires_at: datetime | None = None

    @property
    def masked_url(self) -> str | None:
        return mask_url(self.url) if self.url else None

    def __repr__(self) -> str:
        payload = f"url={self.masked_url!r}" if self.url else f"data=<{len(self.data or b'')} bytes>"
        return (
            f"GeneratedImage(index={self.index}, {payload}, revised_prompt={self.revised_prompt!r}, "
            f"url_expires_at={self.url_expires_at!r})"
        )


@dataclass(frozen=True)
class ImageGenerationResult:
    """
    The outcome of one generation request.

    :param created: the API's creation time (unix seconds)
    :param images: the generated images, in response order
    :param usage: the API's usage block, as sent
    :param request_id: the API's request id (``x-request-id``), for support tickets
    :param model: the model that generated the images
    :param parameters: the effective request parameters (never the key)
    """

    created: int
    images: tuple[GeneratedImage, ...]
    usage: dict[str, Any]
    request_id: str | None
    model: str
    parameters: dict[str, Any]

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, tz=UTC)


class _RetryableAPIError(ImageGenerationAPIError):
    """A transient API error; the hook retries it and raises it as a plain API error when retries run out."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ImageGenerationHook(BaseHook):
    """
    Interact with a text-to-image API: an OpenAI-compatible gateway (``POST /v1/images/generations``).

    The connection's Host is the API's base URL (``https://gateway.example.com/v1``; https when no scheme
    is given), its Password the API key. Extra fields: ``default_model``, ``request_timeout`` (seconds),
    ``max_retries`` and ``api_style`` (``openai`` or ``dashscope``).

    :param imggen_conn_id: the :ref:`imggen connection <howto/connection:imggen>` to use
    :param request_timeout: read timeout in seconds; overrides the connection's ``request_timeout``
    :param max_retries: retries on throttling, server errors and connection errors; overrides the connection
    :param connect_timeout: TCP/TLS connect timeout in seconds
    :param retry_wait_initial: first backoff in seconds (doubled each retry, with jitter)
    :param retry_wait_max: longest backoff in seconds
    :param max_retry_after: longest server-requested wait (``Retry-After``) honoured, in seconds; a longer
        one falls back to the exponential backoff
    """

    conn_name_attr = "imggen_conn_id"
    default_conn_name = "imggen_default"
    conn_type = "imggen"
    hook_name = "Image Generation"

    def __init__(
        self,
        imggen_conn_id: str = default_conn_name,
        *,
        request_timeout: float | None = None,
        max_retries: int | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry_wait_initial: float = 0.5,
        retry_wait_max: float = 8.0,
        max_retry_after: float = 60.0,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.imggen_conn_id = imggen_conn_id
        self.request_timeout = request_timeout
        self.max_retries = max_retries
        self.connect_timeout = connect_timeout
        self.retry_wait_initial = retry_wait_initial
        self.retry_wait_max = retry_wait_max
        self.max_retry_after = max_retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(imggen_conn_id={self.imggen_conn_id!r})"

    # -- connection ---------------------------------------------------------------------------------

    @cached_property
    def connection(self) -> Connection:
        return self.get_connection(self.imggen_conn_id)

    @cached_property
    def settings(self) -> ConnectionSettings:
        """The connection, parsed and checked (:class:`ImageGenerationValidationError` on bad fields)."""
        settings = parse_connection(self.connection)
        from airflow.sdk.log import mask_secret

        mask_secret(settings.api_key)
        return settings

    @property
    def effective_max_retries(self) -> int:
        return self.max_retries if self.max_retries is not None else self.settings.max_retries

    @property
    def effective_request_timeout(self) -> float:
        return self.request_timeout if self.request_timeout is not None else self.settings.request_timeout

    def get_conn(self) -> requests.Session:
        """The hook's pooled HTTP session, authenticated with the connection's key."""
        return self._session

    @cached_property
    def _session(self) -> requests.Session:
        import requests

        from airflow_provider_imggen import __version__

        session = requests.Session()
        # Proxy and CA-bundle variables are resolved once per host (see _environment_settings) rather than
        # on every request, and ~/.netrc is ignored: requests would let its credentials replace the key.
        session.trust_env = False
        session.headers.update(
            {
                "Authorization": f"Bearer {self.settings.api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": f"airflow-provider-imggen/{__version__}",
            }
        )
        return session

    def _environment_settings(self, url: str) -> dict[str, Any]:
        """``proxies`` and ``verify`` for a URL from the environment, as requests would find them."""
        import os

        from requests.utils import get_environ_proxies

        host = urlsplit(url)[:2]
        settings = self._environment_cache.get(host)
        if settings is None:
            settings = {
                "proxies": get_environ_proxies(url),
                "verify": os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True,
            }
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

    # -- requests -----------------------------------------------------------------------------------

    def validate_request(
        self,
        prompt: object,
        *,
        model: object = None,
        n: object = 1,
        size: object = None,
        response_format: object = "url",
        negative_prompt: object = None,
        prompt_upsampling: object = None,
        seed: object = None,
        extra_body: object = None,
    ) -> GenerationRequest:
        """Validate a request against the model table, filling the model from the connection's default."""
        if model is None:
            model = self.settings.default_model
            if model is None:
                raise ImageGenerationValidationError(
                    "model",
                    None,
                    f"pass model=..., or set default_model on connection {self.imggen_conn_id!r}",
                )
        return validate_generation_request(
            prompt=prompt,
            model=model,
            n=n,
            size=size,
            response_format=response_format,
            negative_prompt=negative_prompt,
            prompt_upsampling=prompt_upsampling,
            seed=seed,
            extra_body=extra_body,
        )

    def generate_images(
        self,
        prompt: str,
        *,
        model: str | None = None,
        n: int = 1,
        size: str | None = None,
        response_format: Literal["url", "b64_json"] = "url",
        negative_prompt: str | None = None,
        prompt_upsampling: bool | None = None,
        seed: int | str | None = None,
        extra_body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> ImageGenerationResult:
        """
        Generate images from a prompt (one billable request, retried only on transient failures).

        Every argument is validated against the model table before anything is sent.

        :param prompt: what to draw (at most 800 characters for the known models)
        :param model: model name; defaults to the connection's ``default_model``
        :param n: number of images (qwen-image: 1; wan2.2-t2i-*: 1-4)
        :param size: ``WxH`` or ``W*H``; defaults to the model's default size
        :param response_format: ``url`` (signed URLs valid ~24 h) or ``b64_json`` (decoded into ``data``)
        :param negative_prompt: what to avoid (at most 500 characters for the known models)
        :param prompt_upsampling: let the API rewrite the prompt (the API's default is true)
        :param seed: 0-2147483647; image ``i`` uses ``seed + i``
        :param extra_body: further top-level JSON fields, for parameters this hook does not name
        :param timeout: read timeout in seconds for this request
        :raises ImageGenerationValidationError: a parameter is invalid (nothing was sent)
        :raises ImageGenerationRejectedError: the API refused the request; retrying will not help
        :raises ImageGenerationAPIError: the API failed and retries ran out
        """
        request = self.validate_request(
            prompt,
            model=model,
            n=n,
            size=size,
            response_format=response_format,
            negative_prompt=negative_prompt,
            prompt_upsampling=prompt_upsampling,
            seed=seed,
            extra_body=extra_body,
        )
        if self.settings.api_style != "openai":
            raise ImageGenerationValidationError(
                "api_style",
                self.settings.api_style,
                "generate_images() speaks the OpenAI-compatible gateway API; set the connection's "
                "api_style to 'openai' (the native DashScope task flow is not supported yet)",
            )
        return self._generate_openai(request, timeout=timeout)

    def _generate_openai(self, request: GenerationRequest, *, timeout: float | None) -> ImageGenerationResult:
        url = f"{self.settings.base_url}/v1/images/generations"
        self.log.debug("POST %s: model=%s n=%d size=%s", url, request.model, request.n, request.size)
        started = time.monotonic()
        body, request_id = self._request_json("POST", url, json=request.to_openai_body(), timeout=timeout)
        result = self._parse_openai_result(body, request, request_id)
        # One line per request: enough to find, reproduce and bill-check it; URLs masked, never the key.
        self.log.info(
            "Generated %d image(s) in %.2fs: model=%s size=%s seed=%s request_id=%s prompt=%r urls=%s",
            len(result.images),
            time.monotonic() - started,
            result.model,
            request.size,
            request.seed,
            result.request_id,
            request.prompt[:PROMPT_LOG_CHARS],
            [image.masked_url for image in result.images]
            if request.response_format == "url"
            else "(b64_json)",
        )
        return result

    def _parse_openai_result(
        self, body: dict[str, Any], request: GenerationRequest, request_id: str | None
    ) -> ImageGenerationResult:
        data = body.get("data")
        if not isinstance(data, list) or not data:
            raise ImageGenerationAPIError(
                "The API answered without images (no 'data' list)", status=200, request_id=request_id
            )
        images = []
        for index, item in enumerate(data):
            url = item.get("url")
            encoded = item.get("b64_json")
            if not url and not encoded:
                raise ImageGenerationAPIError(
                    f"Image {index} in the response has neither 'url' nor 'b64_json'",
                    status=200,
                    request_id=request_id,
                )
            images.append(
                GeneratedImage(
                    index=index,
                    url=url,
                    data=base64.b64decode(encoded) if encoded else None,
                    revised_prompt=item.get("revised_prompt"),
                    url_expires_at=url_expiry(url) if url else None,
                )
            )
        parameters = request.to_openai_body()
        return ImageGenerationResult(
            created=int(body.get("created") or time.time()),
            images=tuple(images),
            usage=body.get("usage") or {},
            request_id=request_id,
            model=request.model,
            parameters=parameters,
        )

    def _request_json(self, method: str, url: str, **kwargs: Any) -> tuple[dict[str, Any], str | None]:
        """
        Send one request and return its JSON body and request id.

        Transient failures (including an error behind HTTP 200) are retried with exponential backoff and
        jitter, honouring the server's Retry-After.
        """
        import requests
        from tenacity import (
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            wait_exponential,
            wait_random,
        )

        # retry_wait_initial * 2**n capped at retry_wait_max, plus up to retry_wait_initial of jitter so that
        # many workers throttled at once do not retry in lockstep.
        backoff = wait_exponential(multiplier=self.retry_wait_initial, max=self.retry_wait_max) + wait_random(
            0, self.retry_wait_initial
        )

        def wait(retry_state: RetryCallState) -> float:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            retry_after = getattr(error, "retry_after", None)
            if retry_after is not None and 0 <= retry_after <= self.max_retry_after:
                return retry_after
            return backoff(retry_state)

        def log_retry(retry_state: RetryCallState) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            self.log.warning(
                "%s %s failed (attempt %d of %d): %s; retrying in %.2fs",
                method,
                mask_url(url),
                retry_state.attempt_number,
                max_attempts,
                error,
                retry_state.next_action.sleep if retry_state.next_action else 0.0,
            )

        timeout = kwargs.pop("timeout", None) or self.effective_request_timeout
        max_attempts = self.effective_max_retries + 1
        transient = (
            _RetryableAPIError,
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        )
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(max_attempts),
                wait=wait,
                retry=retry_if_exception_type(transient),
                before_sleep=log_retry,
                reraise=True,
            ):
                with attempt:
                    response = self.get_conn().request(
                        method,
                        url,
                        timeout=(self.connect_timeout, timeout),
                        **self._environment_settings(url),
                        **kwargs,
                    )
                    return self._json_or_raise(response)
        except _RetryableAPIError as error:
            raise ImageGenerationAPIError(
                f"{error.message} (gave up after {max_attempts} attempt(s))",
                status=error.status,
                code=error.code,
                request_id=error.request_id,
                param=error.param,
            ) from None
        except requests.RequestException as error:
            # requests exceptions carry the request, and with it the Authorization header: don't chain.
            raise ImageGenerationAPIError(
                f"{method} {mask_url(url)} failed after {max_attempts} attempt(s): "
                f"{redact(f'{type(error).__name__}: {error}', self.settings.api_key)}"
            ) from None
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _json_or_raise(self, response: requests.Response) -> tuple[dict[str, Any], str | None]:
        """Decode a response, raising for an error status or an error body behind HTTP 200."""
        request_id = response.headers.get("x-request-id")
        try:
            body = response.json()
        except ValueError:
            if response.status_code >= 400:
                raise self._api_error(response, None, None) from None
            raise ImageGenerationAPIError(
                f"The API answered {response.status_code} with a body that is not JSON "
                f"({response.headers.get('content-type')!r})",
                status=response.status_code,
                request_id=request_id,
            ) from None
        if not isinstance(body, dict):
            if response.status_code >= 400:
                raise self._api_error(response, None, None)
            raise ImageGenerationAPIError(
                "The API answered with JSON that is not an object",
                status=response.status_code,
                request_id=request_id,
            )
        error = _error_fields(body)
        if error is not None or response.status_code >= 400:
            raise self._api_error(response, body, error)
        return body, request_id or body.get("request_id")

    def _api_error(
        self, response: requests.Response, body: object, error: dict[str, Any] | None
    ) -> ImageGenerationAPIError:
        """One exception for both error shapes, retryable or not, with the key redacted from the message."""
        status = response.status_code
        if error is None:
            text = response.text[:300].strip() if response.text else ""
            error = {
                "message": f"HTTP {status} {response.reason or ''}".strip() + (f": {text}" if text else "")
            }
        code = str(error["code"]) if error.get("code") is not None else None
        request_id = response.headers.get("x-request-id") or (
            body.get("request_id") if isinstance(body, dict) else None
        )
        param = str(error["param"]) if error.get("param") is not None else None
        message = redact(str(error.get("message") or f"HTTP {status}"), self.settings.api_key)
        if _is_retryable(status, code, response.headers.get("x-should-retry")):
            return _RetryableAPIError(
                message,
                retry_after=_retry_after_seconds(response.headers),
                status=status,
                code=code,
                request_id=request_id,
                param=param,
            )
        return ImageGenerationRejectedError(
            message, status=status, code=code, request_id=request_id, param=param
        )

    # -- UI ---------------------------------------------------------------------------------------

    def test_connection(self) -> tuple[bool, str]:
        """
        Check the connection with an authenticated call that bills no image.

        OpenAI-compatible gateways: ``GET /v1/models``. DashScope: a status query for a task id that
        does not exist (answered without billing; a wrong key is refused).
        """
        try:
            settings = self.settings
            if settings.api_style == "openai":
                url = f"{settings.base_url}/v1/models"
            else:
                url = f"{settings.base_url}/api/v1/tasks/airflow-connection-test"
            body, _ = self._request_json("GET", url, timeout=min(30.0, settings.request_timeout))
        except ImageGenerationAPIError as error:
            return False, error.message
        except Exception as error:
            # Also reached when the connection itself is unusable: redact from what was loaded, if anything.
            loaded = self.__dict__.get("connection")
            return False, redact(f"{type(error).__name__}: {error}", loaded.password if loaded else None)
        if settings.api_style == "openai":
            models = [item.get("id") for item in body.get("data", []) if isinstance(item, dict)]
            message = f"Connected to {settings.base_url}: {len(models)} model(s) available"
        else:
            message = f"Connected to {settings.base_url}"
        if settings.default_model:
            message += f"; default model {settings.default_model}"
        return True, message


def parse_connection(conn: Connection) -> ConnectionSettings:
    """Read and check an ``imggen`` connection; errors name the field, the value and what is allowed."""
    extras = conn.extra_dejson

    def extra(name: str) -> Any:
        # The UI of older Airflow versions stored form fields as extra__<conn type>__<name>.
        value = extras.get(name, extras.get(f"extra__imggen__{name}"))
        return None if value == "" else value

    api_style: ApiStyle = extra("api_style") or "openai"
    if api_style not in API_STYLES:
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} extra api_style", api_style, "expected 'openai' or 'dashscope'"
        )
    if not conn.password:
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} API key (password)",
            None,
            "set the API key as the connection password",
        )

    request_timeout = extra("request_timeout")
    if request_timeout is None:
        timeout = DEFAULT_REQUEST_TIMEOUT
    else:
        try:
            timeout = float(request_timeout)
        except (TypeError, ValueError):
            timeout = -1.0
        if not timeout > 0:
            raise ImageGenerationValidationError(
                f"connection {conn.conn_id!r} extra request_timeout", request_timeout, "expected seconds > 0"
            )

    max_retries = extra("max_retries")
    retries = DEFAULT_MAX_RETRIES
    if max_retries is not None:
        allowed = "expected a whole number 0-20"
        retries = coerce_int(f"connection {conn.conn_id!r} extra max_retries", max_retries, allowed)
        if not 0 <= retries <= 20:
            raise ImageGenerationValidationError(
                f"connection {conn.conn_id!r} extra max_retries", max_retries, allowed
            )

    default_model = extra("default_model")
    return ConnectionSettings(
        base_url=_base_url(conn, api_style),
        api_key=conn.password,
        default_model=str(default_model).strip() if default_model else None,
        request_timeout=timeout,
        max_retries=retries,
        api_style=api_style,
    )


def _base_url(conn: Connection, api_style: str) -> str:
    """The API root, from Host (scheme optional, https by default), Port and Schema (the path of a URI)."""
    host = (conn.host or "").strip()
    if not host:
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} host",
            conn.host,
            "set Host to the API's base URL, e.g. https://gateway.example.com/v1",
        )
    if "://" not in host:
        host = f"https://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https"):
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} host", conn.host, "the scheme must be http or https"
        )
    netloc = parts.netloc
    if conn.port and parts.port is None:
        netloc = f"{netloc}:{conn.port}"
    path = parts.path.rstrip("/")
    if conn.schema:
        path = f"{path}/{conn.schema.strip('/')}"
    # Accept the base URL with or without the API's version suffix; the hook adds it back per endpoint.
    suffix = "/v1" if api_style == "openai" else "/api/v1"
    if path.endswith(suffix):
        path = path[: -len(suffix)]
    return urlunsplit((parts.scheme, netloc, path, "", ""))


def _error_fields(body: dict[str, Any] | None) -> dict[str, Any] | None:
    """The error inside a body, in either shape: ``{"error": {...}}`` or DashScope's ``{code, message}``."""
    if not body:
        return None
    error = body.get("error")
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    if body.get("code") and body.get("message") and "data" not in body and "output" not in body:
        return {"code": body["code"], "message": body["message"]}
    return None


def _is_retryable(status: int, code: str | None, should_retry: str | None) -> bool:
    if should_retry in ("true", "false"):
        return should_retry == "true"
    if code is not None and any(code.endswith(permanent) for permanent in PERMANENT_ERROR_CODES):
        return False
    if status == 200:
        # An upstream task failure relayed as 200 (a gateway quirk): transient only when it says so.
        return code is not None and code.startswith(("InternalError", "Throttling", "RequestTimeOut"))
    return status in RETRYABLE_STATUSES or status >= 500


def _retry_after_seconds(headers: Any) -> float | None:
    """The server's requested wait: ``retry-after-ms``, else ``Retry-After`` in seconds or as an HTTP date."""
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return float(milliseconds) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(tz=UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
