"""
One task per model family on DashScope's native API (connection ``api_style`` ``dashscope``), each with the
sizes, ``n`` and prompt length its family allows (README, "Models"):

- qwen-image on the asynchronous task API (its default), qwen-image-plus asked on the synchronous endpoint;
- qwen-image-max and the qwen-image 2.0 family, served only by the synchronous endpoint (the operator
  generates in the worker: there is no task to defer on);
- wan2.5-t2i-preview with a 4:1 banner and a long prompt; wan2.2 and the wanx2.1 / wanx2.0 models on the
  task API.

Needs an ``imggen_default`` connection with ``api_style`` ``dashscope``: the Beijing base URL
``https://dashscope.aliyuncs.com/api/v1`` (or Singapore's, US's, a workspace endpoint; see README
"Regions and workspaces"), or the offline emulator (``python -m airflow_provider_imggen.emulator``, Host its
root URL). ``tests/system/test_example_models.py`` runs it against the emulator with ``airflow dags test``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator

BANNER_PROMPT = (
    "A panoramic banner of a harbour town at dawn, fishing boats, gulls, soft pastel light, "
    "hand-lettered title '{{ params.title }}' across the sky. "
) * 8  # about 1,000 characters: only wan2.5-t2i-preview takes more than 800

with DAG(
    dag_id="example_models",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"title": "Harbour Days", "watermark": False},
    tags=["example", "imggen"],
) as dag:
    # Both endpoints serve qwen-image and qwen-image-plus; the task API is the default.
    ImageGenerationOperator(
        task_id="qwen_image",
        prompt="A poster for {{ params.title }}, bold lettering",
        model="qwen-image",
        size="1664*928",
    )
    ImageGenerationOperator(
        task_id="qwen_image_plus_sync",
        prompt="A square sticker for {{ params.title }}",
        model="qwen-image-plus",
        size="1328*1328",
        endpoint="sync",
    )
    # Synchronous endpoint only; 2 requests a minute per account.
    ImageGenerationOperator(
        task_id="qwen_image_max",
        prompt="A premium cover image for {{ params.title }}",
        model="qwen-image-max",
        size="928*1664",
        watermark="{{ params.watermark }}",
    )
    # Any size from 512*512 to 2048*2048 pixels, up to 6 images.
    ImageGenerationOperator(
        task_id="qwen_image_2",
        prompt="Two thumbnails for {{ params.title }}",
        model="qwen-image-2.0",
        size="1536*1024",
        n=2,
    )
    # Prompts up to 2000 characters, aspect ratios from 1:4 to 4:1.
    ImageGenerationOperator(
        task_id="wan25_banner",
        prompt=BANNER_PROMPT,
        model="wan2.5-t2i-preview",
        size="1760*440",
    )
    for model in ("wan2.2-t2i-flash", "wanx2.1-t2i-turbo", "wanx2.0-t2i-turbo"):
        ImageGenerationOperator(
            task_id=model.replace(".", "_").replace("-", "_"),
            prompt="A postcard of {{ params.title }}",
            model=model,
            size="1024*768",
            n=2,
            negative_prompt="blurry, low resolution",
        )
