"""
What the APIs answer, decoded without trusting it: the result dataclasses and the parse functions both
hooks share.

Nothing here logs or echoes API content: messages name a field and a type, never a URL or a body.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    ImageGenerationRejectedError,
    ImageGenerationTaskFailedError,
    billed_note,
)
from airflow_provider_imggen.models import TASK_TERMINAL_STATUSES
from airflow_provider_imggen.retry_policy import (
    Failure,
    TransientAPIError,
    classify_error,
    retry_after_seconds,
)
from airflow_provider_imggen.utils import mask_url, redact, url_expiry

if TYPE_CHECKING:
    from airflow_provider_imggen.models import GenerationRequest

__all__ = [
    "EMPTY_RESULT",
    "MALFORMED_ITEM",
    "FailedImage",
    "GeneratedImage",
    "ImageGenerationResult",
    "ListedTask",
    "SubmittedTask",
    "TaskState",
    "decode_response",
    "gateway_ignored_fields",
    "parse_generation_result",
    "parse_multimodal_result",
    "parse_submitted_task",
    "parse_task_list",
    "parse_task_state",
]

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
    :param status: one of :data:`~airflow_provider_imggen.models.TASK_STATUSES`
    :param images: the successful images (``index`` is the position in the task's results)
    :param failed_images: the images that failed in a task that still SUCCEEDED
    :param usage: the usage block (``image_count`` counts successes only)
    :param request_id: the status query's request id
    :param code: the API's error code of a FAILED task
    :param message: the API's message of a FAILED task (key redacted)
    :param task_metrics: ``{TOTAL, SUCCEEDED, FAILED}``
    :param submit_time: the API's submission time, verbatim (its time zone is not stated)
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
    end_time: str | None = None
    model: str | None = None
    prompt: str | None = None

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


# -- decoding -----------------------------------------------------------------------------------------


def decode_response(
    status: int, reason: str | None, headers: Mapping[str, str], text: str, api_key: str
) -> tuple[dict[str, Any], str | None]:
    """
    A response's JSON object and request id, or the exception it stands for (either hook's client).

    Raises for an error status, and for an error body behind HTTP 200 (a gateway quirk). The API key is
    redacted from every message: some APIs echo the key they were sent.

    :raises ImageGenerationRejectedError: an error no retry can fix
    :raises TransientAPIError: an error another attempt may fix, or (``Failure.MALFORMED``) a 2xx answer
        that is not a JSON object; the retry policy decides what to do with it
    """
    request_id = headers.get("x-request-id")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        if status >= 400:
            raise _api_error(status, reason, headers, text, None, None, api_key)
        kind = "is not JSON" if body is None and text.strip() else "is not a JSON object"
        raise TransientAPIError(
            f"The API answered {status} with a body that {kind} ({headers.get('content-type')!r})",
            failure=Failure.MALFORMED,
            status=status,
            request_id=request_id,
        )
    error = _error_fields(body)
    if error is not None or status >= 400:
        raise _api_error(status, reason, headers, text, body, error, api_key)
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
        shown = text[:300].strip() if text else ""
        error = {"message": f"HTTP {status} {reason or ''}".strip() + (f": {shown}" if shown else "")}
    code = str(error["code"]) if error.get("code") is not None else None
    request_id = headers.get("x-request-id") or (body.get("request_id") if isinstance(body, dict) else None)
    if request_id is not None and not isinstance(request_id, str):
        request_id = str(request_id)
    param = str(error["param"]) if error.get("param") is not None else None
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


# -- gateway ------------------------------------------------------------------------------------------


def parse_generation_result(
    body: dict[str, Any], request: GenerationRequest, request_id: str | None
) -> tuple[ImageGenerationResult, list[str]]:
    """
    The result of ``POST /v1/images/generations``, trusting nothing in the answer (it may have been
    billed, so nothing here raises what Airflow would retry).

    Usable images are delivered; empty items (``EmptyResult``), unreadable ones (``MalformedItem``) and
    images asked for that the answer does not carry (``MissingFromAnswer``: a relay dropped them, perhaps
    after they were billed) are listed in ``failed_images``; items beyond the ``n`` asked for are
    ignored; an unusable
    ``created`` is replaced by the local time. Returns the result and notes for the log (never API
    content).

    :raises ImageGenerationMalformedResponseError: no image list, or not a single usable image
    """
    notes: list[str] = []
    data = body.get("data")
    if not isinstance(data, list) or not data:
        raise ImageGenerationMalformedResponseError(
            "The API answered 200 without images (no 'data' list"
            + (f"; 'data' is {type(data).__name__}" if data is not None else "")
            + f"). {billed_note(request.model, request.n)}",
            status=200,
            request_id=request_id,
            model=request.model,
            images_at_risk=request.n,
        )
    if len(data) > request.n:
        notes.append(f"the answer had {len(data)} images for n={request.n}: {len(data) - request.n} ignored")
        data = data[: request.n]
    images: list[GeneratedImage] = []
    failed: list[FailedImage] = []
    for index, item in enumerate(data):
        image, failure = _parse_item(index, item)
        if image is not None:
            images.append(image)
        if failure is not None:
            failed.append(failure)
    if len(data) < request.n:
        notes.append(f"the answer had {len(data)} item(s) for n={request.n}")
        failed.extend(
            FailedImage(
                index,
                MISSING_FROM_ANSWER,
                f"the answer carried {len(data)} item(s) for n={request.n}: this image may have been billed "
                "and dropped on the way (a relay drops an image it could not fetch for b64_json)",
            )
            for index in range(len(data), request.n)
        )
    if not images:
        codes = ", ".join(sorted({failure.code or "" for failure in failed}))
        raise _no_usable_image(request, request_id, failed, f": {codes}")
    created = body.get("created")
    if isinstance(created, bool) or not isinstance(created, int | float) or not 0 < created < 1e11:
        notes.append(f"'created' is unusable ({type(created).__name__}): using the local time")
        created = time.time()
    usage = body.get("usage")
    return (
        ImageGenerationResult(
            created=int(created),
            images=tuple(images),
            usage=usage if isinstance(usage, dict) else {},
            request_id=request_id,
            model=request.model,
            parameters=request.to_openai_body(),
            failed_images=tuple(failed),
        ),
        notes,
    )


def _parse_item(index: int, item: object) -> tuple[GeneratedImage | None, FailedImage | None]:
    """One item of ``data``: an image, or why it is not one."""
    if not isinstance(item, dict):
        return None, FailedImage(index, MALFORMED_ITEM, f"the item is a {type(item).__name__}, not an object")
    url, encoded = item.get("url"), item.get("b64_json")
    if not url and not encoded:
        return None, FailedImage(index, EMPTY_RESULT, "the item has neither 'url' nor 'b64_json'")
    # One relay sends "" (or blanks) when nothing was rewritten: that is no revised prompt.
    revised = item.get("revised_prompt")
    revised = revised if isinstance(revised, str) and revised.strip() else None
    if encoded:
        if not isinstance(encoded, str):
            return None, FailedImage(index, MALFORMED_ITEM, f"'b64_json' is a {type(encoded).__name__}")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None, FailedImage(index, MALFORMED_ITEM, "'b64_json' is not valid base64")
        if not data:
            return None, FailedImage(index, EMPTY_RESULT, "'b64_json' decodes to nothing")
        return GeneratedImage(index=index, data=data, revised_prompt=revised), None
    if not isinstance(url, str):
        return None, FailedImage(index, MALFORMED_ITEM, f"'url' is a {type(url).__name__}, not a string")
    if not url.startswith(("https://", "http://")):
        return None, FailedImage(index, MALFORMED_ITEM, "'url' is not an http(s) URL")
    return GeneratedImage(index=index, url=url, revised_prompt=revised, url_expires_at=url_expiry(url)), None


def gateway_ignored_fields(
    body: dict[str, Any], request: GenerationRequest, result: ImageGenerationResult, dialect: str
) -> str | None:
    """
    What a gateway's answer shows about fields it did not forward, as a warning (None when nothing).

    Relays differ in what they forward: some drop seed, negative_prompt and prompt extension unless nested
    under ``parameters`` / ``input``, others read them only at the top level (api-notes §6). The answer
    never states the seed the service drew, but two signs show such a drop:

    - the answer echoes a seed (some relays pass the upstream one through) other than the one sent;
    - ``prompt_upsampling=False`` was sent, and a rewritten prompt came back: prompt extension ran, so the
      field was dropped, and a relay that drops it drops the seed beside it.

    Without either sign (prompt extension left on, no seed echoed) a drop cannot be seen in the answer.
    """
    signs: list[str] = []
    raw_data = body.get("data")
    data: list[Any] = raw_data if isinstance(raw_data, list) else []
    if request.seed is not None:
        echoed = [
            (index, item.get("seed"))
            for index, item in enumerate(data[: request.n])
            if isinstance(item, dict) and item.get("seed") is not None
        ]
        top = body.get("seed")
        if top is not None:
            echoed.append((0, top))
        for index, seed in echoed:
            if str(seed).strip() != str(request.seed + index):
                signs.append(
                    f"the answer names seed {str(seed)[:20]!r} for image {index}, not {request.seed + index}"
                )
                break
    if request.prompt_upsampling is False and any(
        image.revised_prompt and image.revised_prompt.strip() != request.prompt.strip()
        for image in result.images
    ):
        signs.append("a rewritten prompt came back although prompt_upsampling=False was sent")
    if not signs:
        return None
    other = "nested" if dialect == "openai" else "openai"
    placed = "at the top level" if dialect == "openai" else "under parameters/input"
    other_placed = "under parameters/input" if other == "nested" else "at the top level"
    seed = "" if request.seed is None else f"({request.seed}) "
    return (
        f"The gateway ignored fields sent {placed} ({'; '.join(signs)}): it most likely dropped the seed "
        f"{seed}and negative_prompt with them, so these images cannot be reproduced from the recorded "
        f"seed. Set the connection extra gateway_dialect to {other!r} if the gateway reads DashScope's "
        f"fields {other_placed}"
    )


# -- synchronous multimodal generation (DashScope) --------------------------------------------------------


def parse_multimodal_result(
    body: dict[str, Any], request: GenerationRequest, request_id: str | None
) -> tuple[ImageGenerationResult, list[str]]:
    """
    The result of DashScope's synchronous ``multimodal-generation/generation``: the images are the
    ``{"image": url}`` items of ``output.choices[].message.content``. Trusts nothing: the answer was
    billed, so nothing here raises what Airflow would retry; usable images are delivered, others listed.

    :raises ImageGenerationMalformedResponseError: no choices, or not a single usable image
    """
    notes: list[str] = []
    output = body.get("output")
    choices = output.get("choices") if isinstance(output, dict) else None
    items: list[object] = []
    if isinstance(choices, list):
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, list):
                items.extend(
                    item for item in content if not (isinstance(item, dict) and set(item) == {"text"})
                )
            else:
                items.append(choice)
    if not items:
        raise ImageGenerationMalformedResponseError(
            "The API answered 200 without images (no output.choices[].message.content images). "
            f"{billed_note(request.model, request.n)}",
            status=200,
            request_id=request_id,
            model=request.model,
            images_at_risk=request.n,
        )
    if len(items) > request.n:
        notes.append(
            f"the answer had {len(items)} images for n={request.n}: {len(items) - request.n} ignored"
        )
        items = items[: request.n]
    images: list[GeneratedImage] = []
    failed: list[FailedImage] = []
    for index, item in enumerate(items):
        url = item.get("image") if isinstance(item, dict) else None
        if not isinstance(item, dict):
            failed.append(
                FailedImage(index, MALFORMED_ITEM, f"the item is a {type(item).__name__}, not an object")
            )
        elif not url:
            failed.append(FailedImage(index, EMPTY_RESULT, "the item has no 'image'"))
        elif not isinstance(url, str) or not url.startswith(("https://", "http://")):
            failed.append(FailedImage(index, MALFORMED_ITEM, "'image' is not an http(s) URL"))
        else:
            images.append(GeneratedImage(index=index, url=url, url_expires_at=url_expiry(url)))
    if not images:
        raise _no_usable_image(request, request_id, failed, "")
    usage = body.get("usage")
    return (
        ImageGenerationResult(
            created=int(time.time()),
            images=tuple(images),
            usage=usage if isinstance(usage, dict) else {},
            request_id=request_id,
            model=request.model,
            parameters=flatten_native_request(request.to_multimodal_body()),
            failed_images=tuple(failed),
        ),
        notes,
    )


# -- native task API ------------------------------------------------------------------------------------


def parse_submitted_task(
    body: dict[str, Any], request_id: str | None, native_request: dict[str, Any]
) -> SubmittedTask:
    """
    The task a native submission created, from the API's answer and the body that was sent.

    :raises ImageGenerationMalformedResponseError: no task id in the answer (a task may exist: not sent
        again)
    """
    output = body.get("output")
    task_id = output.get("task_id") if isinstance(output, dict) else None
    if not isinstance(task_id, str) or not task_id.strip() or "/" in task_id:
        model = str(native_request["model"])
        n = native_request.get("parameters", {}).get("n")
        images = n if isinstance(n, int) and not isinstance(n, bool) else 1
        raise ImageGenerationMalformedResponseError(
            "The API accepted the submission but answered without a usable task id; a task may have been "
            f"created. {billed_note(model, images)}",
            status=200,
            request_id=request_id,
            model=model,
            images_at_risk=images,
        )
    assert isinstance(output, dict)
    status = output.get("task_status")
    return SubmittedTask(
        generation_task_id=task_id,
        task_status=status if isinstance(status, str) and status else "PENDING",
        request_id=request_id,
        model=native_request["model"],
        parameters=flatten_native_request(native_request),
    )


def flatten_native_request(native_request: Mapping[str, Any]) -> dict[str, Any]:
    """The native body's model, input and parameters in one dict (what ``SubmittedTask`` records)."""
    return {
        "model": native_request["model"],
        **native_request.get("input", {}),
        **native_request.get("parameters", {}),
    }


def parse_task_state(
    body: dict[str, Any], request_id: str | None, *, generation_task_id: str, api_key: str | None = None
) -> TaskState:
    """
    A :class:`TaskState` from ``GET /api/v1/tasks/{task_id}``'s answer (either hook's client).

    Each result is an image (``url``) or, in a partly failed task, ``{code, message}``. Messages have the
    API key redacted.

    :raises TransientAPIError: (``Failure.MALFORMED``) no ``output.task_status``: a status query is
        idempotent, the hooks ask again
    """
    output = body.get("output")
    if not isinstance(output, dict) or not isinstance(output.get("task_status"), str):
        raise TransientAPIError(
            "The API answered a task query without output.task_status",
            failure=Failure.MALFORMED,
            status=200,
            request_id=request_id,
        )
    images: list[GeneratedImage] = []
    failed: list[FailedImage] = []
    results = output.get("results")
    results = results if isinstance(results, list) else []
    for index, item in enumerate(results):
        item = item if isinstance(item, dict) else {}
        url = item.get("url")
        if isinstance(url, str) and url.startswith(("https://", "http://")):
            # actual_prompt is absent when prompt extension is off (api-notes §6): no revised prompt then.
            actual = item.get("actual_prompt")
            images.append(
                GeneratedImage(
                    index=index,
                    url=url,
                    revised_prompt=actual
                    if isinstance(actual, str) and actual.strip() and actual != item.get("orig_prompt")
                    else None,
                    url_expires_at=url_expiry(url),
                )
            )
        else:
            image_code = item.get("code")
            failed.append(
                FailedImage(
                    index=index,
                    code=None if image_code is None else str(image_code),
                    message=redact(str(item.get("message") or "the API returned no URL for it"), api_key),
                )
            )
    message = output.get("message")
    code = output.get("code")
    usage, metrics = body.get("usage"), output.get("task_metrics")
    listed_id = output.get("task_id")
    return TaskState(
        generation_task_id=listed_id if isinstance(listed_id, str) and listed_id else generation_task_id,
        status=str(output["task_status"]),
        images=tuple(images),
        failed_images=tuple(failed),
        usage=usage if isinstance(usage, dict) else {},
        request_id=request_id,
        code=None if code is None else str(code),
        message=None if message is None else redact(str(message), api_key),
        task_metrics=metrics if isinstance(metrics, dict) else {},
        submit_time=_optional_str(output.get("submit_time")),
        end_time=_optional_str(output.get("end_time")),
        model=_optional_str(output.get("model") or body.get("model")),
        prompt=next(
            (
                item["orig_prompt"]
                for item in results
                if isinstance(item, dict) and isinstance(item.get("orig_prompt"), str)
            ),
            None,
        ),
    )


def parse_task_list(body: dict[str, Any]) -> tuple[list[ListedTask], int | None]:
    """
    The entries of one page of ``GET /api/v1/tasks`` (the DashScope SDK's shape: ``data`` items with
    ``task_id``, ``status``, ``model_name``, ``gmt_create`` in ms, ``request_id``; ``total``), and the
    total count when stated. Entries without a task id are skipped.
    """
    data = body.get("data")
    if data is None and isinstance(body.get("output"), dict):
        data = body["output"].get("data")
    tasks = []
    for item in data if isinstance(data, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("task_id"), str) or not item["task_id"]:
            continue
        created = item.get("gmt_create")
        created_at = None
        if isinstance(created, int | float) and not isinstance(created, bool) and created > 0:
            try:
                created_at = datetime.fromtimestamp(created / 1000, tz=UTC)
            except (OverflowError, OSError, ValueError):
                created_at = None
        tasks.append(
            ListedTask(
                generation_task_id=item["task_id"],
                status=_optional_str(item.get("status") or item.get("task_status")),
                model=_optional_str(item.get("model_name") or item.get("model")),
                created_at=created_at,
                request_id=_optional_str(item.get("request_id")),
            )
        )
    total = body.get("total")
    return tasks, total if isinstance(total, int) and not isinstance(total, bool) else None


def _optional_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _no_usable_image(
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
