"""Small helpers shared by the hook, the operators and the emulator. Stdlib only."""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, quote_plus, unquote, unquote_plus, urlsplit, urlunsplit

MASK = "***"


# Object stores that sign a URL in its query string only (Alibaba Cloud OSS, S3, GCS, Azure Blob): their
# paths are object keys, shown as they are.
_QUERY_SIGNING_STORES = re.compile(
    r"(?:^|\.)(?:oss-[a-z0-9-]+\.aliyuncs\.com|s3(?:[.-][a-z0-9-]+)*\.amazonaws\.com"
    r"|storage\.googleapis\.com|[a-z0-9]+\.blob\.core\.windows\.net)$"
)
# On any other host a path segment is shown only when it cannot be a credential (CDN URL-signing styles put
# one in the path: Alibaba Cloud and Tencent Cloud CDN types B and C, ``/<timestamp>/<md5>/file``, Akamai's
# ``hdnts=...~hmac=...``, nginx secure_link's ``/s/<md5>/<expires>/``): digits only (dates, times: no secret
# is a short decimal number), or at most 4 characters (24 bits: no signing scheme's credential, and guessed
# as fast as shown). A longer word may be a token: masked. A file name keeps its extension.
_PLAIN_SEGMENT = re.compile(r"[0-9]{1,14}|[A-Za-z0-9_-]{1,4}")
# Masked segments this long are registered with the secrets masker one by one (shorter ones only within the
# whole path): the masker masks every later occurrence, and "images" is no secret.
_MIN_REGISTERED_SEGMENT = 16
_FILE_NAME = re.compile(r"(?P<stem>[^.]+)\.(?P<ext>[A-Za-z0-9]{1,5})")


def mask_url(url: str) -> str:
    """
    A URL safe to show: every query value masked, every path segment that may be a credential masked, user
    credentials and fragment removed.

    Signed result URLs carry their credential in the query string, under names that vary by store (OSS
    ``Signature``, S3 ``X-Amz-Signature``, Akamai ``hdnts``, CDN ``auth_key``, ``md5``...): no value is
    kept, whatever its name. ``https://u:p@h/p.png?Expires=1&Signature=abc#f`` becomes
    ``https://h/p.png?Expires=***&Signature=***``; a query item without ``=`` is masked whole. Others carry
    it in the path: the path is shown as it is only on the object stores that sign in the query, elsewhere
    only its plain segments are (``https://cdn.example/1700000000/9f86d0818.../a.png`` becomes
    ``https://cdn.example/1700000000/***/a.png``). A value that cannot be parsed as a URL is masked whole.
    """
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        hostname = parts.hostname or ""
    except ValueError:
        return MASK
    masked = []
    for item in parts.query.split("&"):
        if item:
            name, has_value, _ = item.partition("=")
            masked.append(f"{name}={MASK}" if has_value else MASK)
    path = parts.path
    if not _QUERY_SIGNING_STORES.search(hostname):
        path = "/".join(_shown_segment(segment) for segment in path.split("/"))
    return urlunsplit((parts.scheme, host, path, "&".join(masked), ""))


def _shown_segment(segment: str) -> str:
    if not segment or _PLAIN_SEGMENT.fullmatch(segment):
        return segment
    file_name = _FILE_NAME.fullmatch(segment)
    if file_name is None:
        return MASK
    stem = file_name["stem"]
    return f"{stem if _PLAIN_SEGMENT.fullmatch(stem) else MASK}.{file_name['ext']}"


def _masked_segments(url: str) -> list[str]:
    """The path segments of ``url`` that :func:`mask_url` masks (a file name's stem without its extension)."""
    parts = urlsplit(url)
    if _QUERY_SIGNING_STORES.search(parts.hostname or ""):
        return []
    hidden = []
    for segment in parts.path.split("/"):
        shown = _shown_segment(segment)
        if shown == MASK:
            hidden.append(segment)
        elif shown.startswith(f"{MASK}.") and segment != shown:
            hidden.append(segment.rpartition(".")[0])
    return [segment for segment in hidden if segment != MASK]


def is_masked_url(url: str) -> bool:
    """Whether ``url`` is what :func:`mask_url` shows of a URL it had to mask (no credential is left)."""
    parts = urlsplit(url)
    return (MASK in parts.query or MASK in parts.path) and mask_url(url) == url


def url_secrets(url: str, *, whole_only: bool = False) -> list[str]:
    """
    The parts of a URL the secrets masker should know: the query, each query value (as written and
    decoded), each path segment :func:`mask_url` masks (as written and decoded) and any user credentials.
    Already-masked values are left out. ``whole_only``: the query, the path when it holds such a segment,
    and the user credentials, as written, which every printed form of the whole URL contains.
    """
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        hidden = _masked_segments(url)
    except ValueError:
        return [url]
    found: list[str] = []
    candidates = [parts.query, userinfo, parts.path if hidden else "", *userinfo.split(":")]
    if whole_only:
        return [candidate for candidate in candidates[:3] if candidate and candidate != MASK]
    for item in parts.query.split("&"):
        name, has_value, value = item.partition("=")
        raw = value if has_value else name
        candidates += [raw, unquote_plus(raw)]
    for segment in hidden:
        if len(segment) >= _MIN_REGISTERED_SEGMENT:
            candidates += [segment, unquote(segment)]
    for candidate in candidates:
        if candidate and candidate != MASK and candidate not in found:
            found.append(candidate)
    return found


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 as this provider writes one: 64 lowercase hex digits."""
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


def url_expiry(url: str) -> datetime | None:
    """
    When a signed URL stops working, if it says.

    Understands OSS/S3 v2 style ``Expires=<unix time>`` and S3 SigV4 ``X-Amz-Date`` + ``X-Amz-Expires``.
    """
    query = parse_qs(urlsplit(url).query)
    try:
        if "Expires" in query:
            return datetime.fromtimestamp(int(query["Expires"][0]), tz=UTC)
        if "X-Amz-Date" in query and "X-Amz-Expires" in query:
            signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            return signed_at + timedelta(seconds=int(query["X-Amz-Expires"][0]))
    except (ValueError, OverflowError):
        return None
    return None


def parse_time(value: object) -> datetime | None:
    """An ISO 8601 time as written in an XCom (``Z`` or an offset; UTC when it has none), else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


# Shorter forms (the base64 of a short key at an awkward alignment) would mask unrelated text.
_MIN_FORM_CHARS = 8


@functools.lru_cache(maxsize=16)
def secret_forms(secret: str) -> tuple[str, ...]:
    """
    Every form in which a service may echo ``secret`` (the API key it was sent), longest first: as sent,
    after ``Bearer``, URL-encoded (either case of escapes), hex, and base64 (standard and URL-safe) at
    each of the three byte alignments it can have inside a longer encoded text (the characters that depend
    on the secret's bytes alone), so that ``base64("Authorization: Bearer <key>")`` gives it away no more
    than the key itself.
    """
    if not secret:
        return ()
    raw = secret.encode()
    encoded_url = quote(secret, safe="")
    lower_escapes = re.sub(r"%[0-9A-F]{2}", lambda escape: escape[0].lower(), encoded_url)
    forms = {secret, f"Bearer {secret}", encoded_url, lower_escapes, quote_plus(secret), raw.hex()}
    for offset in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * offset + raw).decode()
            # Character j carries bits 6j..6j+5: those inside the secret's bits [8 * offset, 8 * end).
            first = -(-8 * offset // 6)
            last = (8 * (offset + len(raw))) // 6
            forms.add(encoded[first:last])
            if offset == 0:
                forms.add(encoded)
    kept = (form for form in forms if len(form) >= _MIN_FORM_CHARS or form == secret)
    return tuple(sorted(kept, key=len, reverse=True))


@functools.lru_cache(maxsize=16)
def _forms_pattern(secrets: tuple[str, ...]) -> tuple[re.Pattern[str], int]:
    """One pattern of every form of ``secrets`` (longest first), and the shortest form's length."""
    forms = sorted({form for secret in secrets for form in secret_forms(secret)}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, forms))), min(map(len, forms))


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of each secret, in any form :func:`secret_forms` knows, in ``text``."""
    return _redactor(secrets)(text)


def _redactor(secrets: tuple[str | None, ...]) -> Callable[[str], str]:
    """:func:`redact` for these ``secrets``, their pattern looked up once for the many strings of a body."""
    given = tuple(secret for secret in secrets if secret)
    if not given:
        return lambda text: text
    pattern, shortest = _forms_pattern(given)
    # Most strings of an answer are short (ids, sizes, statuses): they cannot hold any form.
    return lambda text: text if len(text) < shortest else pattern.sub(MASK, text)


def may_hold_secret(text: str, *secrets: str | None) -> bool:
    """
    Whether the JSON text ``text`` may decode to a string holding a form of a secret: one appears in it as
    written, or an escape (``\\u0073``, ``\\/``) could spell one. False lets a caller skip the walk of
    :func:`redact_json` over a large answer.
    """
    given = tuple(secret for secret in secrets if secret)
    if not given:
        return False
    return "\\" in text or _forms_pattern(given)[0].search(text) is not None


def redact_json(value: Any, *secrets: str | None) -> Any:
    """
    ``value`` (parsed JSON) with every secret form redacted from every string in it, names included: what
    a service echoes in ``usage`` or ``revised_prompt`` would otherwise reach XCom. Iterative, so that a
    body as deep as the JSON parser allows cannot exhaust the recursion limit here.
    """
    if not any(secrets):
        return value
    clean = _redactor(secrets)
    root: list[Any] = [value]
    pending: list[tuple[Any, Any]] = [(root, 0)]
    while pending:
        parent, key = pending.pop()
        item = parent[key]
        if isinstance(item, str):
            parent[key] = clean(item)
        elif isinstance(item, list):
            pending.extend((item, index) for index in range(len(item)))
        elif isinstance(item, dict):
            cleaned = {clean(name): v for name, v in item.items()}  # JSON names are strings
            item.clear()
            item.update(cleaned)
            pending.extend((item, name) for name in item)
    return root[0]
