"""
The XCom metadata of one generation, one shape for every path that produces it.

``ImageGenerationOperator`` (both API styles, sync or deferred) and ``ImageGenerationTaskSensor`` build it
here, so ``ImageGenerationToS3Operator`` and any downstream task read the same keys whoever generated the
images. Stdlib only: DAG files import the modules that import this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationTaskFailedError,
    ImageGenerationTaskTimeoutError,
)
from airflow_provider_imggen.models import MAX_SEED

if TYPE_CHECKING:
    from airflow_provider_imggen.hooks.image_generation import (
        ImageGenerationHook,
        ImageGenerationResult,
        TaskState,
    )


def generation_metadata(
    result: ImageGenerationResult,
    *,
    prompt: str | None,
    negative_prompt: str | None = None,
    size: str | None = None,
    n: int | None = None,
    seed: int | None = None,
    response_format: str = "url",
    prompt_upsampling: bool | None = None,
    files: Mapping[int, Mapping[str, Any]] | None = None,
    generation_task_id: str | None = None,
    task_status: str | None = None,
) -> dict[str, Any]:
    """
    The JSON-serialisable dict a generation pushes to XCom: parameters, usage and one entry per image.

    Image bytes never appear: an image is its signed ``url`` or, when its bytes were written to storage,
    its ``location``, ``bytes`` and ``sha256`` (``files``, keyed by image index). Values the caller does not
    know (a sensor only knows a task id) are ``None``.

    :param result: the API's answer
    :param prompt: the prompt as sent
    :param negative_prompt: the negative prompt as sent
    :param size: the size as sent (``WxH``)
    :param n: the number of images asked for
    :param seed: the seed of image 0; image ``i`` used ``seed + i``
    :param response_format: ``url`` or ``b64_json``
    :param prompt_upsampling: whether the API was allowed to rewrite the prompt
    :param files: per image index, where its bytes were written: ``{location, bytes, sha256}``
    :param generation_task_id: the native API's task id (``None`` for the OpenAI-compatible API, which
        has no task). Named so it is never mistaken for the Airflow task's ``task_id``
    :param task_status: the task's status when the metadata was built (``SUCCEEDED``; ``PENDING`` or
        ``RUNNING`` when the operator submitted without waiting)
    """
    images = []
    for image in result.images:
        entry: dict[str, Any] = {
            "index": image.index,
            "seed": None if seed is None else (seed + image.index) % (MAX_SEED + 1),
            "url": image.url,
            "url_expires_at": image.url_expires_at.isoformat() if image.url_expires_at else None,
            "revised_prompt": image.revised_prompt,
            "location": None,
            "bytes": None,
            "sha256": None,
        }
        if files and image.index in files:
            entry.update(files[image.index])
        images.append(entry)
    return {
        "model": result.model or None,  # a task status does not name its model
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "size": size,
        "n": n,
        "seed": seed,
        "response_format": response_format,
        "prompt_upsampling": prompt_upsampling,
        "created": result.created,
        "created_at": result.created_at.isoformat(),
        "request_id": result.request_id,
        "usage": result.usage,
        "images": images,
        # A native task can succeed with some images failed (a per-image content check): the others are
        # delivered, these are reported.
        "failed_images": [
            {"index": failed.index, "code": failed.code, "message": failed.message}
            for failed in result.failed_images
        ],
        "generation_task_id": generation_task_id,
        "task_status": task_status,
    }


def task_metadata(
    hook: ImageGenerationHook,
    state: TaskState,
    *,
    model: str | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    size: str | None = None,
    n: int | None = None,
    seed: int | None = None,
    prompt_upsampling: bool | None = None,
) -> dict[str, Any]:
    """
    The XCom metadata of a finished native task; what the caller knows of the request fills the rest.

    Raises :class:`ImageGenerationTaskFailedError` (no Airflow retry) for a FAILED, CANCELED or UNKNOWN
    task and for one whose every image failed. Images that failed in a task that succeeded are logged one
    by one and listed under ``failed_images``; the others are delivered.
    """
    if not state.is_terminal:
        raise ImageGenerationAPIError(
            f"Task {state.generation_task_id} is still {state.status}: it has no results yet"
        )
    result = hook.result_from_task(state, model=model)
    if n is None and isinstance(state.task_metrics.get("TOTAL"), int):
        n = state.task_metrics["TOTAL"]
    return generation_metadata(
        result,
        prompt=prompt if prompt is not None else state.prompt,
        negative_prompt=negative_prompt,
        size=size,
        n=n,
        seed=seed,
        prompt_upsampling=prompt_upsampling,
        generation_task_id=state.generation_task_id,
        task_status=state.status,
    )


def raise_for_event(event: Mapping[str, Any] | None, *, waited: float | None) -> None:
    """
    Raise for an ``ImageGenerationTaskTrigger`` event that is not ``success``, with the API's message.

    ``failed`` (FAILED, CANCELED, UNKNOWN) is final: :class:`ImageGenerationTaskFailedError`, no Airflow
    retry. ``timeout`` and ``error`` (status reads kept failing) may be retried: the task goes on, and a
    retry that reconnects to it pays nothing more.
    """
    if not isinstance(event, Mapping):
        raise ImageGenerationAPIError(f"The trigger sent no usable event: {event!r}")
    status, generation_task_id = event.get("status"), str(event_generation_task_id(event))
    if status == "success":
        return
    if status == "failed":
        raise ImageGenerationTaskFailedError(
            str(event.get("message") or "the task did not succeed"),
            generation_task_id=generation_task_id,
            task_status=str(event.get("task_status")),
            code=event.get("code"),
        )
    if status == "timeout":
        raise ImageGenerationTaskTimeoutError(
            generation_task_id=generation_task_id, task_status=event.get("task_status"), waited=waited
        )
    if status == "error":
        raise ImageGenerationAPIError(
            f"Gave up reading the status of task {generation_task_id}: {event.get('message')}",
            code=event.get("code"),
        )
    raise ImageGenerationAPIError(f"The trigger sent an event with an unknown status: {status!r}")


def event_generation_task_id(event: Mapping[str, Any]) -> object:
    """The native task id an ``ImageGenerationTaskTrigger`` event names (``task_id`` before the rename)."""
    return event.get("generation_task_id", event.get("task_id"))


def xcom_generation_task_id(metadata: Mapping[str, Any]) -> object:
    """
    The native task id in an operator's XCom metadata.

    XComs pushed before the rename carry it as ``task_id``; read that too, so a DAG run that spans an
    upgrade still finds its task.
    """
    return metadata.get("generation_task_id", metadata.get("task_id"))
