"""
Errors as the service and the gateways answer them: :class:`ServiceError` (raised by the backend and the
parsers, rendered and logged once by the exception handler of :mod:`~airflow_provider_imggen.emulator.calls`),
bodies in the gateway's ``{"error": {...}}`` and DashScope's ``{code, message, request_id}`` shapes, the
answers of injected faults, and a proxy's HTML error pages.
"""

from __future__ import annotations

import math
from typing import Any

from fastapi.responses import JSONResponse, Response

from airflow_provider_imggen.emulator.faults import ErrorStyle, FaultConfig
from airflow_provider_imggen.emulator.transport import DroppedConnection


class ServiceError(Exception):
    """
    An error answer: HTTP ``status``, DashScope ``code`` (``openai_code`` when the gateway's differs),
    ``message``, the gateway's ``error_type`` and ``param``; ``outcome`` and ``model`` go to the request log.
    ``status`` 200 is a relay's error body on HTTP 200.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        error_type: str = "invalid_request_error",
        outcome: str = "rejected",
        model: str | None = None,
        openai_code: str | None = None,
        headers: dict[str, str] | None = None,
        billed: int = 0,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.param, self.error_type, self.outcome, self.model = param, error_type, outcome, model
        self.openai_code, self.headers, self.billed = openai_code, headers, billed

    def response(self, style: ErrorStyle, request_id: str) -> JSONResponse:
        if style == "dashscope":
            body: dict[str, Any] = {"code": self.code, "message": self.message, "request_id": request_id}
        else:
            code = self.openai_code or self.code
            body = {
                "error": {"message": self.message, "type": self.error_type, "param": self.param, "code": code}
            }
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def invalid(message: str, param: str | None = None, model: str | None = None) -> ServiceError:
    return ServiceError(400, "InvalidParameter", message, param=param, model=model)


def model_not_found(model: str) -> ServiceError:
    """DashScope's answer for a model it does not have (§7: 404 ModelNotFound)."""
    return ServiceError(
        404,
        "ModelNotFound",
        f"Model not exist: {model}",
        param="model",
        model=model,
        outcome="model_not_found",
    )


def gateway_model_not_found(model: str) -> ServiceError:
    """
    A gateway's answer for a model no channel serves: new-api and one-api answer HTTP 503 with code
    ``model_not_found`` ("no available channel"), which is not transient (api-notes §4).
    """
    return ServiceError(
        503,
        "model_not_found",
        f"No available channel for model {model} under group default (request id unknown)",
        param="model",
        error_type="new_api_error",
        model=model,
        outcome="model_not_found",
    )


def retry_headers(seconds: float | None) -> dict[str, str] | None:
    if seconds is None:
        return None
    return {"Retry-After": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))}


def throttling(limit: str, faults: FaultConfig, model: str | None = None) -> ServiceError:
    """The service's 429 for a quota (``limit``: rate, concurrency or status), relayed as is by gateways."""
    if limit == "concurrency":
        code = "Throttling"
        message = "Requests throttling triggered: too many concurrent tasks, please try again later."
    elif limit == "status":
        code = "Throttling"
        message = "Requests throttling triggered: too many task queries, please try again later."
    else:
        code = "Throttling.RateQuota"
        message = "Requests rate limit exceeded, please try again later."
    return ServiceError(
        429,
        code,
        message,
        error_type="rate_limit_error",
        outcome="throttled",
        model=model,
        headers=retry_headers(faults.quota_retry_after_seconds),
    )


def unauthorized(presented: str | None, key_known: bool, workspace: str | None) -> ServiceError:
    """401 for a missing or wrong key; 403 for a workspace the right key may not use (wording unverified)."""
    if key_known:
        return ServiceError(
            403,
            "AccessDenied",
            f"The API key has no access to workspace {workspace!r}.",
            outcome="unauthorized",
        )
    if presented is None:
        message = (
            "You didn't provide an API key. You need to provide your API key in an Authorization header "
            "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    else:
        # Echoed verbatim on purpose, like real gateways: the provider must redact keys from error messages.
        message = f"Incorrect API key provided: {presented}"
    return ServiceError(401, "InvalidApiKey", message, openai_code="invalid_api_key", outcome="unauthorized")


def fault_error(fault: str, faults: FaultConfig) -> ServiceError | None:
    """The error of a refusing fault (None for ``drop`` and ``200_error``, which are not plain errors)."""
    if fault == "throttle":
        return throttling("rate", faults)
    if fault == "429":
        return ServiceError(
            429,
            "Throttling.RateQuota",
            "Rate limit exceeded: requests rate limit exceeded, please try again later.",
            error_type="rate_limit_error",
            headers=retry_headers(faults.retry_after_seconds),
        )
    if fault == "moderation":
        return ServiceError(400, "DataInspectionFailed", "Input data may contain inappropriate content.")
    if fault == "500":
        message = "An internal error has occurred, please try again later or contact service support."
        return ServiceError(500, "InternalError", message, error_type="server_error")
    if fault == "503":
        message = "The model is temporarily unavailable, please try again later."
        return ServiceError(503, "ModelUnavailable", message, error_type="server_error")
    return None


def ali_error_200(code: str, message: str) -> JSONResponse:
    """new-api's relay of a failed upstream task: HTTP 200, ``{"error": {"type": "ali_error", ...}}``."""
    return JSONResponse({"error": {"message": message, "type": "ali_error", "param": None, "code": code}})


def refusing_fault_response(fault: str, request_id: str, faults: FaultConfig, style: ErrorStyle) -> Response:
    """The answer of a fault that stands in for the service before it did anything (not billed)."""
    if fault == "drop":
        return DroppedConnection()
    error = fault_error(fault, faults)
    if error is not None:
        return error.response(style, request_id)
    # 200_error: the gateway relays a failed upstream task with HTTP 200.
    message = "upstream task failed: InternalError.Algo"
    if faults.error_200_type == "ali_error" and style == "openai":
        return ali_error_200("InternalError.Algo", message)
    return ServiceError(200, "InternalError.Algo", message, error_type="upstream_error").response(
        style, request_id
    )


def _proxy_page(status: int, reason: str) -> Response:
    """An nginx-style HTML error page, as a proxy in front of the service answers."""
    body = (
        f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
        f"<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )
    return Response(body, status_code=status, media_type="text/html")


def billed_fault_status(fault: str) -> int:
    """The HTTP status a billed fault answers with (0: no answer at all)."""
    return {"billed_drop": 0, "billed_502": 502, "billed_504": 504, "billed_stall": 504}.get(fault, 500)


def billed_fault_response(fault: str, request_id: str, style: ErrorStyle) -> Response:
    """
    The failed answer of a request the service did perform and bill. For ``billed_stall`` the caller
    holds the answer ``stall_ms`` first (after releasing what the request held).
    """
    if fault == "billed_drop":
        return DroppedConnection()
    if fault == "billed_502":
        return _proxy_page(502, "Bad Gateway")
    if fault in ("billed_504", "billed_stall"):
        return _proxy_page(504, "Gateway Time-out")
    # billed_500: a relay whose long poll of the upstream task timed out while the task went on.
    message = "Request timed out waiting for the upstream task, please try again later."
    return ServiceError(500, "InternalError", message, error_type="server_error").response(style, request_id)
