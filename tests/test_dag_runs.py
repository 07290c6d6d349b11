"""Real Airflow runs (`airflow dags test` on SQLite) of the example and test DAGs against the emulator."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_imggen.emulator import EmulatorServer
from tests.conftest import API_KEY, TESTS_DIR, dag_run_rows, emulator_connection_env, run_dag

TEST_DAGS = TESTS_DIR / "dags" / "imggen_test_dags.py"
EXAMPLE_DAGS = TESTS_DIR.parent / "example_dags"


def xcoms(airflow_env: dict[str, str], dag_id: str) -> dict[tuple[str, int], object]:
    rows = dag_run_rows(airflow_env, dag_id, "xcom", "task_id, map_index, value")
    return {(task_id, map_index): json.loads(value) for task_id, map_index, value in rows}


def assert_key_nowhere(airflow_env: dict[str, str], dag_id: str, *outputs: str) -> None:
    """The API key is in none of: the run's output, its XComs, its rendered fields, its task log files."""
    for output in outputs:
        assert API_KEY not in output
    for table, column in (("xcom", "value"), ("rendered_task_instance_fields", "rendered_fields")):
        stored = dag_run_rows(airflow_env, dag_id, table, column)
        assert stored, f"the run stored {table}"
        assert all(API_KEY not in str(value) for (value,) in stored)
    for log_file in (Path(airflow_env["AIRFLOW_HOME"]) / "logs").rglob("*"):
        if log_file.is_file():
            assert API_KEY not in log_file.read_text(errors="replace")


def test_mapped_dag_pushes_one_metadata_xcom_per_prompt(
    airflow_env: dict[str, str], emulator: EmulatorServer
) -> None:
    from tests.dags.imggen_test_dags import PROMPTS

    finished = run_dag(airflow_env, "imggen_test_mapped", TEST_DAGS, **emulator_connection_env(emulator))
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    results = xcoms(airflow_env, "imggen_test_mapped")
    assert sorted(results) == [("generate", 0), ("generate", 1), ("generate", 2)]
    for map_index, prompt in enumerate(PROMPTS):
        metadata = results[("generate", map_index)]
        assert isinstance(metadata, dict)
        assert metadata["prompt"] == prompt
        assert (metadata["model"], metadata["size"], metadata["n"]) == ("wan2.2-t2i-flash", "512x512", 2)
        assert [image["seed"] for image in metadata["images"]] == [metadata["seed"], metadata["seed"] + 1]
        assert all(image["url"].startswith(emulator.base_url) for image in metadata["images"])
        assert len(json.dumps(metadata)) < 64 * 1024
    assert emulator.billed_images() == 6
    assert_key_nowhere(airflow_env, "imggen_test_mapped", finished.stdout, finished.stderr)


def test_prompts_render_from_dag_context(
    airflow_env: dict[str, str], emulator: EmulatorServer, tmp_path: Path
) -> None:
    finished = run_dag(
        airflow_env,
        "imggen_test_rendering",
        TEST_DAGS,
        AIRFLOW_VAR_IMGGEN_OUTPUT=str(tmp_path),
        **emulator_connection_env(emulator),
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    results = xcoms(airflow_env, "imggen_test_rendering")
    (logical_date,) = {
        row[0][:10] for row in dag_run_rows(airflow_env, "imggen_test_rendering", "dag_run", "logical_date")
    }
    from_file = results[("from_template_file", -1)]
    assert isinstance(from_file, dict)
    # prompts/poster.j2: params, ds and an upstream XCom.
    assert from_file["prompt"].strip() == f"A risograph poster for {logical_date} featuring a vintage tram"
    assert (from_file["seed"], from_file["prompt_upsampling"]) == (4242, False)

    from_context = results[("from_context", -1)]
    assert isinstance(from_context, dict)
    assert from_context["prompt"] == f"risograph skyline on {logical_date}: a vintage tram"
    assert (from_context["size"], from_context["n"], from_context["response_format"]) == (
        "768x512",
        2,
        "b64_json",
    )
    for image in from_context["images"]:
        assert image["location"].startswith(f"file://{tmp_path}/imggen_test_rendering/")
        assert Path(image["location"].removeprefix("file://")).stat().st_size == image["bytes"]
    assert_key_nowhere(airflow_env, "imggen_test_rendering", finished.stdout, finished.stderr)


@pytest.mark.parametrize("dag_id", ["example_image_generation"])
def test_example_dag_runs(airflow_env: dict[str, str], emulator: EmulatorServer, dag_id: str) -> None:
    finished = run_dag(
        {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS)},
        dag_id,
        EXAMPLE_DAGS / f"{dag_id}.py",
        **emulator_connection_env(emulator),
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    (metadata,) = xcoms(airflow_env, dag_id).values()
    assert isinstance(metadata, dict) and metadata["model"] == "qwen-image"
    assert "watercolour style" in metadata["prompt"]
    assert emulator.billed_images() == 1
