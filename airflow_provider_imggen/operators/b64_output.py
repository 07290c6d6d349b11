"""
``b64_json`` output: the decoded images written below ``output_path``, their locations for the XCom.

XCom never carries image bytes: each image goes to ``<output_path>/<dag_id>/<run_id>/<task_id>/
[<map_index>-]<index>.png``, unique per task instance and image, and the XCom records where it went.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_imggen.billing_journal import Attempt, BillingJournal
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationResult
    from airflow_provider_imggen.prices import Price
    from airflow_provider_imggen.request import GenerationRequest


def deliver_b64(
    result: ImageGenerationResult,
    request: GenerationRequest,
    output_path: str | None,
    ti: Any,
    journal: BillingJournal,
    attempt: Attempt | None,
    log: Any,
    *,
    price: Price | None = None,
) -> dict[str, Any]:
    """
    The XCom of a ``b64_json`` answer, its images written below ``output_path`` first. The images are
    paid for: a failed write is recorded in the journal and fails the task without an Airflow retry (a
    retry would pay again; the bytes are gone).
    """
    from airflow_provider_imggen.exceptions import ImageGenerationUndeliveredError
    from airflow_provider_imggen.operators.xcom import generation_xcom

    try:
        files = write_images(result, output_path, ti, log)
    except Exception as error:
        reason = f"writing them below output_path failed ({type(error).__name__}: {error})"
        if attempt is not None:
            journal.record_outcome(attempt, "undelivered", reason=reason[:2000])
        raise ImageGenerationUndeliveredError(
            f"{len(result.images)} image(s) of {result.model} were generated and billed (request id "
            f"{result.request_id}), but {reason}: not generated again"
        ) from error
    xcom = generation_xcom(result, request, files, price=price)
    if attempt is not None:
        journal.record_outcome(attempt, "answered", delivered=xcom)
    return xcom


def write_images(
    result: ImageGenerationResult, output_path: str | None, ti: Any, log: Any
) -> dict[int, dict[str, Any]]:
    """The images that came back as bytes, written out: ``{index: {location, bytes, sha256}}``."""
    if output_path is None or ti is None:
        return {}
    return {
        image.index: write_image(image.data, image.index, output_path, ti, log)
        for image in result.images
        if image.data is not None
    }


def write_image(data: bytes, index: int, output_path: str, ti: Any, log: Any) -> dict[str, Any]:
    """Write one decoded image below ``output_path``; the path is unique per task instance and image."""
    from airflow.sdk import ObjectStoragePath

    from airflow_provider_imggen import crash_points

    crash_points.reach("during_result_write")
    name = f"{ti.map_index}-{index}.png" if ti.map_index is not None and ti.map_index >= 0 else f"{index}.png"
    if "://" not in output_path:
        output_path = f"file://{output_path}"
    path = ObjectStoragePath(output_path) / _safe(ti.dag_id) / _safe(ti.run_id) / _safe(ti.task_id) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    log.info("Wrote image %d (%d bytes) to %s", index, len(data), path)
    return {"location": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _safe(part: str) -> str:
    """A path segment from a dag, run or task id (run ids contain ':' and '+')."""
    return "".join(char if char.isalnum() or char in "-_." else "_" for char in part)
