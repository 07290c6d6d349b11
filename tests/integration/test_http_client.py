"""The HTTP client recipe the hooks and the transfer share: CA trust, User-Agent, no ~/.netrc."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_imggen import __version__
from airflow_provider_imggen.http_client import (
    ca_locations,
    new_session,
    requests_verify,
    ssl_context,
    user_agent,
)


@pytest.fixture(autouse=True)
def no_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def test_without_a_bundle_both_sides_trust_certifi() -> None:
    import certifi

    assert ca_locations() == (certifi.where(), None)
    assert requests_verify() is True
    assert ssl_context().verify_mode.name == "CERT_REQUIRED"


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_directory_is_accepted_by_every_client(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    monkeypatch.setenv(variable, str(tmp_path))

    assert ca_locations() == (None, str(tmp_path))
    assert requests_verify() == str(tmp_path)
    ssl_context()  # the async hook used to hand a directory to cafile= and fail


def test_a_ca_file_is_accepted_by_every_client(monkeypatch: pytest.MonkeyPatch) -> None:
    import certifi

    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())

    assert ca_locations() == (certifi.where(), None)
    assert requests_verify() == certifi.where()
    ssl_context()


def test_the_session_ignores_the_environment_and_identifies_the_provider() -> None:
    session = new_session({"Authorization": "Bearer k"})

    assert session.trust_env is False, "~/.netrc credentials must never replace the key"
    assert session.headers["User-Agent"] == user_agent() == f"airflow-provider-imggen/{__version__}"
    assert session.headers["Authorization"] == "Bearer k"
