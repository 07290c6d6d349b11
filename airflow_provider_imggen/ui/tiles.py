"""
What the Images view shows: one :class:`Tile` per image a task's XCom names, built from the XCom alone.

Pure functions over plain data (no Airflow, no I/O), so the rules are unit-tested directly: which images
a task instance shows, in which order (a tile's position is its address in the routes), and where each
one's pixels may come from (an S3 object the transfer's XCom names, with the sha256 it recorded, or a
generation's sealed result URL while it is valid). Nothing else is ever fetched. The XCom is read only
through :mod:`~airflow_provider_imggen.ui.xcom_records`: a record that fails its checks is a ``broken``
tile, in its place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from airflow_provider_imggen.records import GenerationRecord, StoredImageRecord
from airflow_provider_imggen.ui.costs import TaskCost
from airflow_provider_imggen.ui.xcom_records import (
    Broken,
    CheckedGeneration,
    generations,
    is_conn_id,
    stored_images,
)
from airflow_provider_imggen.utils import is_sha256, parse_time

UNKNOWN_CONN = "\x00unknown"

TileKind = Literal["stored", "result", "expired", "failed", "unavailable", "input", "broken"]
GENERATION = "generation"
TRANSFER = "transfer"


@dataclass(frozen=True)
class TaskOutput:
    """
    The ``return_value`` XCom of one image task instance and the connection it used.

    :param kind: ``generation`` (ImageGenerationOperator, ImageGenerationTaskSensor) or ``transfer``
    :param conn_id: the transfer's ``aws_conn_id`` or the generation's ``imggen_conn_id``, as the task
        instance rendered it; :data:`UNKNOWN_CONN` when it cannot be known
    :param aws_conn_id: a generation's ``aws_conn_id``, which read its ``s3://`` input images
    """

    task_id: str
    map_index: int
    kind: str
    value: Any
    conn_id: str | None
    aws_conn_id: str | None = UNKNOWN_CONN


@dataclass(frozen=True)
class Tile:
    """
    One image (or one image that failed) of a task instance.

    The fields after ``failure`` are the server's alone: they decide where pixels come from and are never
    rendered into a page (a sealed URL is only opened server-side, a bucket/key only read through S3Hook).
    """

    task_id: str
    map_index: int
    position: int
    kind: TileKind
    index: int | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    model: str | None = None
    size: str | None = None
    seed: int | None = None
    request_id: str | None = None
    sha256: str | None = None
    s3_uri: str | None = None
    bytes: int | None = None
    width: int | None = None
    height: int | None = None
    expires_at: datetime | None = None
    # The generation's price per image (validated with its record); None: no price known.
    cost_per_image: str | None = None
    cost_currency: str | None = None
    failure: str | None = None
    # An edit's input image (or the broken record of one): shown on its task's page, not in a run's gallery.
    of_input: bool = False
    # Server-side only.
    bucket: str | None = field(default=None, repr=False)
    key: str | None = field(default=None, repr=False)
    aws_conn_id: str | None = field(default=None, repr=False)
    url_sealed: str | None = field(default=None, repr=False)
    imggen_conn_id: str | None = field(default=None, repr=False)

    @property
    def has_pixels(self) -> bool:
        """
        Whether pixels may be read: an S3 object only with the sha256 its bytes must have (the XCom names
        the object, the digest proves it is the one recorded); a result only from its sealed URL.
        """
        if self.kind == "input":  # an s3:// input the edit read, through the task's aws connection
            return self.bucket is not None and is_sha256(self.sha256) and self.aws_conn_id != UNKNOWN_CONN
        if self.kind == "stored":
            return bool(self.bucket and self.key) and is_sha256(self.sha256)
        return self.kind == "result" and bool(self.url_sealed)

    @property
    def from_s3(self) -> bool:
        return self.kind in ("stored", "input")

    @property
    def identity(self) -> str:
        """What the pixels are, for the cache key: content hash plus where they are read from."""
        if self.from_s3:
            return f"s3:{self.aws_conn_id}:{self.bucket}/{self.key}:{self.sha256}"
        return f"url:{self.imggen_conn_id}:{self.url_sealed}:{self.sha256}"


def _match_key(request_id: str | None, index: int | None) -> tuple[str, int] | None:
    return (request_id, index) if request_id and index is not None else None


def _checked_records(output: TaskOutput) -> list[Any]:
    """A task instance's XCom records, each checked (:mod:`~airflow_provider_imggen.ui.xcom_records`)."""
    if output.kind == GENERATION:
        return list(generations(output.value))
    if output.kind == TRANSFER:
        return list(stored_images(output.value))
    return []


def _tile(output: TaskOutput, **fields: Any) -> Tile:
    """A tile of ``output``'s task instance; ``tiles()`` gives it its position on the page."""
    return Tile(task_id=output.task_id, map_index=output.map_index, position=0, **fields)


def _broken_tile(output: TaskOutput, broken: Broken) -> Tile:
    """A record that failed its checks: its place, a fixed message, nothing of its content."""
    return _tile(
        output,
        kind="broken",
        failure=broken.message,
        of_input=broken.input_image,
    )


class RunImages:
    """
    Every image task instance of one DAG run, and the tiles each shows.

    A generation's image that a transfer of the same run stored is shown from S3 (its result URL expires,
    the object does not); a stored image gets its generation's negative prompt and size. Images are matched
    by request id and index, both recorded by the generation and copied by the transfer.
    """

    def __init__(self, outputs: Iterable[TaskOutput], *, now: datetime | None = None) -> None:
        self.outputs = sorted(outputs, key=lambda output: (output.task_id, output.map_index))
        self.now = now or datetime.now(UTC)
        self._generations: dict[tuple[str, int], GenerationRecord] = {}
        self._stored: dict[tuple[str, int], tuple[StoredImageRecord, str | None]] = {}
        # One cost per generation record, in task order; a transfer's page finds its generations' by
        # request id, as its tiles find their metadata.
        self._costs: list[TaskCost] = []
        self._cost_of_request: dict[str, TaskCost] = {}
        # Each XCom is checked once per page, however many times its records are read.
        self._checked = {id(output): _checked_records(output) for output in self.outputs}
        for output in self.outputs:
            if output.kind == GENERATION:
                for record in self._valid_generations(output):
                    cost = TaskCost.of(output.task_id, output.map_index, record.request_id, record.cost)
                    self._costs.append(cost)
                    if record.request_id:
                        self._cost_of_request.setdefault(record.request_id, cost)
                    for image in record.images:
                        key = _match_key(record.request_id, image.index)
                        if key:
                            self._generations.setdefault(key, record)
            elif output.kind == TRANSFER:
                for stored in self._valid_stored(output):
                    key = _match_key(stored.request_id, stored.index)
                    if key:
                        self._stored.setdefault(key, (stored, output.conn_id))

    def _records(self, output: TaskOutput) -> list[Any]:
        return self._checked[id(output)]

    def _valid_generations(self, output: TaskOutput) -> list[GenerationRecord]:
        return [item.record for item in self._records(output) if isinstance(item, CheckedGeneration)]

    def _valid_stored(self, output: TaskOutput) -> list[StoredImageRecord]:
        return [item for item in self._records(output) if isinstance(item, StoredImageRecord)]

    def task_instances(self, task_id: str | None = None, map_index: int | None = None) -> list[TaskOutput]:
        return [
            output
            for output in self.outputs
            if (task_id is None or output.task_id == task_id)
            and (map_index is None or output.map_index == map_index)
        ]

    def run_costs(self) -> list[TaskCost]:
        """Every generation of the run, each once: what the run cost is their sum (per currency)."""
        return list(self._costs)

    def task_costs(self, outputs: Iterable[TaskOutput]) -> list[TaskCost]:
        """
        The generations a task page shows: a generation task instance's own; for a transfer, those whose
        images it stored (it bills nothing itself), each once, in the order of its images.
        """
        costs: dict[int, TaskCost] = {}
        for output in outputs:
            if output.kind == GENERATION:
                found = [
                    cost
                    for cost in self._costs
                    if (cost.task_id, cost.map_index) == (output.task_id, output.map_index)
                ]
            else:
                requests = (stored.request_id for stored in self._valid_stored(output))
                found = [self._cost_of_request[rid] for rid in requests if rid in self._cost_of_request]
            for cost in found:
                costs.setdefault(id(cost), cost)
        return list(costs.values())

    def tiles(self, output: TaskOutput) -> list[Tile]:
        """The tiles of one task instance, in a fixed order: position ``n`` always names the same image."""
        build = self._transfer_tiles if output.kind == TRANSFER else self._generation_tiles
        try:
            built = build(output)
        except Exception:  # records are checked before use; should anything still fail: one broken tile
            built = [_broken_tile(output, Broken("XCom value", "record"))]
        return [replace(tile, position=position) for position, tile in enumerate(built)]

    def gallery(self) -> list[Tile]:
        """A run's images once each: every stored image, then every generated one no transfer stored."""
        tiles: list[Tile] = []
        for output in self.outputs:
            if output.kind == TRANSFER:
                tiles += self.tiles(output)
        for output in self.outputs:
            if output.kind == GENERATION:
                tiles += [
                    tile
                    for tile in self.tiles(output)
                    if not tile.of_input
                    and (
                        tile.kind in ("failed", "broken")
                        or _match_key(tile.request_id, tile.index) not in self._stored
                    )
                ]
        return tiles

    def _transfer_tiles(self, output: TaskOutput) -> list[Tile]:
        tiles = []
        failures: dict[int, GenerationRecord] = {}
        for stored in self._records(output):
            if isinstance(stored, Broken):
                tiles.append(_broken_tile(output, stored))
                continue
            key = _match_key(stored.request_id, stored.index)
            generation = self._generations.get(key) if key else None
            if generation is not None and generation.failed_images:
                failures.setdefault(id(generation), generation)
            tiles.append(
                _tile(
                    output,
                    kind="stored" if output.conn_id != UNKNOWN_CONN else "unavailable",
                    index=stored.index,
                    prompt=stored.prompt,
                    negative_prompt=generation.negative_prompt if generation else None,
                    model=stored.model,
                    size=_size(stored.width, stored.height) or (generation.size if generation else None),
                    seed=stored.seed,
                    request_id=stored.request_id,
                    sha256=stored.sha256,
                    s3_uri=stored.s3_uri,
                    bytes=stored.bytes,
                    width=stored.width,
                    height=stored.height,
                    **_price(generation),
                    failure=None if output.conn_id != UNKNOWN_CONN else "the task's aws_conn_id is unknown",
                    bucket=stored.bucket,
                    key=stored.key,
                    aws_conn_id=output.conn_id,
                )
            )
        # What a partial generation reported as failed never reached the transfer: say so next to it.
        for generation in failures.values():
            tiles += _failed_tiles(output, generation)
        return tiles

    def _generation_tiles(self, output: TaskOutput) -> list[Tile]:
        tiles = []
        for checked in self._records(output):
            if isinstance(checked, Broken):
                tiles.append(_broken_tile(output, checked))
                continue
            record = checked.record
            tiles += _input_tiles(output, checked)  # an edit's inputs, beside what it made of them
            for image in checked.images:
                if isinstance(image, Broken):
                    tiles.append(_broken_tile(output, image))
                    continue
                stored_with = self._stored.get(_match_key(record.request_id, image.index) or ("", -1))
                common: dict[str, Any] = {
                    "index": image.index,
                    "prompt": record.prompt,
                    "negative_prompt": record.negative_prompt,
                    "model": record.model,
                    "size": record.size,
                    "seed": image.seed if image.seed is not None else record.seed,
                    "request_id": record.request_id,
                    **_price(record),
                }
                if stored_with is not None:
                    stored, aws_conn_id = stored_with
                    known = aws_conn_id != UNKNOWN_CONN
                    tiles.append(
                        _tile(
                            output,
                            **common,
                            kind="stored" if known else "unavailable",
                            sha256=stored.sha256,
                            s3_uri=stored.s3_uri,
                            bytes=stored.bytes,
                            width=stored.width,
                            height=stored.height,
                            failure=None if known else "the transfer's aws_conn_id is unknown",
                            bucket=stored.bucket,
                            key=stored.key,
                            aws_conn_id=aws_conn_id,
                        )
                    )
                    continue
                expires_at = parse_time(image.url_expires_at)
                if not image.url_sealed:
                    kind: TileKind = "unavailable"
                    failure = (
                        f"written to {image.location}; not shown here"
                        if image.location
                        else "no sealed result URL in the XCom"
                    )
                elif expires_at is not None and expires_at <= self.now:
                    kind, failure = "expired", "expired, not stored"
                elif output.conn_id == UNKNOWN_CONN:
                    kind, failure = "unavailable", "the task's imggen_conn_id is unknown"
                else:
                    kind, failure = "result", None
                tiles.append(
                    _tile(
                        output,
                        **common,
                        kind=kind,
                        sha256=image.sha256,
                        bytes=image.bytes,
                        expires_at=expires_at,
                        failure=failure,
                        url_sealed=image.url_sealed if kind == "result" else None,
                        imggen_conn_id=output.conn_id,
                    )
                )
            tiles += _failed_tiles(output, record, checked.failed_images)
        return tiles


def _price(record: GenerationRecord | None) -> dict[str, Any]:
    """A tile's price per image, from its generation's validated cost (both or neither)."""
    cost = TaskCost.of("", -1, None, record.cost if record else None)
    return {"cost_per_image": cost.per_image, "cost_currency": cost.currency}


def _input_tiles(output: TaskOutput, checked: CheckedGeneration) -> list[Tile]:
    """
    The input images an edit recorded, in order. Pixels only for an ``s3://`` input with its sha256, read
    through the generation task's aws connection and checked against that digest (the XCom names the
    object: what it holds must be what the edit read); other inputs (https, other stores) are described,
    never fetched from here.
    """
    from airflow_provider_imggen.inputs.references import s3_input_location

    record = checked.record
    tiles = []
    for position, item in enumerate(checked.input_images):
        if isinstance(item, Broken):
            tiles.append(_broken_tile(output, item))
            continue
        uri, sha256 = item.get("uri"), item.get("sha256")
        location = s3_input_location(uri) if isinstance(uri, str) else None
        failure = None
        if location is None:
            failure = "input image (not in S3): not fetched here"
        elif sha256 is None:
            failure = "input image: no sha256 recorded to check it against; not shown"
        elif output.aws_conn_id == UNKNOWN_CONN:
            failure = "input image: the task's aws_conn_id is unknown"
        tiles.append(
            _tile(
                output,
                kind="input",
                of_input=True,
                index=position,
                prompt=record.prompt,
                model=record.model,
                request_id=record.request_id,
                sha256=sha256,
                s3_uri=uri if isinstance(uri, str) else None,
                bytes=item.get("bytes"),
                width=item.get("width"),
                height=item.get("height"),
                size=_size(item.get("width"), item.get("height")),
                failure=failure,
                bucket=location[0] if location else None,
                key=location[1] if location else None,
                # An ObjectStoragePath input names its own connection; others were read with the task's.
                aws_conn_id=(item.get("conn_id") or output.aws_conn_id) if location else UNKNOWN_CONN,
            )
        )
    return tiles


def _failed_tiles(
    output: TaskOutput, record: GenerationRecord, entries: tuple[Any, ...] | None = None
) -> list[Tile]:
    """A generation's failed images (``entries``: every entry as checked, a broken tile for a bad one)."""
    return [
        _broken_tile(output, failed)
        if isinstance(failed, Broken)
        else _tile(
            output,
            kind="failed",
            index=failed.index,
            prompt=record.prompt,
            negative_prompt=record.negative_prompt,
            model=record.model,
            size=record.size,
            request_id=record.request_id,
            failure=": ".join(part for part in (failed.code, failed.message) if part) or "failed",
        )
        for failed in (record.failed_images if entries is None else entries)
    ]


def _size(width: int | None, height: int | None) -> str | None:
    return f"{width}*{height}" if width and height else None


def conn_id_of(rendered: Mapping[str, Any] | None, declared: object, name: str, default: str) -> str | None:
    """
    The connection a task instance used: its rendered field, else the DAG's literal value, else the default.

    A value that still holds a template (never rendered: the task did not run), or anything else that is no
    connection id, is :data:`UNKNOWN_CONN`.
    """
    if rendered is not None and name in rendered:
        value = rendered[name]
    elif declared is not _MISSING:
        value = declared
    else:
        value = default
    if value is None:
        return None
    # Templates ("{{ ... }}") and anything else outside Airflow's connection id alphabet.
    return str(value) if is_conn_id(value) else UNKNOWN_CONN


_MISSING = object()
MISSING = _MISSING
