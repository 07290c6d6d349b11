"""
The request rules of editing (images in as well as out), against the model table of
:mod:`~airflow_provider_imggen.emulator.models`: where a request's input images are (the one user message
of a messages body, or ``input.images``), how many a model takes, and the parameters that depend on them
(sizes following the last input, named sizes, sequential output, ``bbox_list``, ``color_palette``). The
images themselves are fetched and checked by :mod:`~airflow_provider_imggen.emulator.inputs`. Stdlib only.

Derived sizes (no ``size`` given, or a named one such as ``1K``): the last input's aspect ratio at the
model's pixel count, each side a multiple of 16, then brought within the model's bounds (side, pixels,
aspect ratio); the qwen-image 2.0 family keeps the last input's own size when its pixels are within
512*512-2048*2048. Without inputs a named size is square. How the service rounds is unverified.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from airflow_provider_imggen.emulator.errors import invalid
from airflow_provider_imggen.emulator.inputs import Reference
from airflow_provider_imggen.emulator.models import limits_of
from airflow_provider_imggen.emulator.objects import InputImage
from airflow_provider_imggen.emulator.validation import InvalidRequestError

_HEX_COLOR = re.compile(r"^#?[0-9A-Fa-f]{6}$")
_STEP = 16


def message_parts(model: str, given: object) -> tuple[object, list[Reference]]:
    """
    The prompt and the image references of a messages body (``input.messages``): exactly one message, of
    role user, whose content holds ``{"image": ...}`` items (in order) and exactly one ``{"text": ...}``.
    No messages at all gives no prompt (refused as a missing prompt).
    """
    messages = given.get("messages") if isinstance(given, dict) else None
    if not isinstance(messages, list) or not messages:
        return None, []
    if len(messages) != 1:
        raise invalid("input.messages must hold exactly one message (single turn only).", "messages", model)
    message = messages[0]
    if not isinstance(message, dict) or message.get("role") != "user":
        raise invalid("input.messages[0] must be an object with role 'user'.", "messages", model)
    content = message.get("content")
    if not isinstance(content, list):
        raise invalid("input.messages[0].content must be a list of image and text items.", "content", model)
    texts: list[object] = []
    images: list[Reference] = []
    for index, item in enumerate(content):
        where = f"input.messages[0].content[{index}]"
        kinds = [key for key in ("text", "image") if isinstance(item, dict) and key in item]
        if len(kinds) != 1:
            raise invalid(f"{where} must be one {{'text': ...}} or {{'image': ...}} item.", "content", model)
        if kinds == ["text"]:
            texts.append(item["text"])
        else:
            images.append((f"{where}.image", item["image"]))
    if len(texts) > 1:
        raise invalid(f"The message must hold exactly one text item, got {len(texts)}.", "content", model)
    return (texts[0] if texts else None), images


def parameters_of(model: str, body: dict[str, Any]) -> dict[str, Any]:
    parameters = body.get("parameters")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise invalid("parameters must be an object when given.", None, model)
    return parameters


def count_range(model: str, parameters: dict[str, Any]) -> tuple[int, int]:
    """How many input images ``model`` takes with these parameters (wan2.6-image interleaved: 0-1)."""
    limits = limits_of(model)
    if limits["interleave"] and parameters.get("enable_interleave") is True:
        return 0, 1
    return limits["min_input_images"], limits["max_input_images"]


def check_input_count(model: str, count: int, parameters: dict[str, Any]) -> None:
    """A 400 unless ``model`` takes ``count`` input images (checked before any is fetched)."""
    low, high = count_range(model, parameters)
    if high == 0 and count:
        message = f"Model {model} does not accept input images (text to image only), got {count}."
        raise invalid(message, "image", model)
    if not low <= count <= high:
        raise invalid(f"Model {model} accepts {low}-{high} input images, got {count}.", "image", model)


def _flag(parameters: dict[str, Any], name: str) -> bool:
    value = parameters.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequestError(name, value, "expected a JSON boolean (true or false)")
    return value


def _fit(width: int, height: int, limits: dict[str, Any]) -> tuple[int, int]:
    """(width, height) brought within the limits' sides, pixels and aspect ratio by steps of 16."""
    low = max(limits["min_side"] or _STEP, _STEP)
    high = limits["max_side"] or 1 << 16
    width, height = min(max(width, low), high), min(max(height, low), high)
    ratio = limits["max_aspect_ratio"]
    for _ in range(4096):
        too_many = limits["max_pixels"] is not None and width * height > limits["max_pixels"]
        if too_many or (ratio is not None and max(width, height) > ratio * min(width, height)):
            if width >= height:
                width -= _STEP
            else:
                height -= _STEP
        elif limits["min_pixels"] is not None and width * height < limits["min_pixels"]:
            if width <= height:
                width += _STEP
            else:
                height += _STEP
        else:
            break
    return width, height


def area_size(aspect: tuple[int, int], pixels: int, limits: dict[str, Any]) -> tuple[int, int]:
    """A size of about ``pixels`` pixels at the aspect ratio of ``aspect`` (width, height)."""
    ratio = aspect[0] / aspect[1]
    bound = limits["max_aspect_ratio"]
    if bound is not None:
        ratio = min(max(ratio, 1 / bound), bound)
    width = max(_STEP, round(math.sqrt(pixels * ratio) / _STEP) * _STEP)
    height = max(_STEP, round(math.sqrt(pixels / ratio) / _STEP) * _STEP)
    return _fit(width, height, limits)


def _derived_size(
    model: str, size: object, inputs: Sequence[InputImage], limits: dict[str, Any], text_only: bool
) -> object:
    """The size to validate: ``size`` as given, or the one a named size or the last input stands for."""
    named = limits["named_sizes"] or {}
    last = (inputs[-1].width, inputs[-1].height) if inputs else None
    if isinstance(size, str) and size in named:
        if size in limits["text_only_sizes"] and not text_only:
            message = f"{model} makes {size} images from text alone (no input images, no enable_sequential)"
            raise InvalidRequestError("size", size, message)
        width, height = area_size(last or (1, 1), named[size], limits)
        return f"{width}*{height}"
    if named and isinstance(size, str) and re.fullmatch(r"[0-9]+[Kk]", size):
        raise InvalidRequestError("size", size, f"{model} accepts {', '.join(named)} or W*H")
    if size is not None:
        return size
    if limits["default_named_size"]:
        return _derived_size(model, limits["default_named_size"], inputs, limits, text_only)
    if last is None or limits["size_from_input"] is None:
        return None
    if limits["size_from_input"] == "input":
        pixels = last[0] * last[1]
        low, high = limits["min_pixels"] or 1, limits["max_pixels"] or pixels
        if low <= pixels <= high:
            return f"{last[0]}*{last[1]}"
        width, height = area_size(last, min(max(pixels, low), high), limits)
    else:
        width, height = area_size(last, limits["input_size_pixels"], limits)
    return f"{width}*{height}"


def _check_boxes(boxes: object, inputs: Sequence[InputImage]) -> None:
    """``bbox_list``: one list per input image of ``[x1, y1, x2, y2]`` boxes inside that image."""
    if not isinstance(boxes, list) or len(boxes) != len(inputs):
        expected = f"expected one list of boxes per input image ({len(inputs)}), [] for an image without"
        raise InvalidRequestError("bbox_list", boxes, expected)
    for number, (entry, image) in enumerate(zip(boxes, inputs, strict=True), start=1):
        if not isinstance(entry, list):
            raise InvalidRequestError("bbox_list", entry, f"image {number}: expected a list of boxes")
        for box in entry:
            whole = isinstance(box, list) and len(box) == 4
            if not whole or not all(isinstance(v, int) and not isinstance(v, bool) for v in box):
                raise InvalidRequestError("bbox_list", box, "expected [x1, y1, x2, y2] in whole pixels")
            x1, y1, x2, y2 = box
            if not (0 <= x1 < x2 <= image.width and 0 <= y1 < y2 <= image.height):
                inside = f"image {number} is {image.width}x{image.height}; x1 < x2 and y1 < y2 inside it"
                raise InvalidRequestError("bbox_list", box, inside)


def _check_palette(palette: object) -> None:
    """``color_palette``: 3-10 entries of ``{"hex": "#RRGGBB", "ratio": ...}`` (checked loosely)."""
    allowed = "expected 3-10 entries of {'hex': '#RRGGBB', 'ratio': ...}"
    if not isinstance(palette, list) or not 3 <= len(palette) <= 10:
        raise InvalidRequestError("color_palette", palette, allowed)
    for entry in palette:
        hex_ok = (
            isinstance(entry, dict) and isinstance(entry.get("hex"), str) and _HEX_COLOR.match(entry["hex"])
        )
        if not hex_ok or not isinstance(entry, dict) or entry.get("ratio") is None:
            raise InvalidRequestError("color_palette", entry, allowed)


def edit_parameters(
    model: str, parameters: dict[str, Any], inputs: Sequence[InputImage], *, sync: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """
    The parameters to validate (n's default, the size resolved) and the limits of this request that differ
    from the table's. ``sync``: a synchronous call, which gets one image unless it names n (or asks for
    sequential output: then the sequential maximum).

    :raises InvalidRequestError: naming the parameter, the value and what is allowed
    """
    limits = limits_of(model)
    params = dict(parameters)
    overrides: dict[str, Any] = {}
    sequential = bool(limits["sequential_max_n"]) and _flag(params, "enable_sequential")
    if limits["interleave"] and _flag(params, "enable_interleave"):
        overrides["min_input_images"], overrides["max_input_images"] = count_range(model, params)
    if sequential:
        overrides["max_n"] = limits["sequential_max_n"]
    if params.get("n") is None and (sequential or sync):
        params["n"] = limits["sequential_max_n"] if sequential else 1
    text_only = not inputs and not sequential
    if text_only and limits["text_only_max_pixels"]:
        overrides["max_pixels"] = limits["text_only_max_pixels"]
    if params.get("size") is not None and not limits["size_settable"]:
        message = f"{model} takes no size: its output follows the last input image"
        raise InvalidRequestError("size", params["size"], message)
    size = _derived_size(model, params.get("size"), inputs, {**limits, **overrides}, text_only)
    if size is not None:
        params["size"] = size
    if limits["bbox_list"] and params.get("bbox_list") is not None:
        _check_boxes(params["bbox_list"], inputs)
    if limits["color_palette"] and params.get("color_palette") is not None:
        _check_palette(params["color_palette"])
    return params, overrides
