"""DAGs the tests run for real with `airflow dags test` against the emulator."""

from __future__ import annotations

import os

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

START = pendulum.datetime(2026, 1, 1, tz="UTC")
PROMPTS = ["a red fox in the snow", "a lighthouse at dawn", "a bowl of ramen, top view"]

with DAG(dag_id="imggen_test_mapped", schedule=None, start_date=START, catchup=False):
    ImageGenerationOperator.partial(task_id="generate", model="wan2.2-t2i-flash", size="512x512", n=2).expand(
        prompt=PROMPTS
    )

with DAG(
    dag_id="imggen_test_rendering",
    schedule=None,
    start_date=START,
    catchup=False,
    params={"style": "risograph", "seed": "4242"},
    template_searchpath=[os.path.join(os.path.dirname(__file__), "prompts")],
):

    @task
    def pick_subject() -> str:
        return "a vintage tram"

    subject = pick_subject()
    from_file = ImageGenerationOperator(
        task_id="from_template_file",
        prompt="poster.j2",
        model="qwen-image",
        seed="{{ params.seed }}",
        prompt_upsampling="{{ 'false' }}",
    )
    from_context = ImageGenerationOperator(
        task_id="from_context",
        prompt="{{ params.style }} skyline on {{ ds }}: {{ ti.xcom_pull(task_ids='pick_subject') }}",
        model="wan2.2-t2i-plus",
        size="{{ '768*512' }}",
        n="{{ 1 + 1 }}",
        response_format="b64_json",
        output_path="{{ var.value.get('imggen_output', '/tmp/imggen-missing') }}",
    )
    subject >> [from_file, from_context]
