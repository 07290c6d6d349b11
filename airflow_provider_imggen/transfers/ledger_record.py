"""
After a transfer: record in the billing ledger (the ``imggen`` connection's ``ledger`` setting) which S3
objects hold each generation's images, so that a later run asking for the same request reuses them
instead of paying again (:mod:`~airflow_provider_imggen.operators.ledger_reuse`).

Best effort: the images are stored whatever happens here; a failure to record costs a later run a
generation, never this run its images.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from airflow_provider_imggen.records import GenerationRecord, StoredImageRecord
from airflow_provider_imggen.transfers.sources import flatten


def record_stored_images(
    generation: object, entries: list[StoredImageRecord], imggen_conn_id: str | None, log: Any
) -> int:
    """Record each generation's stored images under its ``ledger_fingerprint``; how many were recorded."""
    named = [
        (position, item)
        for position, item in enumerate(flatten(generation))
        if isinstance(item, Mapping) and item.get("ledger_fingerprint") and not item.get("reused")
    ]
    if not named or imggen_conn_id is None:
        return 0
    try:
        store = _ledger_store(imggen_conn_id)
    except Exception as error:
        log.warning("The billing ledger cannot be opened (%s): stored images not recorded", error)
        return 0
    if store is None:
        return 0
    by_generation: dict[int, list[StoredImageRecord]] = defaultdict(list)
    for entry in entries:
        by_generation[entry.generation].append(entry)
    recorded = 0
    try:
        for position, item in named:
            try:
                recorded += _record(store, position, item, by_generation[position], log)
            except Exception as error:
                log.warning("Generation %d's stored images not recorded in the ledger: %s", position, error)
    finally:
        store.close()
    return recorded


def _record(
    store: Any, position: int, item: Mapping[str, Any], stored: list[StoredImageRecord], log: Any
) -> int:
    from airflow_provider_imggen.ledger.claims import record_stored
    from airflow_provider_imggen.ledger.entry import StoredImage

    # The XCom can be edited: its fingerprint is checked like the rest of it, and record_stored completes
    # only an entry billed for this very answer (its request id and task id).
    record = GenerationRecord.from_dict(item, where=f"generation[{position}]")
    assert record.ledger_fingerprint is not None
    images = tuple(
        StoredImage(
            index=entry.index, bucket=entry.bucket, key=entry.key, sha256=entry.sha256, bytes=entry.bytes
        )
        for entry in sorted(stored, key=lambda entry: entry.index)
    )
    if not images:
        return 0
    done = record_stored(
        store,
        record.ledger_fingerprint,
        images,
        request_id=record.request_id,
        generation_task_id=record.generation_task_id,
        log=log,
    )
    if done:
        log.info("Recorded generation %d's %d stored image(s) in the billing ledger", position, len(images))
    return int(done)


def _ledger_store(imggen_conn_id: str) -> Any:
    from airflow.sdk import BaseHook

    from airflow_provider_imggen.connection_settings import parse_connection
    from airflow_provider_imggen.ledger import open_ledger_store

    settings = parse_connection(BaseHook.get_connection(imggen_conn_id))
    return open_ledger_store(settings.ledger) if settings.ledger else None
