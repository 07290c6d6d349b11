"""
The XCom metadata of one generation, one shape for every path that produces it.

``ImageGenerationOperator`` (both API styles, sync or deferred) and ``ImageGenerationTaskSensor`` build it
here, so ``ImageGenerationToS3Operator`` and any downstream task read the same keys whoever generated the
images. The records' shapes live in :mod:`~airflow_provider_imggen.records`. Stdlib only at import time: DAG
files import the modules that import this one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ResultUrlSealError,
)
from airflow_provider_imggen.prices import billed_image_count, cost_record, price_for
from airflow_provider_imggen.records import (
    REQUEST_FIELDS,
    FailedImageRecord,
    GenerationRecord,
    ImageRecord,
)
from airflow_provider_imggen.request import MAX_SEED
from airflow_provider_imggen.sealed_urls import NO_KEY_HELP, register_secrets, seal
from airflow_provider_imggen.utils import mask_url

if TYPE_CHECKING:
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook, ImageGenerationHook
    from airflow_provider_imggen.prices import Price
    from airflow_provider_imggen.request import GenerationRequest
    from airflow_provider_imggen.results import ImageGenerationResult, TaskState


def generation_metadata(
    result: ImageGenerationResult,
    recorded: Mapping[str, Any],
    *,
    response_format: str = "url",
    files: Mapping[int, Mapping[str, Any]] | None = None,
    generation_task_id: str | None = None,
    task_status: str | None = None,
    price: Price | None = None,
) -> dict[str, Any]:
    """
    The JSON-serialisable dict a generation pushes to XCom: a :class:`~airflow_provider_imggen.records.
    GenerationRecord`'s, with parameters, usage and one :class:`~airflow_provider_imggen.records.
    ImageRecord` per image.

    Image bytes never appear, nor usable signed URLs: an image is its ``url`` with every query value masked
    and ``url_sealed``, the URL encrypted with Airflow's Fernet key (:mod:`~airflow_provider_imggen.
    sealed_urls`), or, when its bytes were written to storage, its ``location``, ``bytes`` and ``sha256``
    (``files``, keyed by image index). Values the caller does not know (a sensor only knows a task id) are
    ``None``.

    :param result: the API's answer
    :param recorded: the request's recorded parameters (:func:`request_fields`; what a caller does not
        know is left out): prompt, negative prompt, size as sent (None: the service's default), n, the seed
        of image 0 (image ``i`` used ``seed + i``), prompt_upsampling
    :param response_format: ``url`` or ``b64_json``
    :param files: per image index, where its bytes were written: ``{location, bytes, sha256}``
    :param generation_task_id: the native API's task id (``None`` for the OpenAI-compatible API, which
        has no task). Named so it is never mistaken for the Airflow task's ``task_id``
    :param task_status: the task's status when the metadata was built (``SUCCEEDED``; ``PENDING`` or
        ``RUNNING`` when the operator submitted without waiting)
    :param price: the model's price per image on the connection (:func:`~airflow_provider_imggen.prices.
        price_for`), None when unknown: the ``cost`` then counts images only
    :raises ResultUrlSealError: a gateway result URL and no Fernet key to seal it with
    """
    fields: dict[str, Any] = {name: recorded.get(name) for name in REQUEST_FIELDS if name != "model"}
    fields["input_images"] = tuple(fields["input_images"] or ())
    seed = fields["seed"]
    images = []
    for image in result.images:
        record = ImageRecord(
            index=image.index,
            seed=None if seed is None else (seed + image.index) % (MAX_SEED + 1),
            url_expires_at=image.url_expires_at.isoformat() if image.url_expires_at else None,
            revised_prompt=image.revised_prompt,
        )
        if image.url:
            record = _with_url(record, image.url, generation_task_id=generation_task_id)
        if files and image.index in files:
            written = files[image.index]
            record = dataclasses.replace(
                record,
                location=written.get("location"),
                bytes=written.get("bytes"),
                sha256=written.get("sha256"),
            )
        images.append(record)
    pending = task_status in ("PENDING", "RUNNING")
    billed = None if pending else billed_image_count(result.usage, len(result.images), fields["n"])
    return GenerationRecord(
        model=result.model or None,  # a task status does not name its model
        **fields,
        response_format=response_format,
        created=result.created,
        created_at=result.created_at.isoformat(),
        request_id=result.request_id,
        usage=dict(result.usage),
        images=tuple(images),
        # A native task can succeed with some images failed (a per-image content check): the others are
        # delivered, these are reported.
        failed_images=tuple(
            FailedImageRecord(index=failed.index, code=failed.code, message=failed.message)
            for failed in result.failed_images
        ),
        generation_task_id=generation_task_id,
        task_status=task_status,
        warnings=result.warnings,
        cost=cost_record(price, asked=fields["n"], billed_images=billed),
    ).to_dict()


def _with_url(record: ImageRecord, url: str, *, generation_task_id: str | None) -> ImageRecord:
    """
    The record with its result URL masked for display and sealed for the transfer (see :mod:`sealed_urls`).

    The URL's secrets are registered with the secrets masker first, so no later log line of this task shows
    them. Without a Fernet key a native task's URL is left unsealed (the transfer reads the task again);
    a gateway URL cannot be read again, and the operator refused to generate before anything was billed.
    """
    register_secrets(url)
    sealed = seal(url)
    if sealed is None and generation_task_id is None:
        raise ResultUrlSealError(
            f"The result URL of image {record.index} cannot be put in XCom: it is a credential, shown only "
            f"masked, and no Fernet key is configured to seal it for the transfer; {NO_KEY_HELP}"
        )
    return dataclasses.replace(record, url=mask_url(url), url_sealed=sealed)


def request_fields(request: GenerationRequest) -> dict[str, Any]:
    """
    What a generation record copies from the request (:data:`~airflow_provider_imggen.records.
    REQUEST_FIELDS`): the worker and the triggerer pass exactly these to :func:`task_metadata`.
    """
    fields = {name: getattr(request, name) for name in REQUEST_FIELDS if name != "input_images"}
    if request.images:  # a text-to-image request's fields stay what they were (a trigger's kwargs among them)
        fields["input_images"] = [image.record() for image in request.images]
    return fields


def task_metadata(
    hook: ImageGenerationHook | ImageGenerationAsyncHook,
    state: TaskState,
    recorded: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """
    The XCom metadata of a finished native task; what the caller knows of the request (``recorded``,
    :func:`request_fields`) fills the rest.

    The one builder of a native task's XCom: the worker resuming a deferred task, the polling worker, the
    sensor, and the trigger ending a task in the triggerer (``end_from_trigger``) all call it. It makes no
    request (``hook`` only logs), but it may block briefly: Fernet encryption, the secrets masker.

    Raises :class:`ImageGenerationTaskFailedError` (no Airflow retry) for a FAILED, CANCELED or UNKNOWN
    task and for one whose every image failed. Images that failed in a task that succeeded are logged one
    by one and listed under ``failed_images``; the others are delivered.
    """
    if not state.is_terminal:
        raise ImageGenerationAPIError(
            f"Task {state.generation_task_id} is still {state.status}: it has no results yet"
        )
    known = dict(recorded or {})
    result = hook.result_from_task(state, model=known.get("model"))
    if known.get("n") is None and isinstance(state.task_metrics.get("TOTAL"), int):
        known["n"] = state.task_metrics["TOTAL"]
    if known.get("prompt") is None:
        known["prompt"] = state.prompt
    return generation_metadata(
        result,
        known,
        generation_task_id=state.generation_task_id,
        task_status=state.status,
        price=price_for(hook.settings, known.get("model"), known.get("prompt_upsampling")),
    )
