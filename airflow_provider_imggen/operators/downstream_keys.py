"""
The ``s3_key`` templates of the storage tasks wired to a generation, checked before the generation pays.

An unknown placeholder in an ``ImageGenerationToS3Operator``'s ``s3_key`` would otherwise fail only the
storage task, after the images were billed. The transfer checks a literal key when the DAG is parsed; a
key it cannot check then (given to ``.expand()``, or set after the operator was created) is checked here,
by the transfer's own checker, on the template as written: Jinja is not rendered, its ``{{ }}`` blocks
are skipped, and only the ``{name}`` placeholders are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator


def check_downstream_keys(generation: BaseOperator) -> None:
    """
    Check the key templates of the storage tasks whose ``generation`` argument is this task's XCom.

    :raises ImageGenerationValidationError: an ``s3_key`` with an unknown or malformed placeholder, naming
        ``s3_key``, the template and the placeholders allowed
    """
    from airflow_provider_imggen.transfers.keys import check_template

    for task_id, s3_key in _wired_keys(generation):
        try:
            check_template(s3_key)
        except Exception:
            generation.log.error(
                "The s3_key of %s, which stores this task's images, cannot be used: nothing is sent or "
                "billed. Fix the key template first",
                task_id,
            )
            raise


def _wired_keys(generation: BaseOperator) -> Iterator[tuple[str, str]]:
    """(storage task id, s3_key template) of each downstream transfer reading this task's XCom."""
    if not generation.has_dag() or not generation.downstream_task_ids:
        return
    from airflow.sdk.definitions.mappedoperator import MappedOperator
    from airflow.sdk.definitions.xcom_arg import XComArg

    from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

    dag = generation.dag
    for task_id in sorted(generation.downstream_task_ids):
        task: Any = dag.task_dict.get(task_id)
        if isinstance(task, ImageGenerationToS3Operator):
            given: dict[str, Any] = {"generation": task.generation, "s3_key": task.s3_key}
            mapped: dict[str, Any] = {}
        elif isinstance(task, MappedOperator) and _is_transfer(
            task.operator_class, ImageGenerationToS3Operator
        ):
            given = dict(task.partial_kwargs)
            mapped = dict(getattr(task.expand_input, "value", None) or {})
        else:
            continue
        source = given.get("generation", mapped.get("generation"))
        if not any(ref.task_id == generation.task_id for ref, _ in XComArg.iter_xcom_references(source)):
            continue
        templates = [given["s3_key"]] if "s3_key" in given else mapped.get("s3_key")
        if isinstance(templates, list | tuple):
            yield from ((task_id, template) for template in templates if isinstance(template, str))


def _is_transfer(operator_class: object, transfer: type) -> bool:
    return isinstance(operator_class, type) and issubclass(operator_class, transfer)
