"""example_dags/example_models.py under a real `airflow dags test`, against the emulator (offline)."""

from __future__ import annotations

from airflow_provider_imggen.emulator import EmulatorServer
from tests.conftest import emulator_connection_env, run_dag
from tests.system.test_dag_runs import EXAMPLE_DAGS, assert_key_nowhere, xcoms

# task_id -> (model, size, n, the emulator's endpoint)
EXPECTED = {
    "qwen_image": ("qwen-image", "1664x928", 1, "submit"),
    "qwen_image_plus_sync": ("qwen-image-plus", "1328x1328", 1, "multimodal"),
    "qwen_image_max": ("qwen-image-max", "928x1664", 1, "multimodal"),
    "qwen_image_2": ("qwen-image-2.0", "1536x1024", 2, "multimodal"),
    "wan25_banner": ("wan2.5-t2i-preview", "1760x440", 1, "submit"),
    "wan2_2_t2i_flash": ("wan2.2-t2i-flash", "1024x768", 2, "submit"),
    "wanx2_1_t2i_turbo": ("wanx2.1-t2i-turbo", "1024x768", 2, "submit"),
    "wanx2_0_t2i_turbo": ("wanx2.0-t2i-turbo", "1024x768", 2, "submit"),
}


def test_example_models_runs_every_family_on_its_endpoint(
    airflow_env: dict[str, str], emulator: EmulatorServer
) -> None:
    # The real quota is on: qwen-image-max's 2 a minute and the rest's 2/s hold for one run.
    emulator.set_faults(quotas=True)
    finished = run_dag(
        {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS)},
        "example_models",
        EXAMPLE_DAGS / "example_models.py",
        conf={"watermark": True},
        **emulator_connection_env(emulator, api_style="dashscope", workspace="ws-example"),
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    results = xcoms(airflow_env, "example_models")
    assert set(results) == {(task_id, -1) for task_id in EXPECTED}
    for task_id, (model, size, n, _) in EXPECTED.items():
        metadata = results[(task_id, -1)]
        assert isinstance(metadata, dict)
        assert (metadata["model"], metadata["size"], metadata["n"]) == (model, size, n), task_id
        assert len(metadata["images"]) == n and metadata["warnings"] == []
    billable = [entry for entry in emulator.requests_log() if entry["kind"] in ("submit", "multimodal")]
    assert sorted((entry["model"], entry["kind"]) for entry in billable) == sorted(
        (model, kind) for model, _, _, kind in EXPECTED.values()
    ), "each model went to its endpoint, once"
    assert {entry["workspace"] for entry in emulator.requests_log() if entry["path"].startswith("/api/")} == {
        "ws-example"
    }
    assert emulator.billed_images() == sum(n for _, _, n, _ in EXPECTED.values())
    assert_key_nowhere(airflow_env, "example_models", finished.stdout, finished.stderr)
