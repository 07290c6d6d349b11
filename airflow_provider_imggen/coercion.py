"""
Turning what templates render (strings) into the types the API reads, refusing what no API reads so:
the one set of coercions the request, the operator and the hooks share. Stdlib only (DAG-parse path).
"""

from __future__ import annotations

import math
import re

from airflow_provider_imggen.exceptions import ImageGenerationValidationError

_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[x*X×]\s*(\d+)\s*$")


_ASCII_INT_PATTERN = re.compile(r"\s*[+-]?[0-9]+\s*", re.ASCII)


_ASCII_NUMBER_PATTERN = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*", re.ASCII)


def parse_size(size: object) -> tuple[int, int]:
    """Parse ``"1328x1328"`` or ``"1328*1328"`` into ``(width, height)``."""
    match = _SIZE_PATTERN.match(size) if isinstance(size, str) else None
    if not match:
        raise ImageGenerationValidationError(
            "size", size, "expected 'WIDTHxHEIGHT' or 'WIDTH*HEIGHT' with whole numbers, e.g. '1328x1328'"
        )
    return int(match.group(1)), int(match.group(2))


def coerce_int(parameter: str, value: object, allowed: str) -> int:
    """
    Accept an int or a string of ASCII digits (rendered templates are strings); refuse bools, floats and
    other scripts' digits (``int("٢")`` is 2 in Python, but no API reads it so).
    """
    if isinstance(value, bool):
        raise ImageGenerationValidationError(parameter, value, allowed)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, str) and _ASCII_INT_PATTERN.fullmatch(value):
        return int(value)
    raise ImageGenerationValidationError(parameter, value, allowed)


def coerce_seconds(
    parameter: str, value: object, *, allow_zero: bool = False, allow_none: bool = False
) -> float | None:
    """
    A finite number of seconds (> 0, or >= 0 with ``allow_zero``) from a number or an ASCII numeric
    string; refuses bools, NaN and infinity (which pass a plain ``> 0`` check and then never end).
    """
    allowed = f"expected a finite number of seconds {'>= 0' if allow_zero else '> 0'}" + (
        ", or None" if allow_none else ""
    )
    if value is None and allow_none:
        return None
    number: float | None = None
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if numeric or (isinstance(value, str) and _ASCII_NUMBER_PATTERN.fullmatch(value)):
        number = float(value)  # type: ignore[arg-type]
    if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        raise ImageGenerationValidationError(parameter, value, allowed)
    return number


def coerce_bool(parameter: str, value: object) -> bool:
    """Accept a bool or the strings a rendered template gives ("true", "False", "0"...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
    raise ImageGenerationValidationError(parameter, value, "expected a boolean (true or false)")


def check_flag(parameter: str, value: object) -> bool:
    """A boolean argument (``deferrable``, ``wait_for_completion``): anything else is refused."""
    if not isinstance(value, bool):
        raise ImageGenerationValidationError(parameter, value, "expected True or False")
    return value
