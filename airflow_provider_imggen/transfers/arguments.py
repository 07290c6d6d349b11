"""
The transfer's arguments checked before anything runs: literal values when the DAG is parsed (plain and
``.partial()`` operators alike), rendered ones when the task starts.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.transfers import keys, location_policy

UNTEMPLATED_CHECKED = (
    "max_image_bytes",
    "max_concurrency",
    "download_retries",
    "download_retry_wait",
    "replace",
    "extra_upload_args",
    "location_prefixes",
)


def check_literal_arguments(arguments: dict[str, Any]) -> None:
    """
    Check the arguments that are already final, so a broken DAG shows an import error.

    A name missing from ``arguments`` (a ``.partial()`` whose ``.expand()`` gives it) is checked when the
    mapped task's operator is created. ``s3_key`` is checked as written: its placeholders (an unknown one
    would fail only after the images were billed), not what Jinja renders.
    """
    for name, minimum, integer in (
        ("max_image_bytes", 1, True),
        ("max_concurrency", 1, True),
        ("download_retries", 0, True),
        ("download_retry_wait", 0, False),
    ):
        if name in arguments:
            _check_number(name, arguments[name], minimum=minimum, integer=integer)
    download_timeout = arguments.get("download_timeout")
    if "download_timeout" in arguments and not (
        isinstance(download_timeout, str) and "{" in download_timeout
    ):
        download_timeout_seconds(download_timeout)
    if "replace" in arguments and not isinstance(arguments["replace"], bool):
        raise ImageGenerationValidationError("replace", arguments["replace"], "expected True or False")
    extra_upload_args = arguments.get("extra_upload_args")
    if extra_upload_args is not None and not isinstance(extra_upload_args, dict):
        raise ImageGenerationValidationError(
            "extra_upload_args", type(extra_upload_args).__name__, "expected a dict of boto3 ExtraArgs"
        )
    if "location_prefixes" in arguments:
        location_policy.parse_prefixes(arguments["location_prefixes"])
    if isinstance(arguments.get("s3_key"), str):
        keys.check_template(arguments["s3_key"])


def _check_number(name: str, value: object, *, minimum: float, integer: bool = True) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not isinstance(value, kinds)
        or value < minimum
    ):
        raise ImageGenerationValidationError(
            name, value, f"expected {'a whole number' if integer else 'a number'} >= {minimum:g}"
        )


def download_timeout_seconds(value: object) -> float:
    """``download_timeout`` as seconds (it is templated: a rendered value may be text)."""
    try:
        seconds = (
            float(value) if isinstance(value, int | float | str) and not isinstance(value, bool) else -1.0
        )
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 86400:
        raise ImageGenerationValidationError("download_timeout", value, "expected seconds, > 0 and <= 86400")
    return seconds
