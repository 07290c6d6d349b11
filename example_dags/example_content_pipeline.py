"""
A scheduled content pipeline: today's prompts -> one mapped generation per prompt -> images stored in S3
with their metadata -> a summary built from that metadata.

Needs an ``imggen_default`` connection and an ``aws_default`` connection whose bucket exists
(``make demo`` runs it offline against the emulator and a local S3 endpoint).
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

with DAG(
    dag_id="example_content_pipeline",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # The hook already retries throttling and server errors with backoff; a task retry is the second line
    # of defence. Retrying the storage task downloads again from the result URLs: nothing is billed twice.
    default_args={"retries": 3, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "bucket": "imggen-content",
        "model": "wan2.2-t2i-flash",
        "subjects": [
            "a ceramic coffee mug on a wooden table, morning light",
            "a pair of running shoes on wet asphalt, neon reflections",
            "a bouquet of tulips in a glass vase, pastel background",
        ],
    },
    tags=["example", "imggen", "s3"],
) as dag:

    @task
    def todays_prompts(params: dict[str, Any], ds: str) -> list[str]:
        """One product-shot prompt per subject, dated so every day's campaign differs."""
        return [f"Product photo, {subject}, campaign of {ds}" for subject in params["subjects"]]

    generated = ImageGenerationOperator.partial(
        task_id="generate",
        model="{{ params.model }}",
        size="1024*768",
        n=2,
        negative_prompt="low resolution, watermark, text artefacts",
    ).expand(prompt=todays_prompts())

    stored = ImageGenerationToS3Operator(
        task_id="store_in_s3",
        generation=generated.output,
        s3_bucket="{{ params.bucket }}",
        s3_key="campaigns/{{ ds }}/{generation}-{index}-seed{seed}.{ext}",
    )

    @task
    def summarize(stored_images: list[dict[str, Any]]) -> dict[str, Any]:
        """What a downstream publisher needs: where each image is, and what it is."""
        summary = {
            "images": len(stored_images),
            "bytes": sum(image["bytes"] for image in stored_images),
            "models": sorted({image["model"] for image in stored_images}),
            "objects": [image["s3_uri"] for image in stored_images],
        }
        for image in stored_images:
            print(
                f"{image['s3_uri']}: {image['width']}x{image['height']} {image['content_type']}, "
                f"{image['bytes']} bytes, seed {image['seed']}, sha256 {image['sha256'][:16]}..."
            )
        return summary

    summarize(stored.output)
