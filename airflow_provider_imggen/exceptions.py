"""
Exceptions raised by the image generation provider; every one derives from :class:`ImageGenerationError`.

Which ones Airflow retries: those deriving from ``AirflowFailException`` are final (a retry would fail
again, or pay again); the others may be retried, and a retry never pays for anything twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowException, AirflowFailException

if TYPE_CHECKING:
    from datetime import datetime
    from decimal import Decimal


class ImageGenerationError(AirflowException):
    """Base class of every error this provider raises."""


class ImageGenerationValidationError(ImageGenerationError, AirflowFailException, ValueError):
    """
    A request parameter is invalid; raised before any (billable) request is sent.

    It derives from ``AirflowFailException`` so Airflow does not retry a task that can never
    succeed, from ``ValueError`` so plain Python callers can catch it the usual way, and from
    :class:`ImageGenerationError` like every error of this provider.
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
        # Set when the connection never opened: nothing was sent, nothing billed.
        self.nothing_sent = False
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

    :param generation_task_id: the API's task id
    :param task_status: its final status (``status`` is the HTTP status, as for every API error)
    :param code: the API's error code, e.g. ``DataInspectionFailed``
    """

    def __init__(
        self,
        message: str,
        *,
        generation_task_id: str,
        task_status: str,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.generation_task_id = generation_task_id
        self.task_status = task_status
        super().__init__(
            f"Task {generation_task_id} {task_status}: {message}", code=code, request_id=request_id
        )
        self.message = message


class ImageGenerationTaskTimeoutError(ImageGenerationAPIError):
    """
    A native task was still not done when the wait's timeout passed. The task itself goes on: Airflow may
    retry, and a retry that reconnects to ``generation_task_id`` pays nothing more.
    """

    def __init__(self, *, generation_task_id: str, task_status: str | None, waited: float | None) -> None:
        self.generation_task_id = generation_task_id
        self.task_status = task_status
        super().__init__(f"Task {generation_task_id} was still {task_status} after {waited}s")


class ImageGenerationOutcomeUnknownError(ImageGenerationAPIError, AirflowFailException):
    """
    A billable request was sent and its outcome is unknown: the service may have generated (and billed)
    the images, or not (a 5xx, a read timeout or a connection lost after sending). Not retried, by the
    hook or by Airflow, so that nothing is paid twice; the message says what may have been billed and
    how to check.

    :param model: the model of the request
    :param images_at_risk: how many images may have been billed (the request's ``n``)
    :param submitted_at: when the request was sent (UTC)
    :param generation_task_id: the native task, when one is known
    """

    def __init__(
        self,
        message: str,
        *,
        model: str | None = None,
        images_at_risk: int | None = None,
        submitted_at: datetime | None = None,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        generation_task_id: str | None = None,
    ) -> None:
        self.model = model
        self.images_at_risk = images_at_risk
        self.submitted_at = submitted_at
        self.generation_task_id = generation_task_id
        super().__init__(message, status=status, code=code, request_id=request_id)


class ImageGenerationSubmissionUnknownError(ImageGenerationOutcomeUnknownError):
    """
    A native task submission was sent and its outcome is unknown: the API may have created (and will
    bill) the task, or not, and the task list did not name exactly one task it could be.
    """


class ImageGenerationMalformedResponseError(ImageGenerationAPIError, AirflowFailException):
    """
    The API answered a billable request with a body the hook cannot read (not JSON, no image list, not a
    single usable image). The images may have been billed: not retried, by the hook or by Airflow. The
    message names what may have been billed (model, images) and the request id, to find the charge.

    :param failed_images: the items that could not be used, when the body had an image list
    :param model: the model of the request
    :param images_at_risk: how many images may have been billed (the request's ``n``)
    """

    def __init__(
        self,
        message: str,
        *,
        failed_images: tuple[object, ...] = (),
        status: int | None = None,
        request_id: str | None = None,
        model: str | None = None,
        images_at_risk: int | None = None,
    ) -> None:
        self.failed_images = failed_images
        self.model = model
        self.images_at_risk = images_at_risk
        super().__init__(message, status=status, request_id=request_id)


def billed_note(model: str, images: int) -> str:
    """What an unreadable answer to a billable request may have cost, in the words the errors use."""
    return f"The service may have billed up to {images} image(s) of {model}: not sent again"


class ImageGenerationThrottledError(ImageGenerationAPIError):
    """
    The service throttled a request (HTTP 429 rate limit) and the in-process budget ran out, or it asked
    (``Retry-After``) for a longer wait than the hook's ``max_retry_after``. Nothing was billed: Airflow
    may retry (or the operator waits and submits again).

    :param retry_after: the wait the service asked for, in seconds (``None`` when it named none)
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status, code=code, request_id=request_id)


class ImageGenerationInputError(ImageGenerationError):
    """
    An input image could not be read (missing, refused, unreachable). Nothing was sent, so nothing was
    billed: Airflow may retry.
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


class ResultUrlSealError(ImageGenerationError, AirflowFailException):
    """
    A signed result URL could not be sealed for XCom, or a sealed one could not be opened.

    Sealing uses Airflow's Fernet key (``[core] fernet_key``), which the workers that generate and those
    that store the images must share. No retry fixes a missing or rotated key: an administrator does.
    """


class ImageGenerationConnectionUnreadableError(ImageGenerationAPIError):
    """
    A trigger (or other async code) could not read the ``imggen`` connection, by any way Airflow offers.

    Nothing was sent. In a trigger this becomes an ``error`` event with :attr:`code`
    ``connection_unreadable``: the task resumes on the worker, which read the connection when it submitted,
    and waits for the generation there instead of losing it.
    """

    CODE = "connection_unreadable"

    def __init__(self, conn_id: str, reason: str) -> None:
        self.conn_id = conn_id
        super().__init__(
            f"Cannot read connection {conn_id!r} here: {reason}. Define it where this process can read "
            "it (the metadata DB, an AIRFLOW_CONN_* variable of this process, the secrets backend)",
            code=self.CODE,
        )


class BillingJournalUnreadableError(ImageGenerationError, AirflowFailException):
    """
    The billing journal an earlier try left in the task state store cannot be read (edited, or written by
    something else). It may name a request that was paid for: nothing is sent, and Airflow does not retry.
    Someone who accepts paying again deletes the task state key ``imggen_billing`` (REST API or CLI).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"The billing journal in the task state store (key imggen_billing) is unreadable: {reason}. "
            "An earlier try may have paid for this request: nothing was sent. Delete the key to accept "
            "paying again"
        )


class ImageGenerationUndeliveredError(ImageGenerationError, AirflowFailException):
    """
    Images were generated and billed, but could not be delivered (written below ``output_path``). Not
    retried: the retry would pay again, and the bytes the service answered with are gone.
    """


class ImageGenerationBudgetExceededError(ImageGenerationError, AirflowFailException):
    """
    A send would exceed a budget (operator ``budget``, connection extra ``budget``): refused before
    anything left, nothing billed. Not retried: a retry would be refused again until the budget's period ends
    or its limit is raised.

    :param scope: ``dag_run``, ``dag_per_day`` or ``connection_per_day``
    :param limit: the budget's limit, in ``unit`` (``images``, ``CNY``, ``USD``)
    :param spent: what was spent in the budget's period
    :param reserved: what sends in flight have set aside
    :param asked: what this send asked for
    """

    def __init__(
        self,
        message: str,
        *,
        scope: str,
        limit: Decimal,
        unit: str,
        spent: Decimal,
        reserved: Decimal,
        asked: Decimal,
    ) -> None:
        super().__init__(message)
        self.scope, self.limit, self.unit = scope, limit, unit
        self.spent, self.reserved, self.asked = spent, reserved, asked
