"""
The storage task's extra links: the first stored image in the S3 console, and the task's *Images* view.

As the amazon provider's links (``BaseAwsLink``): the task persists what the link needs in XCom when it
has stored something, and the link formats it, never failing the task. Airflow asks for the links on the
worker when the task ends, failed or not, on the operator that ran: that operator knows whether it
stored anything, so a failed transfer's link reads no XCom (the XCom API logs an ``[error]`` for a
missing one, which would sit next to every real failure).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator, Context
    from airflow.sdk.types import TaskInstanceKey

# Set on an operator instance while it runs in this process: the link it persisted, or None for none yet.
_PERSISTED = "_imggen_s3_image_link"


def is_aws_endpoint(endpoint_url: str | None) -> bool:
    """Whether an S3 endpoint is AWS's own (none set, or a host under amazonaws.com): the console shows it."""
    if not endpoint_url:
        return True
    host = (urlsplit(endpoint_url if "://" in endpoint_url else f"//{endpoint_url}").hostname or "").lower()
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


class S3ImageLink(BaseOperatorLink):
    """
    Link to the first stored image in the S3 console; empty when the AWS connection's endpoint is not AWS's
    (MinIO, moto and other S3-compatible stores have no console there: the "Images" link shows them).
    """

    name: ClassVar[str] = "S3 object"
    key: ClassVar[str] = "s3_image_link"

    @staticmethod
    def format_link(bucket: str, key: str, region_name: str | None) -> str:
        return (
            f"https://console.aws.amazon.com/s3/object/{quote(bucket, safe='')}"
            f"?region={quote(region_name or 'us-east-1', safe='')}&prefix={quote(key, safe='/')}"
        )

    @classmethod
    def start(cls, operator: BaseOperator) -> None:
        """The operator starts running here: until :meth:`persist`, there is nothing to link to."""
        operator.__dict__[_PERSISTED] = None

    @classmethod
    def persist(cls, context: Context, operator: BaseOperator, **value: Any) -> None:
        """Keep what the link shows (``bucket``, ``key``, ``region_name``, ``endpoint_url``) in XCom."""
        if not operator.do_xcom_push:
            return
        context["ti"].xcom_push(key=cls.key, value=value)
        operator.__dict__[_PERSISTED] = value

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        try:
            stored = self._stored(operator, ti_key)
            if not isinstance(stored, dict) or not stored.get("bucket") or not stored.get("key"):
                return ""
            if not is_aws_endpoint(stored.get("endpoint_url")):
                return ""
            return self.format_link(stored["bucket"], stored["key"], stored.get("region_name"))
        except Exception:  # a convenience: never fail or clutter a task's end over it
            return ""

    def _stored(self, operator: BaseOperator, ti_key: TaskInstanceKey) -> Any:
        if _PERSISTED in vars(operator):
            # The operator that ran: no XCom to read when it stored nothing (a failed transfer).
            return vars(operator)[_PERSISTED]
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=self.key)


class ImagesViewLink(BaseOperatorLink):
    """Link to the task instance's *Images* tab in the Airflow UI (the provider's plugin serves it)."""

    name: ClassVar[str] = "Images"

    @staticmethod
    def format_link(base_url: str, dag_id: str, run_id: str, task_id: str, map_index: int | None) -> str:
        from airflow_provider_imggen.ui import TASK_INSTANCE_ROUTE

        path = f"/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}/tasks/{quote(task_id, safe='')}"
        if map_index is not None and map_index >= 0:
            path += f"/mapped/{map_index}"
        return f"{base_url.rstrip('/')}{path}/plugin/{TASK_INSTANCE_ROUTE}"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.configuration import conf

        base_url = conf.get("api", "base_url", fallback="") or ""
        return self.format_link(base_url, ti_key.dag_id, ti_key.run_id, ti_key.task_id, ti_key.map_index)
