"""
Product shots: one product photo in S3 -> three edited scenes of that very product -> S3, with their
metadata (which input each image was made from, by sha256).

The editing models take the photo as an input image: ``images=`` names it where it is kept (an ``s3://``
URI here; an ``ObjectStoragePath``, an https URL or an upstream ``ImageGenerationToS3Operator``'s XCom work
the same). The worker reads it once, checks it (format, size, dimensions) before anything is billed, and
sends it inline or as a short-lived presigned URL; XCom records its URI and sha256, never its bytes.

Needs an ``imggen_default`` connection with ``api_style`` ``dashscope`` (README, "Editing images"), an
``aws_default`` connection whose bucket holds the product photo, or the offline stack: ``make demo`` runs
it against the emulator and moto_server and shows each scene beside its source.
"""

from __future__ import annotations

from typing import Any

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_imggen.operators.image_generation import ImageGenerationOperator
from airflow_provider_imggen.transfers.image_generation_to_s3 import ImageGenerationToS3Operator

with DAG(
    dag_id="example_product_shots",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # Input images are read again by a retry (nothing was billed when reading fails); a retry of the edit
    # itself reconnects to what the first try paid for, as for any generation.
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=10)},
    params={
        "bucket": "imggen-content",
        "product": "s3://imggen-content/products/mug.png",
        "model": "qwen-image-edit-plus",
        "scenes": [
            "on a marble kitchen counter, morning light through a window",
            "on a picnic blanket in a sunny park",
            "on a dark slate table, dramatic studio lighting",
        ],
    },
    tags=["example", "imggen", "s3", "editing"],
) as dag:

    @task
    def scene_prompts(params: dict[str, Any]) -> list[str]:
        """One editing instruction per scene: keep the product, change its surroundings."""
        return [
            f"Keep the product in the image exactly as it is and place it {scene}"
            for scene in params["scenes"]
        ]

    edited = ImageGenerationOperator.partial(
        task_id="edit",
        model="{{ params.model }}",
        images=["{{ params.product }}"],
        negative_prompt="distorted product, extra objects, text",
    ).expand(prompt=scene_prompts())

    stored = ImageGenerationToS3Operator(
        task_id="store_in_s3",
        generation=edited.output,
        s3_bucket="{{ params.bucket }}",
        s3_key="product-shots/{{ ds }}/{generation}-{index}-seed{seed}.{ext}",
    )

    @task
    def summarize(stored_images: list[dict[str, Any]], params: dict[str, Any]) -> list[str]:
        """Where each scene landed, and from which product photo."""
        lines = [f"{image['s3_uri']}: {image['width']}x{image['height']}" for image in stored_images]
        print(f"{len(lines)} scenes of {params['product']}:", *lines, sep="\n  ")
        return lines

    summarize(stored.output)
