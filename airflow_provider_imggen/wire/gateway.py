"""
The OpenAI-compatible gateway: ``POST /v1/images/generations`` (the seed document, api-notes §1 and §7),
its body in either dialect, and its answer read without trusting it. Faces ``emulator/gateway.py``.
"""

from __future__ import annotations

import base64
import binascii
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
    MISSING_FROM_ANSWER,
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
from airflow_provider_imggen.wire.native import native_parameters

if TYPE_CHECKING:
    from airflow_provider_imggen.request import GenerationRequest

PATH = "/v1/images/generations"


def request_body(request: GenerationRequest, dialect: str = "openai") -> dict[str, Any]:
    """
    The JSON body of ``POST /v1/images/generations``.

    ``dialect`` ``openai``: every field at the top level (the seed document). ``nested``: also the whole
    of DashScope's ``parameters`` (n, size, seed, prompt_extend, watermark) and ``input`` (prompt,
    negative_prompt), for the relays that forward seed, negative prompt and prompt extension only there.
    Whole, because the most used relay (new-api, api-notes §7) *replaces* its own parameters and input
    with these objects: a partial ``parameters`` lost ``n`` and ``size`` (a Wan model then billed its
    default 4 images) and an ``input`` with only the negative prompt lost the prompt.
    """
    body: dict[str, Any] = {"model": request.model, "prompt": request.prompt, "n": request.n}
    if request.size is not None:
        body["size"] = request.size
    body["response_format"] = request.response_format
    if dialect == "nested":
        text_input: dict[str, Any] = {"prompt": request.prompt}
        if request.negative_prompt is not None:
            text_input["negative_prompt"] = request.negative_prompt
        body["input"] = text_input
        body["parameters"] = native_parameters(request, with_extra_body=False)
        body.update(request.extra_body)
        return body
    if request.negative_prompt is not None:
        body["negative_prompt"] = request.negative_prompt
    if request.prompt_upsampling is not None:
        body["prompt_upsampling"] = request.prompt_upsampling
    if request.seed is not None:
        # The seed document types seed as a string.
        body["seed"] = str(request.seed)
    if request.watermark is not None:
        body["watermark"] = request.watermark
    body.update(request.extra_body)
    return body


def parse_generation_result(
    body: dict[str, Any], request: GenerationRequest, request_id: str | None
) -> tuple[ImageGenerationResult, list[str]]:
    """
    The result of ``POST /v1/images/generations``, trusting nothing in the answer (it may have been
    billed, so nothing here raises what Airflow would retry: a failure of the parser itself is an
    :class:`ImageGenerationMalformedResponseError` too).

    Usable images are delivered; empty items (``EmptyResult``), unreadable ones (``MalformedItem``: a
    result URL no parser accepts among them) and images asked for that the answer does not carry
    (``MissingFromAnswer``: a relay dropped them, perhaps after they were billed) are listed in
    ``failed_images``; items beyond the ``n`` asked for are delivered too, with a warning (a relay that
    drops ``n`` bills the model's default count, see :func:`~airflow_provider_imggen.wire.answers.
    extra_images`); an unusable ``created`` is replaced by the local time. Returns the result and notes
    for the log (never API content).

    :raises ImageGenerationMalformedResponseError: no image list, not a single usable image, or an answer
        the parser failed on
    """
    try:
        return _parse_generation_result(body, request, request_id)
    except ImageGenerationAPIError:
        raise
    except Exception as error:  # a parser bug, or an answer deeper than Python recurses: billed all the same
        raise guarded_failure(error, request, request_id, "an image generation") from None


def _parse_generation_result(
    body: dict[str, Any], request: GenerationRequest, request_id: str | None
) -> tuple[ImageGenerationResult, list[str]]:
    notes: list[str] = []
    warnings: list[str] = []
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
    data, extra = extra_images(data, request.n)
    if extra is not None:
        notes.append(extra)
        warnings.append(extra)
    images, failed = parse_items(data, _parse_item)
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
        raise no_usable_image(request, request_id, failed, f": {codes}")
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
            parameters=request_body(request),
            failed_images=tuple(failed),
            warnings=tuple(warnings),
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
    problem = url_problem(url, "url")
    if problem is not None:
        return None, FailedImage(index, MALFORMED_ITEM, problem)
    assert isinstance(url, str)
    return GeneratedImage(index=index, url=url, revised_prompt=revised, url_expires_at=expiry_of(url)), None


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
    It reads a billed answer whose images are already parsed: it never raises (a failure of its own is
    said in the warning).
    """
    try:
        return _gateway_ignored_fields(body, request, result, dialect)
    except Exception as error:  # never lose the paid images over a check
        return (
            f"Could not check whether the gateway forwarded the seed and negative_prompt "
            f"({type(error).__name__} reading the answer)"
        )


def _gateway_ignored_fields(
    body: dict[str, Any], request: GenerationRequest, result: ImageGenerationResult, dialect: str
) -> str | None:
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
