"""
example_dags/example_product_shots.py under a real `airflow dags test`: a product photo in moto_server's S3
-> three edited scenes from the emulator (which fetched the photo through its presigned URL) -> S3. Each
stored scene is proven made from that photo, and neither the photo's bytes nor its presigned URL is left
anywhere the run keeps (XCom, rendered fields, task logs).
"""

from __future__ import annotations

import re

from airflow_provider_imggen.emulator import EmulatorServer
from tests.conftest import emulator_connection_env, run_dag
from tests.input_images import inputs_chunk, png, sha256
from tests.s3_fixtures import S3Bucket, aws_connection
from tests.system.test_dag_runs import EXAMPLE_DAGS, assert_key_nowhere, dag_run_rows, log_text, xcoms

DAG_ID = "example_product_shots"
# A presigned S3 URL's credential: its signature (or a V2 one), unmasked.
PRESIGNED_SECRET = re.compile(r"(X-Amz-Signature|Signature)=(?!\*\*\*)[0-9A-Za-z%+/=]{16,}")


def test_example_product_shots_edits_a_photo_from_s3_into_three_scenes(
    airflow_env: dict[str, str], emulator: EmulatorServer, s3: S3Bucket
) -> None:
    photo = png(1024, 1024, noise=True)  # over 1 MiB: sent as a presigned URL, fetched by the service
    s3.client.put_object(Bucket=s3.name, Key="products/mug.png", Body=photo)
    finished = run_dag(
        {**airflow_env, "AIRFLOW__CORE__DAGS_FOLDER": str(EXAMPLE_DAGS)},
        DAG_ID,
        EXAMPLE_DAGS / f"{DAG_ID}.py",
        conf={"bucket": s3.name, "product": f"s3://{s3.name}/products/mug.png"},
        AIRFLOW_CONN_AWS_DEFAULT=aws_connection(s3.endpoint_url),
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        **emulator_connection_env(emulator, api_style="dashscope"),
    )
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    results = xcoms(airflow_env, DAG_ID)
    stored = results[("store_in_s3", -1)]
    assert isinstance(stored, list) and len(stored) == 3
    for entry in stored:
        body = s3.read(entry["key"])
        assert sha256(body) == entry["sha256"]
        assert inputs_chunk(body) == [sha256(photo)], "each scene is made from the photo"
        assert s3.head(entry["key"])["Metadata"]["input-sha256"] == sha256(photo)
    for map_index in range(3):
        generation = results[("edit", map_index)]
        assert isinstance(generation, dict)
        assert generation["input_images"] == [
            {
                "uri": f"s3://{s3.name}/products/mug.png",
                "sha256": sha256(photo),
                "bytes": len(photo),
                "content_type": "image/png",
                "width": 1024,
                "height": 1024,
            }
        ]
    assert emulator.billed_images() == 3
    kept = [
        finished.stdout,
        finished.stderr,
        log_text(airflow_env, DAG_ID),
        *(str(row) for row in dag_run_rows(airflow_env, DAG_ID, "xcom", "value")),
        *(
            str(row)
            for row in dag_run_rows(airflow_env, DAG_ID, "rendered_task_instance_fields", "rendered_fields")
        ),
    ]
    for text in kept:
        assert not PRESIGNED_SECRET.search(text), PRESIGNED_SECRET.search(text)
        assert "data:image/png;base64" not in text
    assert_key_nowhere(airflow_env, DAG_ID, finished.stdout, finished.stderr)
