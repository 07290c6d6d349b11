"""
What a generation produced, as the provider hands it on: images, failed images, tasks and their states.
No I/O and no parsing here: the wire modules (:mod:`airflow_provider_imggen.wire`) build these from the
answers, trusting nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from airflow_provider_imggen.exceptions import ImageGenerationTaskFailedError
from airflow_provider_imggen.polling import TASK_TERMINAL_STATUSES
from airflow_provider_imggen.utils import mask_url

# FailedImage codes of the gateway path: a relay's empty item (the image failed upstream), an item of the
# wrong shape (a URL that is not a string, base64 that does not decode...).
EMPTY_RESULT = "EmptyResult"


MALFORMED_ITEM = "MalformedItem"


# An image asked for (and maybe billed) that the answer does not carry at all: the main relay, fetching each
# result for b64_json, silently drops an item it could not fetch (api-notes §7).
MISSING_FROM_ANSWER = "MissingFromAnswer"


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
class FailedImage:
    """
    One image that failed while others succeeded: in a native task (a per-image content check, say), or
    an item of a gateway's answer that was empty (``EmptyResult``) or unreadable (``MalformedItem``).

    :param index: position in the task's results or the answer's ``data``
    :param code: the API's error code for this image, or ``EmptyResult`` / ``MalformedItem``
    :param message: the API's message for this image, or what was wrong with the item
    """

    index: int
    code: str | None
    message: str


@dataclass(frozen=True)
class ImageGenerationResult:
    """
    The outcome of one generation request.

    :param created: the API's creation time (unix seconds); for a native task, or when the API's value is
        unusable, the local time the answer was read
    :param images: the generated images, in response order
    :param usage: the API's usage block, as sent
    :param request_id: the API's request id (``x-request-id``), for support tickets
    :param model: the model that generated the images
    :param parameters: the effective request parameters (never the key)
    :param failed_images: images that failed while the others succeeded (billed or not: see the codes)
    :param warnings: what the answer showed that the user must know (a gateway that ignored the seed)
    """

    created: int
    images: tuple[GeneratedImage, ...]
    usage: dict[str, Any]
    request_id: str | None
    model: str
    parameters: dict[str, Any]
    failed_images: tuple[FailedImage, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def created_at(self) -> datetime:
        return datetime.fromtimestamp(self.created, tz=UTC)


@dataclass(frozen=True)
class SubmittedTask:
    """
    A task the native API accepted (and will bill): keep ``generation_task_id`` to reconnect to it.

    :param generation_task_id: the API's task id (valid for 24 h)
    :param task_status: its status when submitted (``PENDING``)
    :param request_id: the submission's request id
    :param model: the model
    :param parameters: the effective request, flattened: model, prompt, negative_prompt, size, n, seed...
    """

    generation_task_id: str
    task_status: str
    request_id: str | None
    model: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ListedTask:
    """
    One entry of the native task list (``GET /api/v1/tasks``).

    :param generation_task_id: the API's task id
    :param status: its status
    :param model: the model name, when listed
    :param created_at: when the task was created (``gmt_create``), UTC
    :param request_id: the request id of the submission that created it
    """

    generation_task_id: str
    status: str | None
    model: str | None
    created_at: datetime | None
    request_id: str | None


@dataclass(frozen=True)
class TaskState:
    """
    What ``GET /api/v1/tasks/{task_id}`` says about a native task.

    :param generation_task_id: the API's task id
    :param status: one of :data:`~airflow_provider_imggen.polling.TASK_STATUSES`
    :param images: the successful images (``index`` is the position in the task's results)
    :param failed_images: the images that failed in a task that still SUCCEEDED
    :param usage: the usage block (``image_count`` counts successes only)
    :param request_id: the status query's request id
    :param code: the API's error code of a FAILED task
    :param message: the API's message of a FAILED task (key redacted)
    :param task_metrics: ``{TOTAL, SUCCEEDED, FAILED}``
    :param submit_time: the API's submission time, verbatim (its time zone is not stated)
    :param scheduled_time: when the service started running it, verbatim (same zone as ``submit_time``)
    :param end_time: the API's end time, verbatim
    :param model: the model, when the answer names it (DashScope's does not)
    :param prompt: the prompt as submitted (the results' ``orig_prompt``), when the answer has results
    """

    generation_task_id: str
    status: str
    images: tuple[GeneratedImage, ...] = ()
    failed_images: tuple[FailedImage, ...] = ()
    usage: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    code: str | None = None
    message: str | None = None
    task_metrics: dict[str, Any] = field(default_factory=dict)
    submit_time: str | None = None
    scheduled_time: str | None = None
    end_time: str | None = None
    model: str | None = None
    prompt: str | None = None

    @property
    def run_seconds(self) -> float | None:
        """How long the service ran it (``end_time`` - ``scheduled_time``, or ``submit_time``), if told."""
        from datetime import datetime

        start = self.scheduled_time or self.submit_time
        if start is None or self.end_time is None:
            return None
        try:
            seconds = (datetime.fromisoformat(self.end_time) - datetime.fromisoformat(start)).total_seconds()
        except (TypeError, ValueError):
            return None
        # Both times are the service's own clock and zone; a negative or absurd span is not a duration.
        return seconds if 0 <= seconds < 86400 else None

    @property
    def is_terminal(self) -> bool:
        """SUCCEEDED, FAILED, CANCELED or UNKNOWN: polling again will not change it."""
        return self.status in TASK_TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def raise_for_status(self) -> None:
        """
        Raise :class:`ImageGenerationTaskFailedError` for a FAILED, CANCELED or UNKNOWN task, or a
        SUCCEEDED one without a single image; do nothing otherwise (including while it is not terminal).
        """
        if self.status == "SUCCEEDED":
            if self.images:
                return
            first = self.failed_images[0] if self.failed_images else None
            message = f"all {len(self.failed_images)} image(s) failed" + (
                f"; image {first.index}: {first.message}" if first else ""
            )
            code = first.code if first else None
        elif self.status == "FAILED":
            message, code = self.message or "the task failed", self.code
        elif self.status == "CANCELED":
            message, code = self.message or "the task was canceled", self.code
        elif self.status == "UNKNOWN":
            message = "no such task, or it expired (task ids live 24 h)"
            code = self.code
        else:
            return
        raise ImageGenerationTaskFailedError(
            message,
            generation_task_id=self.generation_task_id,
            task_status=self.status,
            code=code,
            request_id=self.request_id,
        )

    def to_result(
        self, *, model: str | None = None, parameters: Mapping[str, Any] | None = None
    ) -> ImageGenerationResult:
        """
        The :class:`ImageGenerationResult` the synchronous path returns, from a SUCCEEDED task.

        :param model: the model (the status query does not name it); defaults to :attr:`model`
        :param parameters: the effective request parameters, e.g. :attr:`SubmittedTask.parameters`
        """
        return ImageGenerationResult(
            created=int(time.time()),
            images=self.images,
            usage=dict(self.usage),
            request_id=self.request_id,
            model=model or self.model or "",
            parameters=dict(parameters or {}),
            failed_images=self.failed_images,
        )
