"""
Every answer's error, in either shape (``{"error": {...}}`` or DashScope's ``{code, message}``, behind any
status, HTTP 200 included), as the exception it stands for: a rejection no retry fixes, or a transient
failure the retry policy weighs. The API key is redacted from every message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    ImageGenerationRejectedError,
    billed_note,
)
from airflow_provider_imggen.retry_policy import (
    Failure,
    TransientAPIError,
    classify_error,
    retry_after_seconds,
)
from airflow_provider_imggen.utils import may_hold_secret, redact, redact_json

if TYPE_CHECKING:
    from airflow_provider_imggen.request import GenerationRequest
    from airflow_provider_imggen.results import FailedImage


def decode_response(
    status: int, reason: str | None, headers: Mapping[str, str], text: str, api_key: str
) -> tuple[dict[str, Any], str | None]:
    """
    A response's JSON object and request id, or the exception it stands for (either hook's client).

    Raises for an error status, and for an error body behind HTTP 200 (a gateway quirk). The API key is
    redacted, in every form :func:`~airflow_provider_imggen.utils.secret_forms` knows, from every message
    and from every string of the body returned: some APIs echo the key they were sent (in ``usage``, in a
    ``revised_prompt``), and what the body holds goes on to XCom, logs and S3 metadata.

    A body nested deeper than the JSON parser goes is "not JSON"; any other failure of the reading itself
    is an unreadable answer too (``Failure.MALFORMED``), never a ``RecursionError`` or ``KeyError``: for a
    billable request the hook then raises :class:`ImageGenerationMalformedResponseError` (billed, not
    retried), for a read the error of an unreadable answer.

    :raises ImageGenerationRejectedError: an error no retry can fix
    :raises TransientAPIError: an error another attempt may fix, or (``Failure.MALFORMED``) a 2xx answer
        that is not a JSON object; the retry policy decides what to do with it
    """
    try:
        return _decode_response(status, reason, headers, text, api_key)
    except ImageGenerationAPIError:
        raise
    except Exception as error:  # a bug of the reading, or a body deeper than Python recurses
        request_id = headers.get("x-request-id")
        raise TransientAPIError(
            f"The API answered {status} with a body the provider could not read ({type(error).__name__})",
            failure=Failure.MALFORMED,
            status=status,
            request_id=request_id if isinstance(request_id, str) else None,
        ) from None


def _decode_response(
    status: int, reason: str | None, headers: Mapping[str, str], text: str, api_key: str
) -> tuple[dict[str, Any], str | None]:
    request_id = headers.get("x-request-id")
    if request_id is not None:
        request_id = redact(request_id, api_key)
    deep = False
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    except RecursionError:  # "[" * 100000, or a valid document nested past the parser's recursion limit
        body, deep = None, True
    if not isinstance(body, dict):
        if status >= 400:
            raise _api_error(status, reason, headers, text, None, None, api_key)
        kind = "is not JSON" if body is None and text.strip() else "is not a JSON object"
        if deep:
            kind = "is not JSON the provider can read (nested deeper than its JSON parser goes)"
        raise TransientAPIError(
            f"The API answered {status} with a body that {kind} ({headers.get('content-type')!r})",
            failure=Failure.MALFORMED,
            status=status,
            request_id=request_id,
        )
    error = _error_fields(body)
    if error is not None or status >= 400:
        raise _api_error(status, reason, headers, text, body, error, api_key)
    if may_hold_secret(text, api_key):
        body = redact_json(body, api_key)
    body_request_id = body.get("request_id")
    return body, request_id or (body_request_id if isinstance(body_request_id, str) else None)


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


def _api_error(
    status: int,
    reason: str | None,
    headers: Mapping[str, str],
    text: str,
    body: object,
    error: dict[str, Any] | None,
    api_key: str,
) -> ImageGenerationAPIError:
    """One exception for both error shapes, transient or not, with the key redacted from the message."""
    if error is None:
        # Redacted before it is cut: a key straddling the cut would otherwise show its first part.
        shown = redact(text, api_key)[:300].strip() if text else ""
        error = {"message": f"HTTP {status} {reason or ''}".strip() + (f": {shown}" if shown else "")}
    code = redact(str(error["code"]), api_key) if error.get("code") is not None else None
    request_id = headers.get("x-request-id") or (body.get("request_id") if isinstance(body, dict) else None)
    if request_id is not None:
        request_id = redact(str(request_id), api_key)
    param = redact(str(error["param"]), api_key) if error.get("param") is not None else None
    message = redact(str(error.get("message") or f"HTTP {status}"), api_key)
    failure = classify_error(status, code, message, headers.get("x-should-retry"))
    if failure is not None:
        return TransientAPIError(
            message,
            failure=failure,
            retry_after=retry_after_seconds(headers),
            status=status,
            code=code,
            request_id=request_id,
            param=param,
        )
    return ImageGenerationRejectedError(message, status=status, code=code, request_id=request_id, param=param)


def no_usable_image(
    request: GenerationRequest, request_id: str | None, failed: list[FailedImage], codes: str
) -> ImageGenerationMalformedResponseError:
    """A 200 answer without one usable image: maybe billed for every image asked, so never re-sent."""
    return ImageGenerationMalformedResponseError(
        f"The API answered 200 without a single usable image ({len(failed)} item(s){codes}; first: "
        f"{failed[0].message}). {billed_note(request.model, request.n)}",
        failed_images=tuple(failed),
        status=200,
        request_id=request_id,
        model=request.model,
        images_at_risk=request.n,
    )
