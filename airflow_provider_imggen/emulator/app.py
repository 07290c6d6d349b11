"""
The emulator application: one FastAPI app assembling a router per API surface, moto style.

- :mod:`~airflow_provider_imggen.emulator.gateway`: the OpenAI-compatible ``/v1/images/generations``
  and ``/v1/models``;
- :mod:`~airflow_provider_imggen.emulator.native`: DashScope's asynchronous task API (submission, status,
  cancel, task list);
- :mod:`~airflow_provider_imggen.emulator.multimodal`: DashScope's synchronous multimodal generation (and
  editing: input images in the user message);
- :mod:`~airflow_provider_imggen.emulator.image2image`: the asynchronous editing and messages-body task
  endpoints (``image2image/image-synthesis``, ``image-generation/generation``) and the refused upload policy;
- :mod:`~airflow_provider_imggen.emulator.results`: the object store serving signed result URLs;
- :mod:`~airflow_provider_imggen.emulator.admin`: ``/_emulator/...`` (log, billing, faults, tasks, reset).

Routes are thin (parse → backend → render): auth and faults come from the one dependency of
:mod:`~airflow_provider_imggen.emulator.calls`, which also logs every call; the service's rules live in
:mod:`~airflow_provider_imggen.emulator.backend`, faults in :mod:`~airflow_provider_imggen.emulator.faults`,
the parts of the state in :mod:`~airflow_provider_imggen.emulator.state`; input images in
:mod:`~airflow_provider_imggen.emulator.inputs` and :mod:`~airflow_provider_imggen.emulator.editing`; the
model table in
:mod:`~airflow_provider_imggen.emulator.models`, written from the API documentation and independent of the
provider (the emulator imports nothing from the provider and nothing from Airflow).
"""

from __future__ import annotations

from fastapi import FastAPI

from airflow_provider_imggen.emulator import admin, calls, gateway, image2image, multimodal, native, results
from airflow_provider_imggen.emulator.state import EmulatorConfig, EmulatorState, FaultConfig
from airflow_provider_imggen.emulator.transport import EmulatorFastAPI

__all__ = ["EmulatorConfig", "EmulatorState", "FaultConfig", "create_app"]


def create_app(config: EmulatorConfig | None = None) -> FastAPI:
    """Build the emulator application; its mutable state is ``app.state.emulator`` (an EmulatorState)."""
    app = EmulatorFastAPI(title="imggen emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = EmulatorState(config or EmulatorConfig())
    calls.install(app)
    for module in (gateway, native, multimodal, image2image, results, admin):
        app.include_router(module.router)
    return app
