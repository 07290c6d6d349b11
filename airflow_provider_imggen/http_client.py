"""
How the provider's HTTP clients are built: the hooks' (``requests`` and ``httpx``) and the transfer's
downloads (``urllib3`` pools pinned to checked addresses) trust the same CA certificates, send the same
User-Agent, and never read ``~/.netrc``.

What they do not share is deliberate: the hooks follow the environment's proxy settings (the API may only
be reachable through one), while the transfer connects straight to the addresses its result-URL policy
checked (a proxy would resolve host names itself, out of the policy's reach).

Retries are shared too, in :mod:`~airflow_provider_imggen.retry_policy`. Stdlib only at import time.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

    import requests


def user_agent() -> str:
    from airflow_provider_imggen import __version__

    return f"airflow-provider-imggen/{__version__}"


def _environment_bundle() -> str | None:
    """The CA bundle the environment names, as requests reads it: REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def ca_locations() -> tuple[str | None, str | None]:
    """
    ``(CA file, CA directory)`` to verify servers with: the environment's bundle (a file or a directory, as
    requests accepts), else certifi's bundle (what requests and httpx use by default).
    """
    bundle = _environment_bundle()
    if bundle:
        return (None, bundle) if os.path.isdir(bundle) else (bundle, None)
    import certifi

    return str(certifi.where()), None


def ssl_context() -> ssl.SSLContext:
    """A verifying TLS context trusting :func:`ca_locations` (for ``httpx``)."""
    import ssl

    cafile, capath = ca_locations()
    return ssl.create_default_context(cafile=cafile, capath=capath)


def requests_verify() -> str | bool:
    """``verify`` for ``requests``: the environment's bundle (file or directory), else requests' default."""
    return _environment_bundle() or True


def new_session(headers: dict[str, str]) -> requests.Session:
    """
    A ``requests`` session sending ``headers`` (and the User-Agent) on every request.

    ``trust_env`` is off: requests would otherwise let ``~/.netrc`` credentials replace the Authorization
    header. Callers resolve proxies (and ``verify``, :func:`requests_verify`) per request instead.
    """
    import requests

    session = requests.Session()
    session.trust_env = False
    session.headers.update({"User-Agent": user_agent(), **headers})
    return session
