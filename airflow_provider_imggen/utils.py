"""Small helpers shared by the hook, the operators and the emulator. Stdlib only."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, unquote_plus, urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str) -> str:
    """
    A URL safe to show: every query value masked, user credentials and fragment removed.

    Signed result URLs carry their credential in the query string, under names that vary by store (OSS
    ``Signature``, S3 ``X-Amz-Signature``, Akamai ``hdnts``, CDN ``auth_key``, ``md5``...): no value is
    kept, whatever its name. ``https://u:p@h/p.png?Expires=1&Signature=abc#f`` becomes
    ``https://h/p.png?Expires=***&Signature=***``; a query item without ``=`` is masked whole. A value that
    cannot be parsed as a URL is masked whole.
    """
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return MASK
    masked = []
    for item in parts.query.split("&"):
        if item:
            name, has_value, _ = item.partition("=")
            masked.append(f"{name}={MASK}" if has_value else MASK)
    return urlunsplit((parts.scheme, host, parts.path, "&".join(masked), ""))


def is_masked_url(url: str) -> bool:
    """Whether ``url`` is what :func:`mask_url` shows of a URL that had query values (none is left)."""
    return MASK in urlsplit(url).query and mask_url(url) == url


def url_secrets(url: str, *, whole_only: bool = False) -> list[str]:
    """
    The parts of a URL the secrets masker should know: the query, each query value (as written and
    decoded) and any user credentials. Already-masked values are left out. ``whole_only``: the query and
    the user credentials as written, which every printed form of the whole URL contains.
    """
    try:
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
    except ValueError:
        return [url]
    found: list[str] = []
    candidates = [parts.query, userinfo, *userinfo.split(":")]
    if whole_only:
        return [candidate for candidate in candidates[:2] if candidate and candidate != MASK]
    for item in parts.query.split("&"):
        name, has_value, value = item.partition("=")
        raw = value if has_value else name
        candidates += [raw, unquote_plus(raw)]
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


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of each secret in ``text`` (an API may echo the key it was sent)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
