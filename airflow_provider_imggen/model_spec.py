"""
What one model accepts (:class:`ModelSpec`) and its quota per account (:class:`Quota`): the shape of a row of
the model table (:mod:`~airflow_provider_imggen.model_table`), which holds the rows themselves and the
lookups. Stdlib only: operators read it at DAG-parse time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Input images every model that takes them accepts: what the provider can check without decoding a pixel
# (transfers/image_check.py). The service also takes BMP, TIFF and GIF for some models; the provider
# refuses those before anything is billed rather than send bytes it cannot prove complete.
INPUT_FORMATS: tuple[str, ...] = ("image/png", "image/jpeg", "image/webp")
_TEN_MB = 10 * 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """
    What one model accepts.

    :param name: model name as the API spells it
    :param max_n: most images one request may ask for
    :param default_size: size used when the request names none
    :param fixed_sizes: the only (width, height) pairs allowed, or ``None`` for a range
    :param min_side: smallest width or height when sizes are a range
    :param max_side: largest width or height when sizes are a range
    :param max_pixels: largest width x height when sizes are a range
    :param max_prompt_chars: longest prompt
    :param max_negative_prompt_chars: longest negative prompt
    :param min_pixels: smallest width x height when sizes are a range
    :param max_aspect_ratio: largest long side / short side when sizes are a range (None: any)
    :param endpoints: the native endpoints serving it (``async``, ``sync``), the one used by default first
    :param quota: what the account may send to the default endpoint: requests per ``window_seconds`` and
        concurrent tasks
    :param docs: the documentation page its limits come from, by title
    :param min_input_images: fewest input images a request must carry (1 for an editing-only model)
    :param max_input_images: most input images (0: text to image only)
    :param max_input_bytes: largest input image, in bytes
    :param min_input_side: smallest width or height of an input image, in pixels
    :param max_input_side: largest width or height of an input image, in pixels
    :param size_settable: whether the request may name a size (qwen-image-edit's follows its input)
    :param input_alpha: whether input images may have an alpha channel (the Wan editing models refuse it)
    :param task_surface: the task API's surface serving it: ``text2image``, ``image2image``
        (wan2.5-i2i-preview) or ``image-generation`` (the wan2.6 / wan2.7 messages body)
    """

    name: str
    max_n: int
    default_size: str
    fixed_sizes: tuple[tuple[int, int], ...] | None = None
    min_side: int = 1
    max_side: int = 1 << 16
    max_pixels: int = 1 << 32
    max_prompt_chars: int = 800
    max_negative_prompt_chars: int = 500
    min_pixels: int = 1
    max_aspect_ratio: float | None = None
    endpoints: tuple[str, ...] = ("async",)
    quota: Quota | None = None
    docs: str = ""
    min_input_images: int = 0
    max_input_images: int = 0
    max_input_bytes: int = _TEN_MB
    min_input_side: int = 1
    max_input_side: int = 1 << 16
    size_settable: bool = True
    input_alpha: bool = True
    task_surface: str = "text2image"

    def describe_input_count(self) -> str:
        if self.max_input_images == 0:
            return f"{self.name} takes no input images (text to image only)"
        if self.min_input_images == self.max_input_images:
            return f"{self.name} takes exactly {self.max_input_images} input image(s)"
        return f"{self.name} takes {self.min_input_images}-{self.max_input_images} input images"

    def describe_sizes(self) -> str:
        if self.fixed_sizes is not None:
            listed = ", ".join(f"{w}x{h}" for w, h in self.fixed_sizes)
            return f"{self.name} accepts exactly one of {listed}"
        if self.min_pixels > 1:
            text = (
                f"{self.name} accepts WxH with {self.min_pixels} to {self.max_pixels} pixels in all "
                f"({_square(self.min_pixels)} to {_square(self.max_pixels)})"
            )
        else:
            text = (
                f"{self.name} accepts WxH with each side {self.min_side}-{self.max_side} "
                f"and at most {self.max_pixels} pixels ({self.max_side}x{self.max_side})"
            )
        if self.max_aspect_ratio is not None:
            text += f", aspect ratio between 1:{self.max_aspect_ratio:g} and {self.max_aspect_ratio:g}:1"
        return text

    def size_allowed(self, width: int, height: int) -> bool:
        if self.fixed_sizes is not None:
            return (width, height) in self.fixed_sizes
        if not (self.min_side <= width <= self.max_side and self.min_side <= height <= self.max_side):
            return False
        if not self.min_pixels <= width * height <= self.max_pixels:
            return False
        ratio = max(width, height) / min(width, height)
        return self.max_aspect_ratio is None or ratio <= self.max_aspect_ratio


@dataclass(frozen=True)
class Quota:
    """
    An account's limit for one model (Beijing and Singapore; api-notes §6, "Rate limits").

    :param requests: requests (task submissions, or synchronous generations) per ``window_seconds``
    :param window_seconds: the window ``requests`` counts over
    :param concurrent: tasks (or synchronous generations) in flight at once; None when not documented
    """

    requests: int
    window_seconds: float
    concurrent: int | None

    def describe(self) -> str:
        per = (
            "s"
            if self.window_seconds == 1
            else ("min" if self.window_seconds == 60 else f"{self.window_seconds:g} s")
        )
        text = f"{self.requests}/{per}"
        return text + (f", {self.concurrent} concurrent" if self.concurrent is not None else "")


def _square(pixels: int) -> str:
    side = math.isqrt(pixels)
    return f"{side}x{side}" if side * side == pixels else str(pixels)
