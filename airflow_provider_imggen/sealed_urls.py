"""
Signed result URLs in XCom: shown masked, kept sealed with Airflow's Fernet key.

A signed result URL is a bearer credential (whoever holds it downloads the image until it expires), and
Airflow shows XCom values, rendered fields and logs to anyone with read access to them. So an image record
carries its URL twice: ``url``, masked (:func:`~airflow_provider_imggen.utils.mask_url`: every query value
replaced by ``***``, user credentials removed), and ``url_sealed``, the full URL encrypted with Airflow's
Fernet key (``[core] fernet_key``, the key that encrypts connection passwords in the metadata database).
Only a process holding that key (a worker running the transfer) can open it.

Without a usable Fernet key on the generating worker nothing is sealed: a native task's images are read
again from the task by the transfer (by ``generation_task_id``), and the OpenAI-compatible path, which has
no task to read again, refuses to generate before anything is billed.

Stdlib only at import time: DAG files import the modules that import this one.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from typing import TYPE_CHECKING, cast

from airflow_provider_imggen.exceptions import ResultUrlSealError
from airflow_provider_imggen.utils import url_secrets

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk.crypto import FernetProtocol
    from pydantic import JsonValue

_MIN_SECRET_CHARS = 5
NO_KEY_HELP = (
    "set [core] fernet_key (AIRFLOW__CORE__FERNET_KEY) to the deployment's Fernet key on every worker that "
    "generates or stores images (see docs/security.md)"
)


def _fernet() -> FernetProtocol | None:
    """Airflow's Fernet (the task SDK's on Airflow 3.3+), or None when no usable key is configured."""
    try:
        try:
            from airflow.sdk.crypto import get_fernet
        except ImportError:  # Airflow < 3.3: the core's, which reads the same option
            from airflow.models.crypto import get_fernet
        fernet = get_fernet()
    except Exception:  # a malformed key, or an unexpanded '{FERNET_KEY}' placeholder: no usable key
        return None
    return fernet if getattr(fernet, "is_encrypted", False) else None


def can_seal() -> bool:
    """Whether this process has a Fernet key to seal result URLs with."""
    return _fernet() is not None


def seal(url: str) -> str | None:
    """The URL encrypted with Airflow's Fernet key (URL-safe text), or None when no key is configured."""
    fernet = _fernet()
    if fernet is None:
        return None
    return fernet.encrypt(url.encode()).decode("ascii")


def unseal(token: str, *, label: str) -> str:
    """
    The URL a :func:`seal` token holds; its secrets are registered with the secrets masker.

    Every key of a rotated ``fernet_key`` (``new,old``) opens it.

    :param token: the ``url_sealed`` value
    :param label: names the image in the error
    :raises ResultUrlSealError: no usable key here, or none of the configured keys opens the token
    """
    fernet = _fernet()
    if fernet is None:
        raise ResultUrlSealError(
            f"The result URL of {label} is sealed with Airflow's Fernet key, and this worker has none: "
            f"{NO_KEY_HELP}"
        )
    from cryptography.fernet import InvalidToken

    try:
        url = fernet.decrypt(token.encode("ascii")).decode()
    except (InvalidToken, UnicodeError, ValueError, TypeError):
        raise ResultUrlSealError(
            f"The result URL of {label} was sealed with a Fernet key this worker does not have (the key was "
            "rotated without keeping the old one in [core] fernet_key as 'new,old', or the workers' keys "
            "differ). Re-run the generation task for new results, or restore the key"
        ) from None
    register_secrets(url)
    return url


# True: register each URL's secrets at once; False: not at all (the triggerer, see not_registering); a
# list: collect the URLs, registered together when the registered_together block ends.
_REGISTERING: contextvars.ContextVar[bool | list[str]] = contextvars.ContextVar(
    "imggen_url_secrets", default=True
)


@contextlib.contextmanager
def not_registering() -> Iterator[None]:
    """
    Build records without registering their URLs' secrets with the process's secrets masker.

    For the triggerer: it is one process for every trigger of the deployment, for days, and its masker
    keeps every secret ever added and recompiles one pattern of them all on each addition, so registering
    each image's URL there grows without end and costs more with every image (a 40-image batch spent 15 s
    in it). What the triggerer builds is masked and sealed, and it logs no URL.
    """
    token = _REGISTERING.set(False)
    try:
        yield
    finally:
        _REGISTERING.reset(token)


@contextlib.contextmanager
def registered_together() -> Iterator[None]:
    """
    Register the secrets of every URL the block meets when it ends, in one go.

    Airflow's masker recompiles one pattern of all its secrets on each one added, and a task waits for its
    supervisor to do the same: URL by URL, 200 images cost a worker 60 s or more. Nothing in the block may
    log a URL it collects (none of the provider's code logs a URL unmasked).
    """
    if _REGISTERING.get() is not True:  # not registering, or already collecting for an outer block
        yield
        return
    collected: list[str] = []
    token = _REGISTERING.set(collected)
    try:
        yield
    finally:
        _REGISTERING.reset(token)
        _register(collected)


def register_secrets(url: str) -> None:
    """Tell Airflow's secrets masker every query value and credential of ``url``: later logs redact them."""
    state = _REGISTERING.get()
    if state is False:
        return
    if isinstance(state, list):
        state.append(url)
        return
    _register([url])


def _register(urls: list[str]) -> None:
    # Airflow's masker skips (with a warning) values under 5 characters; signatures are far longer.
    found = (secret for url in urls for secret in url_secrets(url))
    secrets = list(dict.fromkeys(secret for secret in found if len(secret) >= _MIN_SECRET_CHARS))
    if not secrets:
        return
    from airflow.sdk.log import mask_secret

    if len(urls) > 1 and _add_in_one_pattern(secrets):
        # This process's masker (every log line of the task) has them all. The supervisor's, which masks
        # only what the task writes to its raw stdout and stderr (nothing of the provider's does; libraries
        # log through logging, masked here), gets each URL's whole query and credentials, so that no printed
        # form of a URL stays usable there, at a fraction of the cost. Already known here: no new pattern.
        mask_secret(list(dict.fromkeys(part for url in urls for part in url_secrets(url, whole_only=True))))
        return
    # One call for them all: in a task or a trigger each call is a round trip to the supervisor.
    mask_secret(cast("list[JsonValue]", secrets))


def _add_in_one_pattern(secrets: list[str]) -> bool:
    """
    Add ``secrets`` to this process's masker with one pattern compiled, as ``add_mask`` would one by one;
    False (nothing done) when the masker is not the one this was written against (Airflow 3.3's).
    """
    try:
        from airflow.sdk._shared.secrets_masker import _secrets_masker
        from airflow.sdk._shared.secrets_masker.secrets_masker import SECRETS_TO_SKIP_MASKING
    except ImportError:
        return False
    masker = _secrets_masker()
    patterns = getattr(masker, "patterns", None)
    min_length = getattr(masker, "min_length_to_mask", None)
    # An adapter (secret_mask_adapter) adds forms of each secret: leave that to add_mask.
    if not isinstance(patterns, set) or not isinstance(min_length, int) or masker.secret_mask_adapter:
        return False
    new = {
        re.escape(secret)
        for secret in secrets
        if len(secret) >= min_length and secret.lower() not in SECRETS_TO_SKIP_MASKING
    } - patterns
    if new:
        patterns.update(new)
        masker.replacer = re.compile("|".join(patterns))
    return True


def seal_text(text: str) -> str | None:
    """Any text encrypted and authenticated with Airflow's Fernet key, or None without a key."""
    fernet = _fernet()
    return fernet.encrypt(text.encode()).decode("ascii") if fernet is not None else None


def opens_to(token: object, text: str) -> bool:
    """Whether ``token`` is a :func:`seal_text` of exactly ``text`` under one of this deployment's keys."""
    fernet = _fernet()
    if fernet is None or not isinstance(token, str):
        return False
    from cryptography.fernet import InvalidToken

    try:
        return bool(fernet.decrypt(token.encode("ascii")).decode() == text)
    except (InvalidToken, ValueError, UnicodeError):
        return False
