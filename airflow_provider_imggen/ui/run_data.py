"""
A DAG run's image task instances, read from Airflow's metadata database in the API server.

Which tasks are image tasks comes from the serialized DAG of the run (its operator class and module, as
the DAG processor recorded them: an XCom alone proves nothing, and only the provider's own operators'
XComs are trusted to name S3 keys). The connection a task instance used comes from its rendered fields
(what it actually ran with), else the DAG's literal value, else the operator's default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from airflow_provider_imggen import DEFAULT_CONN_ID
from airflow_provider_imggen.ui.tiles import GENERATION, MISSING, TRANSFER, RunImages, TaskOutput, conn_id_of
from airflow_provider_imggen.ui.xcom_records import UNREADABLE

if TYPE_CHECKING:
    from airflow.models.xcom import XComModel
    from sqlalchemy.orm import Session

# (module, class) as the serialized DAG records them → what kind of XCom they push.
IMAGE_TASK_TYPES = {
    ("airflow_provider_imggen.operators.image_generation", "ImageGenerationOperator"): GENERATION,
    ("airflow_provider_imggen.sensors.image_generation", "ImageGenerationTaskSensor"): GENERATION,
    ("airflow_provider_imggen.transfers.image_generation_to_s3", "ImageGenerationToS3Operator"): TRANSFER,
}
# The connection each kind reads pixels with, and the operators' default.
CONN_FIELDS = {GENERATION: ("imggen_conn_id", DEFAULT_CONN_ID), TRANSFER: ("aws_conn_id", "aws_default")}

_dag_bag: Any = None


class RunNotFoundError(LookupError):
    """No such DAG run (or its DAG is no longer serialized)."""


def _bag() -> Any:
    global _dag_bag
    if _dag_bag is None:
        # The API server's own cached bag (LRU + TTL, [api] dag_cache_size).
        from airflow.api_fastapi.common.dagbag import create_dag_bag

        _dag_bag = create_dag_bag()
    return _dag_bag


def image_task_kinds(dag: Any) -> dict[str, str]:
    """``task_id`` → kind for the DAG's image tasks."""
    kinds = {}
    for task in dag.tasks:
        kind = IMAGE_TASK_TYPES.get(
            (str(getattr(task, "_task_module", "")), str(getattr(task, "task_type", "")))
        )
        if kind is not None:
            kinds[task.task_id] = kind
    return kinds


def _declared(task: Any, name: str) -> object:
    """The DAG's value for a field of a task (``partial`` kwargs of a mapped one), if it sets one."""
    partial = getattr(task, "partial_kwargs", None)
    if isinstance(partial, dict):
        return partial.get(name, MISSING)
    try:
        return getattr(task, name)
    except AttributeError:
        return MISSING


def load_run(session: Session, dag_id: str, run_id: str) -> RunImages:
    """Every image task instance of the run with its XCom and connection; raises :class:`RunNotFoundError`."""
    from airflow.models.dagrun import DagRun
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if dag_run is None:
        raise RunNotFoundError(f"no DAG run {run_id!r} of DAG {dag_id!r}")
    dag = _bag().get_dag_for_run(dag_run, session=session)
    if dag is None:
        raise RunNotFoundError(f"DAG {dag_id!r} is not serialized")
    kinds = image_task_kinds(dag)
    if not kinds:
        return RunImages([])
    rendered: dict[tuple[str, int], dict[str, Any]] = {}
    for row in session.execute(
        select(RTIF.task_id, RTIF.map_index, RTIF.rendered_fields).where(
            RTIF.dag_id == dag_id, RTIF.run_id == run_id, RTIF.task_id.in_(list(kinds))
        )
    ):
        if isinstance(row.rendered_fields, dict):
            rendered[(row.task_id, row.map_index)] = row.rendered_fields
    outputs = []
    query = XComModel.get_many(run_id=run_id, key="return_value", task_ids=list(kinds), dag_ids=dag_id)
    for xcom in session.scalars(query):
        xcom = cast("XComModel", xcom)
        kind = kinds[xcom.task_id]
        name, default = CONN_FIELDS[kind]
        conn_id = conn_id_of(
            rendered.get((xcom.task_id, xcom.map_index)),
            _declared(dag.get_task(xcom.task_id), name),
            name,
            default,
        )
        task_rendered = rendered.get((xcom.task_id, xcom.map_index))
        aws_conn_id = (
            conn_id_of(
                task_rendered,
                _declared(dag.get_task(xcom.task_id), "aws_conn_id"),
                "aws_conn_id",
                "aws_default",
            )
            if kind == GENERATION
            else None
        )
        outputs.append(
            TaskOutput(
                task_id=xcom.task_id,
                map_index=xcom.map_index,
                kind=kind,
                value=_value(xcom),
                conn_id=conn_id,
                aws_conn_id=aws_conn_id,
            )
        )
    return RunImages(outputs)


def _value(xcom: XComModel) -> Any:
    """The XCom's value; one that cannot be deserialized (an edited row) is :data:`UNREADABLE`."""
    from airflow.models.xcom import XComModel

    try:
        return XComModel.deserialize_value(xcom)
    except Exception:  # whatever the stored text makes the decoder raise: a broken tile, not a 500
        return UNREADABLE


def task_is_image_task(session: Session, dag_id: str, run_id: str, task_id: str) -> bool | None:
    """Whether the run's DAG has this task as an image task (None: no such task)."""
    from airflow.models.dagrun import DagRun
    from sqlalchemy import select

    dag_run = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
    if dag_run is None:
        raise RunNotFoundError(f"no DAG run {run_id!r} of DAG {dag_id!r}")
    dag = _bag().get_dag_for_run(dag_run, session=session)
    if dag is None or not dag.has_task(task_id):
        return None
    return task_id in image_task_kinds(dag)
