"""
The package as installed: every module imports, and under ``make matrix`` the suite runs against the
built wheel installed in a fresh venv, not against the checkout (.ci/matrix sets IMGGEN_EXPECT_INSTALLED_IN).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from pathlib import Path

import pytest

import airflow_provider_imggen

PUBLIC_MODULES = {
    "airflow_provider_imggen.get_provider_info",
    "airflow_provider_imggen.hooks.image_generation",
    "airflow_provider_imggen.operators.image_generation",
    "airflow_provider_imggen.sensors.image_generation",
    "airflow_provider_imggen.triggers.image_generation",
    "airflow_provider_imggen.transfers.image_generation_to_s3",
    "airflow_provider_imggen.plugin",
    "airflow_provider_imggen.emulator",
}


@pytest.mark.matrix
def test_every_module_of_the_package_imports() -> None:
    names = {
        module.name
        for module in pkgutil.walk_packages(airflow_provider_imggen.__path__, "airflow_provider_imggen.")
    }
    assert names >= PUBLIC_MODULES
    for name in sorted(names):
        importlib.import_module(name)
    print(f"\nairflow_provider_imggen from {airflow_provider_imggen.__file__}: {len(names)} modules imported")


@pytest.mark.matrix
def test_the_suite_tests_the_installed_package_under_make_matrix() -> None:
    expected = os.environ.get("IMGGEN_EXPECT_INSTALLED_IN")
    if not expected:
        pytest.skip("only under make matrix, which installs the built wheel")
    location = Path(airflow_provider_imggen.__file__).resolve()
    assert location.is_relative_to(Path(expected).resolve()), f"imported from {location}, not the wheel"
    assert not (location.parent.parent / "pyproject.toml").exists(), "a source tree, not site-packages"
