"""
``b64_json`` output: the decoded images written below ``output_path``, their locations for the XCom.

XCom never carries image bytes: each image goes to ``<output_path>/<dag_id>/<run_id>/<task_id>/
[<map_index>-]<index>.png``, unique per task instance and image, and the XCom records where it went.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationResult


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
