"""
The Images view's query parameters, checked before anything is read: a bad one is a 400 naming it.

Identifiers travel as query parameters, not path segments: run ids hold ``:`` and ``+``, and the UI
fills the view's URL template with ``encodeURIComponent``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from airflow_provider_imggen.ui.thumbnails import DEFAULT_SIZE, THUMBNAIL_SIZES

_KEY = re.compile(r"[\w.-]{1,250}")  # Airflow's dag_id / task_id alphabet (KEY_REGEX), bounded
_RUN_ID_MAX = 250
MAX_MAP_INDEX = 1_000_000
MAX_POSITION = 100_000
# What the UI leaves in the URL template of a task-instance view when the task is not mapped.
_UNFILLED = ("", "{MAP_INDEX}")


class BadParameterError(ValueError):
    """A query parameter is missing or malformed; the message names it and what is allowed."""


@dataclass(frozen=True)
class TileAddress:
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    position: int


def dag_id(value: str | None) -> str:
    return _key("dag_id", value)


def task_id(value: str | None) -> str:
    return _key("task_id", value)


def run_id(value: str | None) -> str:
    if not value:
        raise BadParameterError("run_id is required")
    if len(value) > _RUN_ID_MAX or not value.isprintable():
        raise BadParameterError(f"run_id: expected at most {_RUN_ID_MAX} printable characters")
    return value


def map_index(value: str | None, *, required: bool) -> int | None:
    """An integer from -1 (not mapped); unset or the UI's unfilled ``{MAP_INDEX}``: every map index."""
    if value is None or value in _UNFILLED:
        if required:
            raise BadParameterError("map_index is required")
        return None
    return _integer("map_index", value, minimum=-1, maximum=MAX_MAP_INDEX)


def position(value: str | None) -> int:
    if value is None:
        raise BadParameterError("n is required")
    return _integer("n", value, minimum=0, maximum=MAX_POSITION)


def thumbnail_size(value: str | None) -> int:
    if value is None:
        return DEFAULT_SIZE
    size = _integer("size", value, minimum=0, maximum=max(THUMBNAIL_SIZES))
    if size not in THUMBNAIL_SIZES:
        raise BadParameterError(f"size: expected one of {', '.join(map(str, THUMBNAIL_SIZES))}")
    return size


def tile_address(
    dag: str | None, run: str | None, task: str | None, index: str | None, n: str | None
) -> TileAddress:
    return TileAddress(
        dag_id=dag_id(dag),
        run_id=run_id(run),
        task_id=task_id(task),
        map_index=map_index(index, required=True),  # type: ignore[arg-type]
        position=position(n),
    )


def _key(name: str, value: str | None) -> str:
    if not value:
        raise BadParameterError(f"{name} is required")
    if not _KEY.fullmatch(value):
        raise BadParameterError(f"{name}: expected 1-250 letters, digits, '_', '.' or '-'")
    return value


def _integer(name: str, value: str, *, minimum: int, maximum: int) -> int:
    text = value.strip()
    if not re.fullmatch(r"-?\d{1,7}", text):
        raise BadParameterError(f"{name}: expected an integer from {minimum} to {maximum}")
    number = int(text)
    if not minimum <= number <= maximum:
        raise BadParameterError(f"{name}: expected an integer from {minimum} to {maximum}")
    return number
