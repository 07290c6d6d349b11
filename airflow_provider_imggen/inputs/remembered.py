"""
What a task instance's first try read of its input images, kept in its task state store (Airflow 3.3+) so
that every later try knows the request by the same bytes.

A request with input images is known (billing journal, ledger, task record) by its inputs' sha256. Without
this record, a retry would read the inputs again and could know the request by other bytes (an S3 key
overwritten meanwhile, an image service that re-encodes) or not at all (a signed URL expired, an object
deleted): it would then miss the task an earlier try paid for, or send again what may have been billed. With
it, a retry:

- expects the bytes the first try read: inputs that changed are refused (nothing sent), naming the earlier
  try;
- when the inputs cannot be read any more, still knows the request by the first try's digests: it can
  reconnect to the task it paid for, or recover it, and only a send fails (nothing sent, Airflow may retry).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import ImageGenerationInputError
from airflow_provider_imggen.model_table import INPUT_FORMATS
from airflow_provider_imggen.utils import is_sha256

if TYPE_CHECKING:
    from airflow_provider_imggen.request import GenerationRequest

INPUTS_KEY = "imggen_inputs"
_RECORDED = ("sha256", "bytes", "content_type", "width", "height")


def read_with_memory(
    request: GenerationRequest,
    *,
    store: Any,
    aws_conn_id: str | None,
    imggen_conn_id: str | None,
    log: Any,
) -> GenerationRequest:
    """
    ``request`` with its inputs read (:func:`~airflow_provider_imggen.inputs.resolve.resolve_input_images`),
    expecting what an earlier try recorded in ``store`` (None: no task state store, this try only), and
    recorded there before anything is sent when nothing was.
    """
    from airflow_provider_imggen.inputs.resolve import resolve_input_images

    earlier = _earlier(store, request)
    expected = request
    if earlier is not None:
        expected = dataclasses.replace(
            request,
            images=tuple(
                dataclasses.replace(image, **_recorded_fields(record))
                for image, record in zip(request.images, earlier, strict=True)
            ),
        )
    try:
        resolved = resolve_input_images(
            expected, aws_conn_id=aws_conn_id, imggen_conn_id=imggen_conn_id, log=log
        )
    except ImageGenerationInputError as error:
        if earlier is None:
            raise
        log.warning(
            "The input images cannot be read again (%s); an earlier try read them: this try knows the "
            "request by their sha256 and can reconnect to what that try paid for, but not send it again",
            error,
        )
        return expected
    if earlier is None and store is not None:
        store.set(
            INPUTS_KEY, [{**image.record(), "uri_sha256": _digest(image.uri)} for image in resolved.images]
        )
    return resolved


def _digest(uri: str) -> str:
    """The full URI, signed query included, as a digest: the record shows the URI masked, which cannot tell
    ``?id=1`` from ``?id=2``."""
    return hashlib.sha256(uri.encode()).hexdigest()


def _recorded_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name) for name in _RECORDED}


def _earlier(store: Any, request: GenerationRequest) -> list[dict[str, Any]] | None:
    """The earlier try's records of these inputs (same URIs, in order, well formed), or None."""
    if store is None:
        return None
    stored = store.get(INPUTS_KEY)
    if not isinstance(stored, list) or len(stored) != len(request.images):
        return None
    for record, image in zip(stored, request.images, strict=True):
        if not isinstance(record, dict) or record.get("uri_sha256") != _digest(image.uri):
            return None  # the rendered inputs changed: another request
        if not is_sha256(record.get("sha256")):
            return None
        # The task state store can be edited: a record with fields no read would give is not one.
        numbers = (record.get(name) for name in ("bytes", "width", "height"))
        if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in numbers):
            return None
        if record.get("content_type") not in INPUT_FORMATS:
            return None
        if image.sha256 is not None and image.sha256 != record["sha256"]:
            return None  # a stored image's record now names other bytes: another request
    return stored
