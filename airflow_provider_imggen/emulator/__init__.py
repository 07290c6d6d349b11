"""
Offline emulator of the image generation gateway (and of the object store serving its result URLs).

Used by the provider's tests and benchmarks, and runnable by hand:
``python -m airflow_provider_imggen.emulator --port 8000 --api-key sk-test``. Never imported by DAG code.
"""

from __future__ import annotations

from airflow_provider_imggen.emulator.app import create_app
from airflow_provider_imggen.emulator.images import render_png
from airflow_provider_imggen.emulator.server import EmulatorServer
from airflow_provider_imggen.emulator.state import EmulatorConfig, EmulatorState, FaultConfig

__all__ = ["EmulatorConfig", "EmulatorServer", "EmulatorState", "FaultConfig", "create_app", "render_png"]
