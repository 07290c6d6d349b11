"""Small helpers shared by the hook, the operators and the emulator. Stdlib only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit, urlunsplit

MASK = "***"


def mask_url(url: str) -> str:
    """
    Hide a URL's query values: signed result URLs carry their credential in the query string.

    ``https://h/p.png?Expires=1&Signature=abc`` becomes ``https://h/p.png?Expires=***&Signature=***``.
    """
    parts = urlsplit(url)
    if not parts.query:
        return url
    names = [pair.split("=", 1)[0] for pair in parts.query.split("&") if pair]
    masked_query = "&".join(f"{name}={MASK}" for name in names)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, masked_query, ""))


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


def redact(text: str, *secrets: str | None) -> str:
    """Replace every occurrence of each secret in ``text`` (an API may echo the key it was sent)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK)
    return text
