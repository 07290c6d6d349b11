"""
DashScope's synchronous endpoint, ``POST /api/v1/services/aigc/multimodal-generation/generation`` (the
qwen-image-max and qwen-image-2.x families, and where new models live): its body, and its answer read
without trusting it. Faces ``emulator/multimodal.py``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import ImageGenerationMalformedResponseError, billed_note
from airflow_provider_imggen.results import (
    EMPTY_RESULT,
    MALFORMED_ITEM,
    FailedImage,
    GeneratedImage,
    ImageGenerationResult,
)
from airflow_provider_imggen.utils import url_expiry
from airflow_provider_imggen.wire.errors import no_usable_image
from airflow_provider_imggen.wire.native import flatten_native_request, native_parameters

if TYPE_CHECKING:
    from airflow_provider_imggen.request import GenerationRequest

PATH = "/api/v1/services/aigc/multimodal-generation/generation"


def request_body(request: GenerationRequest) -> dict[str, Any]:
    """The prompt as one user message, ``negative_prompt`` among the ``parameters``."""
    parameters = native_parameters(request)
    if request.negative_prompt is not None:
        parameters["negative_prompt"] = request.negative_prompt
    return {
        "model": request.model,
        "input": {"messages": [{"role": "user", "content": [{"text": request.prompt}]}]},
        "parameters": parameters,
    }


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
        raise no_usable_image(request, request_id, failed, "")
    usage = body.get("usage")
    return (
        ImageGenerationResult(
            created=int(time.time()),
            images=tuple(images),
            usage=usage if isinstance(usage, dict) else {},
            request_id=request_id,
            model=request.model,
            parameters=flatten_native_request(request_body(request)),
            failed_images=tuple(failed),
        ),
        notes,
    )
