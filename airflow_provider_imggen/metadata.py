"""
The XCom metadata of one generation, one shape for every path that produces it.

``ImageGenerationOperator`` (both API styles, sync or deferred) and ``ImageGenerationTaskSensor`` build it
here, so ``ImageGenerationToS3Operator`` and any downstream task read the same keys whoever generated the
images. Stdlib only: DAG files import the modules that import this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.models import MAX_SEED

if TYPE_CHECKING:
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationResult


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
        "model": result.model,
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
    }
