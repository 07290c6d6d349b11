"""
Reading a connection from async code (triggers) wherever the deployment keeps it.

Airflow 3.3's async lookup (``BaseHook.aget_connection``) asks the secrets backends in turn; the one that
reads metadata-DB connections in a task or trigger process (``ExecutionAPISecretsBackend``) goes through
``SUPERVISOR_COMMS.asend``. The in-process trigger runner of ``airflow dags test`` / ``dag.test()``
(``InProcessTestSupervisor.run_trigger_in_process``, task-sdk 1.3.2) installs ``InProcessSupervisorComms``,
which has ``send`` but no ``asend``: the backend swallows the ``AttributeError``, the lookup falls through
and ends in "The conn_id ... isn't defined" for every connection created with ``airflow connections add``
(those from ``AIRFLOW_CONN_*`` variables and file-based backends are found before it). The synchronous
lookup (``BaseHook.get_connection``, what the worker uses) goes through ``send`` and works there, and in a
real triggerer it works from a thread too (``TriggerCommsDecoder.send`` hands the request to the event
loop). So a connection the async lookup cannot find is looked up once more that way, in a thread.

Secrets backends may also hand back the metadata DB's model instead of the Task SDK's ``Connection``
(Airflow's own ``LocalFilesystemBackend`` does, in 3.3.2), which has no ``aextra_dejson``: what either
lookup returns is made a Task SDK ``Connection``. And ``Connection.aextra_dejson`` first came with task-sdk
1.3.2 (Airflow 3.3.2): :func:`aextra_dejson` reads the extra on 3.3.0 and 3.3.1 too.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from airflow_provider_imggen.exceptions import ImageGenerationConnectionUnreadableError

if TYPE_CHECKING:
    from airflow.sdk import Connection


async def aget_connection(conn_id: str) -> Connection:
    """
    The connection ``conn_id``, read without blocking the event loop: the async lookup, then the worker's.

    :raises ImageGenerationConnectionUnreadableError: neither lookup found it
    """
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return _sdk_connection(await BaseHook.aget_connection(conn_id))
    except AirflowNotFoundException as error:
        async_error = str(error)
    try:
        # In a thread: the sync lookup blocks on the supervisor's answer.
        return _sdk_connection(await asyncio.to_thread(BaseHook.get_connection, conn_id))
    except AirflowNotFoundException as error:
        raise ImageGenerationConnectionUnreadableError(
            conn_id, f"{async_error} (async lookup); {error} (sync lookup)"
        ) from None


def _sdk_connection(conn: Any) -> Connection:
    """``conn`` as a Task SDK ``Connection`` (a backend may return the metadata DB's model)."""
    from airflow.sdk import Connection

    if isinstance(conn, Connection):
        return conn
    return Connection(
        conn_id=conn.conn_id,
        conn_type=conn.conn_type,
        description=conn.description,
        host=conn.host,
        schema=conn.schema,
        login=conn.login,
        password=conn.password,
        port=conn.port,
        extra=conn.extra,
    )


async def aextra_dejson(conn: Connection) -> dict[str, Any]:
    """The connection's extra as a dict (secrets in it masked), without blocking the event loop."""
    if hasattr(conn, "aextra_dejson"):
        return dict(await conn.aextra_dejson())
    # Airflow 3.3.0 and 3.3.1: extra_dejson masks through the supervisor, a blocking call; in a thread.
    return dict(await asyncio.to_thread(lambda: conn.extra_dejson))


def trigger_connection_problem(conn_id: str, timeout: float = 60) -> str | None:
    """
    Load the connection here the way ``ImageGenerationTaskTrigger`` will (the async hook's settings): why
    that fails, or None.

    Called by a worker before it submits a deferrable generation, so that a connection the trigger's code
    cannot read is found before anything is billed. Exact under ``airflow dags test``, which runs the
    trigger in this process; for a separate triggerer it proves the code path and this Airflow, not the
    triggerer's own environment (a trigger that cannot read it there reports ``connection_unreadable``
    and the worker waits instead). In a thread of its own: the caller may already run an event loop.
    """
    from airflow_provider_imggen.hooks.image_generation import ImageGenerationAsyncHook

    async def load() -> None:
        await ImageGenerationAsyncHook(conn_id).aget_settings()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="imggen-trigger-connection") as pool:
        try:
            pool.submit(asyncio.run, load()).result(timeout=timeout)
        except Exception as error:  # whatever the trigger would have met, named for the log
            return f"{type(error).__name__}: {error}"
    return None
