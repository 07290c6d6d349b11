"""
Checks that happen before anything is billed: mapped (``.partial``) operators' literal arguments when the
DAG is parsed, and the ``s3_key`` templates of the storage tasks wired to a generation before it sends.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator
from tests.conftest import emulator_connection_env, run_dag
from tests.integration.operators.test_image_generation import START, make_context

HEADER = """
from datetime import datetime

from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

with DAG(dag_id="parsed", schedule=None, start_date=datetime(2026, 1, 1)):
"""


def parse(tmp_path: Path, body: str) -> dict[str, str]:
    """Load a DAG file as Airflow's DAG processor does; its import errors by file."""
    from airflow.dag_processing.dagbag import DagBag

    (tmp_path / "parsed_dag.py").write_text(HEADER + textwrap.indent(textwrap.dedent(body), "    "))
    bag = DagBag(dag_folder=str(tmp_path), safe_mode=False)
    return {str(path): str(error) for path, error in bag.import_errors.items()}


def only_error(errors: dict[str, str]) -> str:
    assert len(errors) == 1, errors
    return next(iter(errors.values()))


# -- .partial(): literal checks when the DAG is parsed -------------------------------------------------


def test_a_mapped_generation_with_a_bad_literal_fails_when_the_dag_is_parsed(tmp_path: Path) -> None:
    error = only_error(
        parse(
            tmp_path,
            """
            ImageGenerationOperator.partial(task_id="generate", model="wan2.2-t2i-flash", n=8).expand(
                prompt=["a lighthouse", "a harbour"]
            )
            """,
        )
    )
    assert "Invalid n=8" in error and "wan2.2-t2i-flash accepts a whole number 1-4" in error, error


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        pytest.param('response_format="png"', "Invalid response_format='png'", id="response-format"),
        pytest.param('endpoint="batch"', "Invalid endpoint='batch'", id="endpoint"),
        pytest.param("throttle_timeout=-1", "Invalid throttle_timeout=-1", id="throttle-timeout"),
        pytest.param(
            'response_format="b64_json", output_path="images"', "Invalid output_path='images'", id="b64-path"
        ),
        pytest.param("deferrable=1", "Invalid deferrable=1", id="flag"),
    ],
)
def test_every_literal_check_of_init_holds_for_partial(arguments: str, expected: str) -> None:
    with DAG(dag_id="unit", schedule=None, start_date=START):
        with pytest.raises(ImageGenerationValidationError) as raised:
            eval(f"ImageGenerationOperator.partial(task_id='generate', {arguments})")
        with pytest.raises(ImageGenerationValidationError) as plain:
            eval(f"ImageGenerationOperator(task_id='plain', prompt='p', {arguments})")
    assert expected in str(raised.value)
    assert str(raised.value) == str(plain.value), "the same check, the same message"


def test_partial_leaves_templated_and_expanded_values_for_run_time(tmp_path: Path) -> None:
    errors = parse(
        tmp_path,
        """
        ImageGenerationOperator.partial(
            task_id="templated", model="wan2.2-t2i-flash", n="{{ params.n }}", size="{{ params.size }}"
        ).expand(prompt=["a lighthouse"])
        ImageGenerationOperator.partial(task_id="expanded", model="wan2.2-t2i-flash").expand(
            prompt=["a lighthouse"], n=[1, 2]
        )
        ImageGenerationOperator.partial(task_id="b64", response_format="b64_json").expand(
            prompt=["a lighthouse"], output_path=["/tmp/images"]
        )
        """,
    )
    assert not errors, errors


def test_a_mapped_transfer_with_an_unknown_key_placeholder_fails_when_the_dag_is_parsed(
    tmp_path: Path,
) -> None:
    error = only_error(
        parse(
            tmp_path,
            """
            generate = ImageGenerationOperator(task_id="generate", prompt="a lighthouse")
            ImageGenerationToS3Operator.partial(
                task_id="store", s3_bucket="bucket", s3_key="images/{{ ds }}/{idx}.png"
            ).expand(generation=[generate.output])
            """,
        )
    )
    assert "s3_key" in error and "unknown placeholder {idx}" in error and "{index}" in error, error


def test_a_mapped_transfer_checks_its_other_literals_when_the_dag_is_parsed() -> None:
    with (
        DAG(dag_id="unit", schedule=None, start_date=START),
        pytest.raises(ImageGenerationValidationError) as raised,
    ):
        ImageGenerationToS3Operator.partial(task_id="store", s3_key="k", max_concurrency=0)
    assert raised.value.parameter == "max_concurrency"


# -- the storage tasks' keys, checked by the generation before it pays ----------------------------------


def wired(**transfer: Any) -> ImageGenerationOperator:
    """A generation and a transfer storing its XCom (``mapped``: through .partial().expand())."""
    mapped = transfer.pop("mapped", None)
    with DAG(dag_id="unit", schedule=None, start_date=START):
        generate = ImageGenerationOperator(
            task_id="generate", prompt="a lighthouse", model="wan2.2-t2i-flash"
        )
        if mapped is not None:
            ImageGenerationToS3Operator.partial(
                task_id="store", s3_bucket="bucket", generation=generate.output
            ).expand(s3_key=mapped)
        else:
            ImageGenerationToS3Operator(
                task_id="store", s3_bucket="bucket", generation=generate.output, s3_key="images/{index}.png"
            )
    return generate


def execute(operator: ImageGenerationOperator) -> dict[str, Any]:
    context = make_context(operator)
    operator.render_template_fields(context)  # type: ignore[arg-type]
    return operator.execute(context)  # type: ignore[arg-type]


def test_a_wired_transfer_s_unknown_placeholder_fails_the_generation_before_anything_is_billed(
    imggen_conn: EmulatorServer,
) -> None:
    generate = wired(mapped=["images/{ds}/{index}.png"])

    with pytest.raises(ImageGenerationValidationError) as raised:
        execute(generate)

    assert raised.value.parameter == "s3_key"
    assert "unknown placeholder {ds}" in str(raised.value) and "{map_index}" in str(raised.value)
    assert imggen_conn.billed_images() == 0
    assert not imggen_conn.requests_log(), "nothing was sent"


def test_a_key_set_after_the_transfer_was_created_is_checked_too(dashscope_conn: EmulatorServer) -> None:
    generate = wired()
    generate.dag.get_task("store").s3_key = "images/{index:x}.png"  # type: ignore[attr-defined]

    with pytest.raises(ImageGenerationValidationError, match=r"format spec \{index:x\}"):
        execute(generate)

    assert dashscope_conn.billed_images() == 0


def test_well_formed_wired_keys_let_the_generation_run(imggen_conn: EmulatorServer) -> None:
    generate = wired(mapped=["images/{{ ds }}/{index}.png", "{{ params.prefix }}/{sha256}.{ext}"])

    metadata = execute(generate)

    assert len(metadata["images"]) == 1 and imggen_conn.billed_images() == 1


# -- the S3 link of a failed transfer ---------------------------------------------------------------------


def test_a_failed_transfer_logs_no_error_about_its_link_s_xcom(
    airflow_env: dict[str, str], emulator: EmulatorServer, tmp_path: Path
) -> None:
    """The transfer fails (a result URL outside the policy); its log says why, and nothing about an XCom."""
    dag_file = tmp_path / "imggen_failed_store.py"
    dag_file.write_text(
        HEADER.replace('dag_id="parsed"', 'dag_id="imggen_failed_store"')
        + textwrap.indent(
            textwrap.dedent(
                """
                ImageGenerationToS3Operator(
                    task_id="store",
                    generation="https://images.example.invalid/a.png",
                    s3_bucket="bucket",
                    s3_key="images/a.png",
                    replace=True,
                    imggen_conn_id=None,
                    retries=0,
                )
                """
            ),
            "    ",
        )
    )
    finished = run_dag(
        {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(tmp_path)},
        "imggen_failed_store",
        dag_file,
        **emulator_connection_env(emulator),
    )
    output = finished.stdout + finished.stderr
    assert "images.example.invalid" in output, output[-3000:]
    assert "failed" in output.lower(), output[-3000:]
    assert "XCom not found" not in output, output[-3000:]
    assert "Failed to push an xcom for task operator extra link" not in output
