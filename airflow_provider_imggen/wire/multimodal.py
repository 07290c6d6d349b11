"""
DashScope's synchronous endpoint, ``POST /api/v1/services/aigc/multimodal-generation/generation`` (the
qwen-image-max and qwen-image-2.x families, the editing models qwen-image-edit*, wan2.6-image and
wan2.7-image, and where new models live): its body, and its answer read without trusting it. Faces
``emulator/multimodal.py``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import (
    ImageGenerationAPIError,
    ImageGenerationMalformedResponseError,
    billed_note,
)
from airflow_provider_imggen.results import (
    EMPTY_RESULT,
    MALFORMED_ITEM,
    FailedImage,
    GeneratedImage,
    ImageGenerationResult,
)
from airflow_provider_imggen.wire.answers import (
    expiry_of,
    extra_images,
    guarded_failure,
    parse_items,
    url_problem,
)
from airflow_provider_imggen.wire.errors import no_usable_image
from airflow_provider_imggen.wire.native import flatten_native_request, native_parameters, wire_reference

if TYPE_CHECKING:
    from airflow_provider_imggen.request import GenerationRequest

PATH = "/api/v1/services/aigc/multimodal-generation/generation"


def request_body(request: GenerationRequest) -> dict[str, Any]:
    """
    One user message: the input images in order (``{"image": ...}`` items, the editing models), then the
    prompt as its one ``text`` item; ``negative_prompt`` among the ``parameters``.
    """
    parameters = native_parameters(request)
    if request.negative_prompt is not None:
        parameters["negative_prompt"] = request.negative_prompt
    content: list[dict[str, str]] = [{"image": wire_reference(image)} for image in request.images]
    content.append({"text": request.prompt})
    return {
        "model": request.model,
        "input": {"messages": [{"role": "user", "content": content}]},
        "parameters": parameters,
    }


def parse_multimodal_result(
    body: dict[str, Any], request: GenerationRequest, request_id: str | None
) -> tuple[ImageGenerationResult, list[str]]:
    """
    The result of DashScope's synchronous ``multimodal-generation/generation``: the images are the
    ``{"image": url}`` items of ``output.choices[].message.content``. Trusts nothing: the answer was
    billed, so nothing here raises what Airflow would retry (a failure of the parser itself is an
    :class:`ImageGenerationMalformedResponseError` too); usable images are delivered, others listed (a
    result URL no parser accepts among them), items beyond ``n`` delivered with a warning.

    :raises ImageGenerationMalformedResponseError: no choices, not a single usable image, or an answer
        the parser failed on
    """
    try:
        return _parse_multimodal_result(body, request, request_id)
    except ImageGenerationAPIError:
        raise
    except Exception as error:  # a parser bug, or an answer deeper than Python recurses: billed all the same
        raise guarded_failure(error, request, request_id, "a synchronous generation") from None


def _parse_multimodal_result(
    body: dict[str, Any], request: GenerationRequest, request_id: str | None
) -> tuple[ImageGenerationResult, list[str]]:
    notes: list[str] = []
    warnings: list[str] = []
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
    items, extra = extra_images(items, request.n)
    if extra is not None:
        notes.append(extra)
        warnings.append(extra)
    images, failed = parse_items(items, _parse_item)
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
            parameters=flatten_native_request(request_body(request.for_record())),
            failed_images=tuple(failed),
            warnings=tuple(warnings),
        ),
        notes,
    )


def _parse_item(index: int, item: object) -> tuple[GeneratedImage | None, FailedImage | None]:
    """One image item of the content: an image, or why it is not one."""
    if not isinstance(item, dict):
        return None, FailedImage(index, MALFORMED_ITEM, f"the item is a {type(item).__name__}, not an object")
    url = item.get("image")
    if not url:
        return None, FailedImage(index, EMPTY_RESULT, "the item has no 'image'")
    problem = url_problem(url, "image")
    if problem is not None:
        return None, FailedImage(index, MALFORMED_ITEM, problem)
    assert isinstance(url, str)
    return GeneratedImage(index=index, url=url, url_expires_at=expiry_of(url)), None
