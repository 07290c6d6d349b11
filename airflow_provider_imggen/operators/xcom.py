"""The generation task's XCom, from its request and the API's result (``metadata.generation_metadata``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.metadata import generation_metadata, request_fields

if TYPE_CHECKING:
    from airflow_provider_imggen.prices import Price
    from airflow_provider_imggen.request import GenerationRequest
    from airflow_provider_imggen.results import ImageGenerationResult


def generation_xcom(
    result: ImageGenerationResult,
    request: GenerationRequest,
    files: dict[int, dict[str, Any]],
    *,
    generation_task_id: str | None = None,
    task_status: str | None = None,
    price: Price | None = None,
) -> dict[str, Any]:
    """
    The XCom of a generation; ``files``: where ``b64_json`` images were written, by index; ``price``: the
    model's price per image on the connection (:func:`~airflow_provider_imggen.prices.price_for`).
    """
    return generation_metadata(
        result,
        request_fields(request),
        response_format=request.response_format,
        files=files,
        generation_task_id=generation_task_id,
        task_status=task_status,
        price=price,
    )


def submitted_xcom(
    request: GenerationRequest, generation_task_id: str, status: str, log: Any, *, price: Price | None = None
) -> dict[str, Any]:
    """The XCom of a native task submitted without waiting: its id and the request, no images yet."""
    from airflow_provider_imggen.results import ImageGenerationResult
    from airflow_provider_imggen.wire.native import submission_body

    log.info(
        "Not waiting for task %s (%s): wait for it with ImageGenerationTaskSensor", generation_task_id, status
    )

    result = ImageGenerationResult(
        created=int(time.time()),
        images=(),
        usage={},
        request_id=None,
        model=request.model,
        parameters=submission_body(request.for_record()),
    )
    return generation_xcom(
        result, request, {}, generation_task_id=generation_task_id, task_status=status, price=price
    )


def delivered_again(delivered: dict[str, Any], output_path: str | None) -> dict[str, Any] | None:
    """
    An XCom an earlier try recorded in the billing journal, if it still reads as one this operator would
    push: the task state store can be edited, so it is checked like any XCom. Its images must carry a
    sealed URL or sit below ``output_path``; None otherwise (the caller then refuses to pay again).
    """
    from airflow_provider_imggen.exceptions import ImageGenerationValidationError
    from airflow_provider_imggen.records import GenerationRecord

    try:
        record = GenerationRecord.from_dict(delivered, where="the billing journal's delivery")
    except ImageGenerationValidationError:
        return None
    below = output_path if output_path is None or "://" in output_path else f"file://{output_path}"
    for image in record.images:
        if image.location is not None:
            if below is None or not image.location.startswith(below.rstrip("/") + "/"):
                return None
        elif not image.url_sealed:
            return None
    return record.to_dict() if record.images else None
