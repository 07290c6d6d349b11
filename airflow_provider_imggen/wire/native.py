"""
DashScope's asynchronous task API (api-notes §3, §6, §7): the submission
(``POST /api/v1/services/aigc/text2image/image-synthesis``), the task status (``GET /api/v1/tasks/{id}``),
the task list (``GET /api/v1/tasks``) and cancel; their bodies and parameters, and their answers read
without trusting them. Faces ``emulator/native.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    billed_note,
)
from airflow_provider_imggen.results import (
    MALFORMED_ITEM,
    FailedImage,
    GeneratedImage,
    ListedTask,
    SubmittedTask,
    TaskState,
)
from airflow_provider_imggen.retry_policy import Failure, TransientAPIError
from airflow_provider_imggen.utils import redact
from airflow_provider_imggen.wire.answers import (
    expiry_of,
    unreadable_billed_answer,
    unreadable_item,
    url_problem,
)

if TYPE_CHECKING:
    from airflow_provider_imggen.inputs.references import InputImage
    from airflow_provider_imggen.request import GenerationRequest

SUBMIT_PATH = "/api/v1/services/aigc/text2image/image-synthesis"
# The task API's image-to-image surface (wan2.5-i2i-preview): the same task flow, input.images in the body.
IMAGE2IMAGE_PATH = "/api/v1/services/aigc/image2image/image-synthesis"
TASKS_PATH = "/api/v1/tasks"
ASYNC_HEADER = {"X-DashScope-Async": "enable"}
TASK_LIST_PAGE_SIZE = 100
TASK_LIST_MAX_PAGES = 10
# The task list's start_time / end_time (api-notes §7): YYYYMMDDhhmmss, at most 24 hours apart. Their time
# zone is not stated: callers send UTC and stretch the end by the Beijing offset, so the window holds the
# submission whether the service reads UTC or UTC+8; entries are then filtered on gmt_create (epoch
# milliseconds, no zone to guess).
TASK_LIST_TIME_FORMAT = "%Y%m%d%H%M%S"
TASK_LIST_ZONE_SLACK = timedelta(hours=8)
TASK_LIST_MAX_SPAN = timedelta(hours=24)


def native_parameters(request: GenerationRequest, *, with_extra_body: bool = True) -> dict[str, Any]:
    """
    DashScope's ``parameters`` object. ``n`` is always sent: the Wan V2 default is 4 (4 images billed).
    ``size`` only when set (the service's default otherwise); ``prompt_upsampling`` is ``prompt_extend``.
    """
    parameters: dict[str, Any] = {"n": request.n}
    if request.size is not None:
        parameters["size"] = request.native_size
    if request.seed is not None:
        parameters["seed"] = request.seed
    if request.prompt_upsampling is not None:
        parameters["prompt_extend"] = request.prompt_upsampling
    if request.watermark is not None:
        parameters["watermark"] = request.watermark
    if with_extra_body:
        parameters.update(request.extra_body)
    return parameters


def wire_reference(image: InputImage) -> str:
    """
    What a body carries for an input image: what the worker prepared to send (a URL or a data URI), or,
    in the recorded form of the body (fingerprints, task records), ``sha256:<digest>``.
    """
    if image.wire is not None:
        return image.wire
    return f"sha256:{image.sha256}"


def submit_path(request: GenerationRequest) -> str:
    """
    The task API's submission path for ``request``: its model's surface (text2image, image2image); a model
    the table does not know goes to image2image when it carries input images.
    """
    from airflow_provider_imggen.model_table import spec_of

    spec = spec_of(request.model)
    surface = spec.task_surface if spec is not None else ("image2image" if request.images else "text2image")
    return IMAGE2IMAGE_PATH if surface == "image2image" else SUBMIT_PATH


def submission_body(request: GenerationRequest) -> dict[str, Any]:
    """
    The body of a task submission; ``extra_body`` fields join ``parameters``, input images (the
    image2image surface) are ``input.images``, in order.
    """
    text_input: dict[str, Any] = {"prompt": request.prompt}
    if request.images:
        text_input["images"] = [wire_reference(image) for image in request.images]
    if request.negative_prompt is not None:
        text_input["negative_prompt"] = request.negative_prompt
    return {"model": request.model, "input": text_input, "parameters": native_parameters(request)}


def task_list_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """
    The span to ask the task list for, to find tasks created between ``start`` and ``end`` (UTC): the end
    stretched by the unstated time zone, the whole kept within the list's 24 hours.
    """
    listed_end = end + TASK_LIST_ZONE_SLACK
    return max(start, listed_end - TASK_LIST_MAX_SPAN), listed_end


def task_list_params(
    start_time: datetime, end_time: datetime, model_name: str | None, status: str | None
) -> dict[str, Any]:
    """The query of one task-list read (``page_no`` added per page)."""
    params: dict[str, Any] = {
        "start_time": start_time.astimezone(UTC).strftime(TASK_LIST_TIME_FORMAT),
        "end_time": end_time.astimezone(UTC).strftime(TASK_LIST_TIME_FORMAT),
        "page_size": TASK_LIST_PAGE_SIZE,
    }
    if model_name:
        params["model_name"] = model_name
    if status:
        params["status"] = status
    return params


def parse_submitted_task(
    body: dict[str, Any], request_id: str | None, native_request: dict[str, Any]
) -> SubmittedTask:
    """
    The task a native submission created, from the API's answer and the body that was sent.

    :raises ImageGenerationMalformedResponseError: no task id in the answer, or an answer the parser failed
        on (a task may exist: not sent again)
    """
    try:
        return _parse_submitted_task(body, request_id, native_request)
    except ImageGenerationAPIError:
        raise
    except Exception as error:  # a parser bug, or an answer deeper than Python recurses: billed all the same
        n = native_request.get("parameters", {}).get("n")
        raise unreadable_billed_answer(
            error,
            model=str(native_request.get("model")),
            images=n if isinstance(n, int) and not isinstance(n, bool) else 1,
            request_id=request_id,
            what="a task submission",
        ) from None


def _parse_submitted_task(
    body: dict[str, Any], request_id: str | None, native_request: dict[str, Any]
) -> SubmittedTask:
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

    Each result is an image (``url``) or, in a partly failed task, ``{code, message}``; a result whose URL
    no parser accepts, or that the parser fails on, is a failed image (``MalformedItem``), the others are
    delivered. Messages have the API key redacted.

    :raises TransientAPIError: (``Failure.MALFORMED``) no ``output.task_status``, or an answer the parser
        failed on: a status query is idempotent, the hooks ask again
    """
    try:
        return _parse_task_state(body, request_id, generation_task_id=generation_task_id, api_key=api_key)
    except ImageGenerationAPIError:
        raise
    except Exception as error:  # a parser bug, or an answer deeper than Python recurses
        raise TransientAPIError(
            f"The API answered a task query with a body the provider could not read ({type(error).__name__})",
            failure=Failure.MALFORMED,
            status=200,
            request_id=request_id,
        ) from None


def _parse_task_state(
    body: dict[str, Any], request_id: str | None, *, generation_task_id: str, api_key: str | None
) -> TaskState:
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
    results = results if isinstance(results, list) else _choice_results(output.get("choices"))
    for index, item in enumerate(results):
        try:
            image, failure = _task_result(index, item, api_key)
        except Exception as error:  # one result the parser failed on: the others are delivered
            image, failure = None, unreadable_item(index, error)
        if image is not None:
            images.append(image)
        if failure is not None:
            failed.append(failure)
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
        scheduled_time=_optional_str(output.get("scheduled_time")),
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


def _choice_results(choices: object) -> list[object]:
    """
    The results of a task of the image-generation surface (wan2.6 / wan2.7), whose status answers in the
    synchronous endpoint's shape: each image item of ``choices[].message.content`` as a result, each choice
    that ended in error (``finish_reason`` ``error``, with its code and message) as a failed one.
    """
    if not isinstance(choices, list):
        return []
    results: list[object] = []
    for choice in choices:
        message = choice.get("message") if isinstance(choice, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        failed = isinstance(choice, dict) and choice.get("finish_reason") == "error"
        if isinstance(content, list) and not failed:
            results += [
                {"url": item.get("image")} for item in content if isinstance(item, dict) and "image" in item
            ]
            continue
        # A failed choice: its code, and its message only when it is text (a dict would be printed whole,
        # with any result URL inside it).
        code = choice.get("code") if isinstance(choice, dict) else None
        text = choice.get("message") if isinstance(choice, dict) else None
        results.append({"code": code, "message": text if isinstance(text, str) else None})
    return results


def _task_result(
    index: int, item: object, api_key: str | None
) -> tuple[GeneratedImage | None, FailedImage | None]:
    """One entry of a task's ``results``: an image, or the failed image it reports (or is)."""
    item = item if isinstance(item, dict) else {}
    url = item.get("url")
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        problem = url_problem(url, "url")
        if problem is not None:
            return None, FailedImage(index, MALFORMED_ITEM, problem)
        # actual_prompt is absent when prompt extension is off (api-notes §6): no revised prompt then.
        actual = item.get("actual_prompt")
        revised = (
            actual
            if isinstance(actual, str) and actual.strip() and actual != item.get("orig_prompt")
            else None
        )
        return GeneratedImage(
            index=index, url=url, revised_prompt=revised, url_expires_at=expiry_of(url)
        ), None
    image_code = item.get("code")
    return None, FailedImage(
        index=index,
        code=None if image_code is None else str(image_code),
        message=redact(str(item.get("message") or "the API returned no URL for it"), api_key),
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
