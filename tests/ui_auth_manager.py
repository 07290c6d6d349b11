"""
An auth manager that refuses one user one DAG, the way FAB or Keycloak DAG-level permissions do.

SimpleAuthManager's roles are global (a viewer reads every DAG); this subclass adds the per-DAG refusal
the Images view must honour. The browser test runs a second API server with it (``[core] auth_manager``;
``airflow standalone`` forces SimpleAuthManager).
"""

from __future__ import annotations

from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

# (user name, DAG id) pairs refused every access.
DENIED = {("outsider", "example_content_pipeline")}


class DagDenyingAuthManager(SimpleAuthManager):
    """SimpleAuthManager, except that ``outsider`` may not see ``example_content_pipeline`` at all."""

    def is_authorized_dag(
        self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None
    ) -> bool:
        if details is not None and (user.get_name(), details.id) in DENIED:
            return False
        return super().is_authorized_dag(
            method=method, user=user, access_entity=access_entity, details=details
        )
