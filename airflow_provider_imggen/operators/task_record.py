"""
The native task a try paid for, as remembered in Airflow's task state store, and what a retry does with it.

The record (``{generation_task_id, request_sha256, submitted_at}``, under the operator's
``external_id_key``) is written before the wait starts, so a retry reconnects to the task it already paid
for instead of submitting again; a record written before the rename, with ``task_id``, is read too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import JsonValue

    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook, TaskState
    from airflow_provider_imggen.request import GenerationRequest


def record(generation_task_id: str, request: GenerationRequest) -> dict[str, JsonValue]:
    """What the task state store keeps of a submitted task."""
    return {
        "generation_task_id": generation_task_id,
        "request_sha256": fingerprint(request),
        "submitted_at": datetime.now(tz=UTC).isoformat(),
    }


def remembered_generation_task_id(external_id: object) -> str | None:
    """
    The generation task id in a record of the task state store, or None when it is unreadable.

    The key was ``task_id`` before the rename: a try that started on an older version of this provider
    and is retried after the upgrade still reconnects to the task it paid for.
    """
    if not isinstance(external_id, Mapping):
        return None
    generation_task_id = external_id.get("generation_task_id", external_id.get("task_id"))
    return generation_task_id if isinstance(generation_task_id, str) and generation_task_id else None


# The size 0.1.0 sent when the user set none (it filled in its own defaults; later versions send none and
# let the service choose). A task 0.1.0 submitted was fingerprinted with it: a retry after an upgrade must
# still recognise that task as its own, or it would submit and pay again.
_SIZES_0_1_SENT = {"wan2.5-t2i-preview": "1280x1280"}
_WAN_V2_SIZE_0_1 = "1024x1024"
_OTHER_SIZE_0_1 = "1328x1328"


def size_as_0_1_sent(model: str) -> str:
    """The size 0.1.0 sent for ``model`` when none was set."""
    if model in _SIZES_0_1_SENT:
        return _SIZES_0_1_SENT[model]
    if model.startswith(("wan2.2-t2i-", "wanx2.1-t2i-", "wanx2.0-t2i-", "wan2.1-t2i-")):
        return _WAN_V2_SIZE_0_1
    return _OTHER_SIZE_0_1


def fingerprint(request: GenerationRequest) -> str:
    """Identifies what a task was submitted for, so a retry only reuses a task of the same request."""
    # The wire module only when a task is recorded: not on the DAG-parse path.
    from airflow_provider_imggen.wire.native import submission_body

    body = json.dumps(submission_body(request.for_record()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def superseded(external_id: object, request: GenerationRequest) -> bool:
    """
    Whether the remembered task was submitted for another request (the rendered request changed). A task
    recorded by 0.1.0 for a request without a size carries the fingerprint of the size 0.1.0 sent.
    """
    remembered = external_id if isinstance(external_id, Mapping) else {}
    recorded = remembered.get("request_sha256")
    if recorded == fingerprint(request):
        return False
    if request.size is None:
        as_0_1 = dataclasses.replace(request, size=size_as_0_1_sent(request.model))
        return recorded != fingerprint(as_0_1)
    return True


def log_remembered(log: Any, external_id: Any, generation_task_id: str, state: TaskState) -> None:
    """Say what a retry does with the task an earlier try submitted, given its status."""
    submitted_at = external_id.get("submitted_at") if isinstance(external_id, Mapping) else None
    if state.status in ("FAILED", "CANCELED"):
        log.warning(
            "Task %s, submitted by an earlier try at %s, ended %s (code=%s: %s); nothing was billed "
            "for it, so a new task is submitted",
            generation_task_id,
            submitted_at,
            state.status,
            state.code,
            state.message,
        )
    elif state.status == "UNKNOWN":
        log.warning(
            "Task %s, submitted by an earlier try at %s, is unknown to the API: it expired (task ids "
            "live 24 h) or was never created there. Its results cannot be fetched any more, so a new "
            "task is submitted",
            generation_task_id,
            submitted_at,
        )
    elif state.status == "SUCCEEDED":
        log.info(
            "Task %s, submitted by an earlier try, already succeeded: using its results", generation_task_id
        )
    else:
        log.info(
            "Task %s, submitted by an earlier try, is %s: reconnecting to it instead of submitting again",
            generation_task_id,
            state.status,
        )


def cancel_pending(
    imggen_conn_id: str, generation_task_id: str, loaded: ImageGenerationHook | None, log: Any
) -> None:
    """Cancel the task if it is still PENDING (nothing is billed then); never raises."""
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook

    # A hook of its own: on_kill runs in a signal handler, possibly in the middle of a request on the
    # operator's session. It takes the connection already loaded, if any, rather than asking the
    # supervisor for it again from the handler.
    hook = ImageGenerationHook(imggen_conn_id=imggen_conn_id, request_timeout=10.0, max_retries=1)
    if loaded is not None and "connection" in loaded.__dict__:
        hook.__dict__["connection"] = loaded.connection
    try:
        if hook.cancel_task(generation_task_id):
            log.info("Canceled task %s: it was still PENDING, nothing is billed for it", generation_task_id)
        else:
            log.info(
                "Task %s could not be canceled (no longer PENDING): a retry reconnects to it",
                generation_task_id,
            )
    except Exception as error:
        log.warning("Could not cancel task %s: %s", generation_task_id, error)
    finally:
        hook.close()
