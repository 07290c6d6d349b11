"""
The Images view of the Airflow UI: thumbnails of what a generation or transfer task produced, next to the run.

A FastAPI app mounted by the provider's plugin (:mod:`airflow_provider_imggen.plugin`) under ``/imggen``,
shown in the UI through ``external_views`` on task instances and DAG runs. Imported by the API server on
the first request only: nothing here is imported when a DAG is parsed or a task runs.
"""

URL_PREFIX = "/imggen"
# The tabs' routes in the UI: /dags/<dag>/runs/<run>/tasks/<task>[/mapped/<i>]/plugin/<TASK_INSTANCE_ROUTE>
# and /dags/<dag>/runs/<run>/plugin/<DAG_RUN_ROUTE>.
TASK_INSTANCE_ROUTE = "imggen-images"
DAG_RUN_ROUTE = "imggen-gallery"
