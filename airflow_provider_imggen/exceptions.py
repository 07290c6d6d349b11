"""Exceptions raised by the image generation provider."""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowException, AirflowFailException


class ImageGenerationError(AirflowException):
    """Base class of every error this provider raises."""


class ImageGenerationValidationError(AirflowFailException, ValueError):
    """
    A request parameter is invalid; raised before any (billable) request is sent.

    It derives from ``AirflowFailException`` so Airflow does not retry a task that can never
    succeed, and from ``ValueError`` so plain Python callers can catch it the usual way.
    """

    def __init__(self, parameter: str, value: object, allowed: str) -> None:
        self.parameter = parameter
        self.value = value
        self.allowed = allowed
        shown = repr(value)
        if len(shown) > 120:
            shown = f"{shown[:100]}... ({len(value) if hasattr(value, '__len__') else '?'} characters)"
        super().__init__(f"Invalid {parameter}={shown}: {allowed}")


class ImageGenerationAPIError(ImageGenerationError):
    """
    The API answered with an error (or could not be reached).

    :param message: the API's own message (with the API key redacted)
    :param status: HTTP status, or ``None`` when no response arrived
    :param code: the API's error code (``InvalidParameter``, ``invalid_api_key``...)
    :param request_id: the request id the API reported, for support tickets
    :param param: the request parameter the API blamed, when it says
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        param: str | None = None,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.param = param
        details = [
            f"{name}={value}"
            for name, value in (
                ("status", status),
                ("code", code),
                ("param", param),
                ("request_id", request_id),
            )
            if value is not None
        ]
        super().__init__(f"{message} ({', '.join(details)})" if details else message)


class ImageGenerationRejectedError(ImageGenerationAPIError, AirflowFailException):
    """
    The API refused the request for a reason a retry cannot fix (bad parameter, bad key, no quota).

    Airflow does not retry tasks failing with it: a retry would fail again, or bill again.
    """


class ImageGenerationTaskFailedError(ImageGenerationRejectedError):
    """
    A native generation task ended FAILED, CANCELED or UNKNOWN (no such task, or expired), or SUCCEEDED
    without a single image. Airflow does not retry: re-running would submit (and bill) a new task.

    :param task_id: the task
    :param task_status: its final status (``status`` is the HTTP status, as for every API error)
    :param code: the API's error code, e.g. ``DataInspectionFailed``
    """

    def __init__(
        self,
        message: str,
        *,
        task_id: str,
        task_status: str,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.task_id = task_id
        self.task_status = task_status
        super().__init__(f"Task {task_id} {task_status}: {message}", code=code, request_id=request_id)
        self.message = message


class ImageGenerationTaskTimeoutError(ImageGenerationAPIError):
    """
    A native task was still not done when the wait's timeout passed. The task itself goes on: Airflow may
    retry, and a retry that reconnects to ``task_id`` pays nothing more.
    """

    def __init__(self, *, task_id: str, task_status: str | None, waited: float | None) -> None:
        self.task_id = task_id
        self.task_status = task_status
        super().__init__(f"Task {task_id} was still {task_status} after {waited}s")


class ImageGenerationSubmissionUnknownError(ImageGenerationAPIError, AirflowFailException):
    """
    The connection failed after a billable submission was sent: the API may have created (and billed) the
    task, or not. Not retried, by the hook or by Airflow, so that nothing is paid twice.
    """


class ImageTransferError(ImageGenerationError):
    """
    Storing generated images failed in a way a task retry may fix (downloads kept failing, S3 errored).

    A retry downloads again from the still-valid result URLs: it never generates (and bills) again.
    """


class ImageTransferRejectedError(ImageTransferError, AirflowFailException):
    """
    Storing generated images failed for a reason a retry cannot fix: the content is not an image or is
    too large, keys collide, or an existing object holds different content. Nothing was overwritten.
    """


class ImageResultExpiredError(ImageTransferRejectedError):
    """A signed result URL has expired (or was refused): the generation task must be re-run."""


class ImageResultUrlRefusedError(ImageTransferRejectedError):
    """
    A result URL (or a redirect) was refused by the transfer's result-URL policy: not the API's own origin,
    not https, not an allowed result-store host, or not a public address. Nothing was fetched from it.

    :param rule: the policy rule that refused it (``scheme``, ``result_hosts``, ``public address``,
        ``redirects``)
    """

    def __init__(self, message: str, *, rule: str) -> None:
        self.rule = rule
        super().__init__(message)
