"""What the hooks read from an ``imggen`` connection, parsed and checked (shared by both hooks)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from airflow_provider_imggen.budgets.limits import Budget, parse_budgets
from airflow_provider_imggen.coercion import coerce_bool, coerce_int, coerce_seconds
from airflow_provider_imggen.exceptions import ImageGenerationValidationError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from airflow.sdk import Connection

    from airflow_provider_imggen.prices import Price

__all__ = [
    "API_STYLES",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_REQUEST_TIMEOUT",
    "WORKSPACE_HEADER",
    "ApiStyle",
    "ConnectionSettings",
    "parse_connection",
]

ApiStyle = Literal["openai", "dashscope"]
# Where an OpenAI-compatible gateway reads DashScope's own fields (the extra gateway_dialect).
GatewayDialect = Literal["openai", "nested"]
GATEWAY_DIALECTS: tuple[str, ...] = ("openai", "nested")
API_STYLES: tuple[str, ...] = ("openai", "dashscope")
DEFAULT_REQUEST_TIMEOUT = 180.0
DEFAULT_MAX_RETRIES = 3
DEFAULT_CONNECT_TIMEOUT = 10.0
# Model Studio's workspace selection header (issue 15; the DashScope SDK sends it as "X-DashScope-WorkSpace").
WORKSPACE_HEADER = "X-DashScope-WorkSpace"
# A result-host pattern: letters, digits, hyphens and "?" (one character) per label, with at most one "*"
# (part of one label, so matching never backtracks far), optionally ":port".
_HOST_PATTERN = re.compile(r"^[a-z0-9?-]*\*?[a-z0-9?-]*(\.[a-z0-9?-]*\*?[a-z0-9?-]*)*(:\d{1,5})?$")
# A workspace id goes into an HTTP header: letters, digits, '-', '_', '.' only (no CR/LF, no spaces).
_WORKSPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class ConnectionSettings:
    """
    What the hook reads from an ``imggen`` connection.

    :param request_timeout: the read timeout of one request, in seconds
    :param retry_unknown_outcome: re-send a billable request whose outcome is unknown (5xx, read timeout,
        connection lost after sending); the user accepts that it may bill twice
    :param workspace: the Model Studio workspace id sent as ``X-DashScope-WorkSpace`` (None: the key's
        default workspace)
    :param gateway_dialect: where an OpenAI-compatible gateway reads DashScope's own fields: ``openai``
        (top level) or ``nested`` (under ``parameters`` / ``input``)
    :param result_hosts: host patterns the S3 transfer may download results from besides the API's own
        origin (None: the result-URL policy's default, the DashScope result stores)
    :param allow_private_result_hosts: also accept result hosts resolving to private, loopback and
        link-local addresses
    :param scheme_assumed: Host named no scheme and https was assumed (said when TLS then fails)
    :param ledger: where the billing ledger lives (``s3://<aws_conn_id>@<bucket>/<prefix>`` or
        ``postgres://<postgres_conn_id>/<table>``; None: no ledger), see
        :func:`~airflow_provider_imggen.ledger.open_ledger_store`
    """

    base_url: str
    api_key: str = field(repr=False)
    default_model: str | None
    request_timeout: float
    max_retries: int
    api_style: ApiStyle
    retry_unknown_outcome: bool = False
    workspace: str | None = None
    gateway_dialect: GatewayDialect = "openai"
    result_hosts: tuple[str, ...] | None = None
    allow_private_result_hosts: bool = False
    scheme_assumed: bool = False
    ledger: str | None = None
    # Per-image prices overriding the list prices (prices.py), by model: negotiated prices, a gateway's.
    prices: Mapping[str, Price] = field(default_factory=dict)
    # The list prices to bill from when the host does not name a region (prices.PRICE_LISTS): 0 Beijing, 1
    # Singapore, None: from the host.
    price_list: int | None = None
    # Limits on what this connection's sends may spend (extra ``budget``, budgets/limits.py).
    budgets: tuple[Budget, ...] = ()


def _price_list(label: str, value: object) -> int | None:
    from airflow_provider_imggen.prices import parse_price_list

    try:
        return parse_price_list(value)
    except ImageGenerationValidationError as error:
        raise ImageGenerationValidationError(label, value, error.allowed) from None


def _prices(label: str, value: object) -> dict[str, Price]:
    from airflow_provider_imggen.prices import parse_price_overrides

    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            raise ImageGenerationValidationError(label, "(not JSON)", "expected a JSON object") from None
    try:
        return parse_price_overrides(value)
    except ImageGenerationValidationError as error:
        raise ImageGenerationValidationError(
            f"{label} {error.parameter}", error.value, error.allowed
        ) from None


def parse_connection(conn: Connection, extras: dict[str, Any] | None = None) -> ConnectionSettings:
    """
    Read and check an ``imggen`` connection; errors name the field, the value and what is allowed.

    :param extras: the connection's extras when already decoded (async callers use ``aextra_dejson``)
    """
    if extras is None:
        extras = conn.extra_dejson

    def extra(name: str) -> Any:
        # The UI of older Airflow versions stored form fields as extra__<conn type>__<name>.
        value = extras.get(name, extras.get(f"extra__imggen__{name}"))
        return None if value == "" else value

    def label(name: str) -> str:
        return f"connection {conn.conn_id!r} extra {name}"

    api_style: ApiStyle = extra("api_style") or "openai"
    if api_style not in API_STYLES:
        raise ImageGenerationValidationError(
            label("api_style"), api_style, "expected 'openai' or 'dashscope'"
        )
    if not conn.password:
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} API key (password)",
            None,
            "set the API key as the connection password",
        )

    request_timeout = extra("request_timeout")
    timeout = (
        DEFAULT_REQUEST_TIMEOUT
        if request_timeout is None
        else coerce_seconds(label("request_timeout"), request_timeout)
    )
    assert timeout is not None

    max_retries = extra("max_retries")
    retries = DEFAULT_MAX_RETRIES
    if max_retries is not None:
        allowed = "expected a whole number 0-20"
        retries = coerce_int(label("max_retries"), max_retries, allowed)
        if not 0 <= retries <= 20:
            raise ImageGenerationValidationError(label("max_retries"), max_retries, allowed)

    retry_unknown = extra("retry_unknown_outcome")
    default_model = extra("default_model")

    workspace = extra("workspace")
    if workspace is not None:
        workspace = str(workspace).strip() if isinstance(workspace, str) else workspace
        if not isinstance(workspace, str) or not _WORKSPACE_PATTERN.fullmatch(workspace):
            raise ImageGenerationValidationError(
                label("workspace"),
                workspace,
                "expected a Model Studio workspace id (letters, digits, '-', '_', '.'), e.g. ws-1a2b3c4d",
            )

    dialect: GatewayDialect = extra("gateway_dialect") or "openai"
    if dialect not in GATEWAY_DIALECTS:
        raise ImageGenerationValidationError(
            label("gateway_dialect"),
            dialect,
            "expected 'openai' (DashScope's fields at the top level) or 'nested' (under parameters/input)",
        )
    allow_private = extra("allow_private_result_hosts")
    return ConnectionSettings(
        base_url=_base_url(conn, api_style),
        api_key=conn.password,
        default_model=str(default_model).strip() if default_model else None,
        request_timeout=timeout,
        max_retries=retries,
        api_style=api_style,
        retry_unknown_outcome=False
        if retry_unknown is None
        else coerce_bool(label("retry_unknown_outcome"), retry_unknown),
        workspace=workspace or None,
        gateway_dialect=dialect,
        result_hosts=_result_hosts(label("result_hosts"), extra("result_hosts")),
        allow_private_result_hosts=False
        if allow_private is None
        else coerce_bool(label("allow_private_result_hosts"), allow_private),
        scheme_assumed="://" not in (conn.host or ""),
        ledger=_ledger(label("ledger"), extra("ledger")),
        prices=_prices(label("prices"), extra("prices")),
        price_list=_price_list(label("price_list"), extra("price_list")),
        budgets=parse_budgets(label("budget"), extra("budget"), origin=f"connection {conn.conn_id!r}"),
    )


def _ledger(label: str, setting: object) -> str | None:
    """The ledger setting, checked now (before anything is billed); None when unset."""
    if setting is None:
        return None
    # Checks the form only: the ledger package imports no provider until a store is used.
    from airflow_provider_imggen.ledger import open_ledger_store

    if not isinstance(setting, str):
        raise ImageGenerationValidationError(label, setting, "expected s3://... or postgres://... text")
    try:
        open_ledger_store(setting.strip())
    except ImageGenerationValidationError as error:
        raise ImageGenerationValidationError(label, setting, error.allowed) from None
    return setting.strip()


def _result_hosts(label: str, hosts: object) -> tuple[str, ...] | None:
    """The result-host patterns of the extra (a list, or one string of them), None when unset or empty."""
    patterns: tuple[str, ...]
    if hosts is None:
        return None
    if isinstance(hosts, str):
        patterns = tuple(part for part in re.split(r"[\s,]+", hosts) if part)
    elif isinstance(hosts, list) and all(isinstance(host, str) for host in hosts):
        # The connection form stores one pattern per line of its text area, blank lines included.
        patterns = tuple(host.strip() for host in hosts if host.strip())
    else:
        raise ImageGenerationValidationError(label, hosts, "expected a list of host patterns")
    for pattern in patterns:
        if not _HOST_PATTERN.match(pattern.lower()):
            raise ImageGenerationValidationError(
                label,
                pattern,
                "expected host names, '*' for part of one label, '?' for one character, optionally ':port'",
            )
    # Left empty (the form's untouched field): the default.
    return patterns or None


def _base_url(conn: Connection, api_style: str) -> str:
    """The API root, from Host (scheme optional, https by default), Port and Schema (the path of a URI)."""
    host = (conn.host or "").strip()
    if not host:
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} host",
            conn.host,
            "set Host to the API's base URL, e.g. https://gateway.example.com/v1",
        )
    if "://" not in host:
        host = f"https://{host}"
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https"):
        raise ImageGenerationValidationError(
            f"connection {conn.conn_id!r} host", conn.host, "the scheme must be http or https"
        )
    netloc = parts.netloc
    if conn.port and parts.port is None:
        netloc = f"{netloc}:{conn.port}"
    path = parts.path.rstrip("/")
    if conn.schema:
        path = f"{path}/{conn.schema.strip('/')}"
    # Accept the base URL with or without the API's version suffix; the hook adds it back per endpoint.
    suffix = "/v1" if api_style == "openai" else "/api/v1"
    if path.endswith(suffix):
        path = path[: -len(suffix)]
    return urlunsplit((parts.scheme, netloc, path, "", ""))
