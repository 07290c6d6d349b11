"""
The emulator's layout (moto style) holds: every API route gets auth and faults from the one dependency of
``calls.py``, the request log is written in one place, and no module grows past about 400 lines.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.routing import APIRoute

from airflow_provider_imggen.emulator import calls, create_app

PACKAGE = Path(calls.__file__).resolve().parent


def test_every_api_route_goes_through_the_one_call_dependency() -> None:
    app = create_app()
    routes = [
        route
        for route in app.routes
        if isinstance(route, APIRoute) and not route.path.startswith("/_emulator")
    ]
    assert len(routes) >= 7
    for route in routes:
        modules = {
            dependency.call.__module__ for dependency in route.dependant.dependencies if dependency.call
        }
        assert calls.__name__ in modules, route.path


def test_the_request_log_is_written_in_one_place() -> None:
    writers = [
        path.name
        for path in PACKAGE.glob("*.py")
        if re.search(r"\.log\.record\(|\brecord\(state", path.read_text(encoding="utf-8"))
    ]
    assert writers == ["calls.py"]


def test_no_module_over_about_400_lines() -> None:
    sizes = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 400, sizes
