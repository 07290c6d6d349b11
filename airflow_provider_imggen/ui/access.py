"""
Who may see a DAG's images: Airflow's own auth manager decides, per DAG, as for its task instances and XCom.

The user comes from the same JWT the Airflow UI holds (the ``_token`` cookie the browser sends to the
iframe, or an ``Authorization: Bearer`` header for API clients), through the API server's ``get_user``.
Reading images requires both ``GET`` on the DAG's task instances and ``GET`` on its XComs: the images
are what those XComs name. With FAB or Keycloak, DAG-level permissions therefore apply unchanged.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, status

# Checked in this order; both must allow.
REQUIRED_ACCESS = ("TASK_INSTANCE", "XCOM")


def authorize(user: Any, dag_id: str) -> None:
    """Raise 403 unless the auth manager lets ``user`` read ``dag_id``'s task instances and XComs."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel

    manager = get_auth_manager()
    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    for entity in REQUIRED_ACCESS:
        if not manager.is_authorized_dag(
            method="GET", access_entity=DagAccessEntity[entity], details=details, user=user
        ):
            raise HTTPException(status.HTTP_403_FORBIDDEN, "Forbidden: you may not read this DAG's images")
