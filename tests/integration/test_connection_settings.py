"""The imggen connection type: provider metadata, the three ways to define a connection, and its parsing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from airflow.sdk import Connection

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.exceptions import ImageGenerationValidationError
from airflow_provider_imggen.get_provider_info import (
    DEFAULT_RESULT_HOST_PATTERNS,
    KNOWN_MODEL_NAMES,
    get_provider_info,
)
from airflow_provider_imggen.hooks.image_generation import ImageGenerationHook, parse_connection
from airflow_provider_imggen.model_table import KNOWN_MODELS
from airflow_provider_imggen.transfers.url_policy import DEFAULT_RESULT_HOSTS, ResultUrlPolicy
from tests.conftest import AIRFLOW_BIN, API_KEY, cli_json, set_imggen_connection


def make_conn(**fields: object) -> Connection:
    fields.setdefault("password", "sk-x")
    extra = fields.pop("extra", None)
    return Connection(conn_id="c", conn_type="imggen", extra=json.dumps(extra) if extra else None, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "base_url"),
    [
        ({"host": "gateway.example.com"}, "https://gateway.example.com"),
        ({"host": "gateway.example.com/v1/"}, "https://gateway.example.com"),
        ({"host": "https://gateway.example.com/openai/v1"}, "https://gateway.example.com/openai"),
        ({"host": "https://openrouter.example/api/v1"}, "https://openrouter.example/api"),
        ({"host": "http://127.0.0.1", "port": 8099, "schema": "v1"}, "http://127.0.0.1:8099"),
        ({"host": "http://127.0.0.1:8099"}, "http://127.0.0.1:8099"),
        # Airflow 3.3's UI sends port 0 for "no port"; no API listens on port 0.
        ({"host": "https://gateway.example.com/v1", "port": 0}, "https://gateway.example.com"),
        (
            {"host": "https://dashscope.example.com/api/v1", "extra": {"api_style": "dashscope"}},
            "https://dashscope.example.com",
        ),
    ],
)
def test_base_url(fields: dict, base_url: str) -> None:
    assert parse_connection(make_conn(**fields)).base_url == base_url


def test_extras_are_read_with_defaults_and_prefixed_names() -> None:
    settings = parse_connection(make_conn(host="h"))
    assert (settings.default_model, settings.request_timeout, settings.max_retries, settings.api_style) == (
        None,
        180.0,
        3,
        "openai",
    )
    settings = parse_connection(
        make_conn(
            host="h",
            extra={"default_model": "qwen-image", "request_timeout": "45", "extra__imggen__max_retries": 5},
        )
    )
    assert (settings.default_model, settings.request_timeout, settings.max_retries) == ("qwen-image", 45.0, 5)
    assert "sk-x" not in repr(settings)


@pytest.mark.parametrize(
    ("fields", "parameter"),
    [
        ({"host": ""}, "host"),
        ({"host": "ftp://files.example.com"}, "host"),
        ({"host": "h", "password": None}, "API key"),
        ({"host": "h", "extra": {"api_style": "grpc"}}, "api_style"),
        ({"host": "h", "extra": {"request_timeout": "soon"}}, "request_timeout"),
        ({"host": "h", "extra": {"request_timeout": 0}}, "request_timeout"),
        ({"host": "h", "extra": {"max_retries": -1}}, "max_retries"),
        ({"host": "h", "extra": {"max_retries": "many"}}, "max_retries"),
    ],
)
def test_bad_connection_fields_name_the_field(fields: dict, parameter: str) -> None:
    with pytest.raises(ImageGenerationValidationError) as raised:
        parse_connection(make_conn(**fields))
    assert parameter in raised.value.parameter
    assert "connection 'c'" in str(raised.value)


def test_provider_info_matches_airflow_schema_and_model_table() -> None:
    import airflow
    import jsonschema

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    info = get_provider_info()
    jsonschema.validate(info, schema)
    (conn_type,) = info["connection-types"]
    assert conn_type["connection-type"] == ImageGenerationHook.conn_type
    assert conn_type["hook-class-name"] == f"{ImageGenerationHook.__module__}.{ImageGenerationHook.__name__}"
    assert conn_type["ui-field-behaviour"]["relabeling"]["password"] == "API Key"
    assert set(conn_type["ui-field-behaviour"]["hidden-fields"]) == {"schema", "port", "login"}
    assert set(conn_type["conn-fields"]) >= {
        "default_model",
        "request_timeout",
        "max_retries",
        "api_style",
        "result_hosts",
        "allow_private_result_hosts",
        "price_list",
        "budget",
    }
    for field in conn_type["conn-fields"].values():
        jsonschema.Draft7Validator.check_schema(field["schema"])
        assert field["label"] and field["description"]
    assert list(KNOWN_MODELS) == KNOWN_MODEL_NAMES
    assert tuple(DEFAULT_RESULT_HOST_PATTERNS) == DEFAULT_RESULT_HOSTS


def test_result_host_fields_as_the_form_stores_them_set_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The form stores result_hosts as a list of strings and the flag as a boolean: the policy reads both."""
    conn = {
        "conn_type": "imggen",
        "host": "https://gateway.example.com/v1",
        "password": "k",
        "extra": {
            "result_hosts": ["results.example.com", "*.cdn.example.com:8443"],
            "allow_private_result_hosts": True,
        },
    }
    monkeypatch.setenv("AIRFLOW_CONN_IMGGEN_FORM", json.dumps(conn))
    schema = get_provider_info()["connection-types"][0]["conn-fields"]
    import jsonschema

    for name in ("result_hosts", "allow_private_result_hosts"):
        jsonschema.validate(conn["extra"][name], schema[name]["schema"])  # type: ignore[index]
    policy = ResultUrlPolicy.from_connection("imggen_form")
    assert policy.result_hosts == ("results.example.com", "*.cdn.example.com:8443")
    assert policy.allow_private is True
    # The form's untouched fields (an empty list, blank lines, a switch left off) mean the defaults.
    for untouched in ([], [""], ["  "], "", None):
        conn["extra"] = {"result_hosts": untouched, "allow_private_result_hosts": False}
        monkeypatch.setenv("AIRFLOW_CONN_IMGGEN_FORM", json.dumps(conn))
        policy = ResultUrlPolicy.from_connection("imggen_form")
        assert (policy.result_hosts, policy.allow_private) == (DEFAULT_RESULT_HOSTS, False)


def test_connection_from_uri_env_var(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Airflow's URI form for a host with a scheme: imggen://http://:KEY@HOST:PORT/PATH?extras
    monkeypatch.setenv(
        "AIRFLOW_CONN_IMGGEN_URI",
        f"imggen://http://:{API_KEY}@127.0.0.1:{emulator.port}/v1?default_model=qwen-image&max_retries=0",
    )
    hook = ImageGenerationHook(imggen_conn_id="imggen_uri")
    result = hook.generate_images("a cat")
    assert result.model == "qwen-image"
    assert hook.settings.max_retries == 0


def test_connection_from_json_env_var(emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = {
        "conn_type": "imggen",
        "host": f"{emulator.base_url}/v1",
        "password": API_KEY,
        "extra": {"default_model": "wan2.2-t2i-plus"},
    }
    monkeypatch.setenv("AIRFLOW_CONN_IMGGEN_JSON", json.dumps(conn))
    result = ImageGenerationHook(imggen_conn_id="imggen_json").generate_images("a cat", size="512x512")
    assert result.model == "wan2.2-t2i-plus"


def test_airflow_providers_list_shows_the_provider(airflow_env: dict[str, str]) -> None:
    listed = subprocess.run(
        [str(AIRFLOW_BIN), "providers", "list", "--output", "json"],
        env=airflow_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    names = {provider["package_name"] for provider in cli_json(listed.stdout)}
    assert "airflow-provider-imggen" in names


def test_airflow_connections_add_cli(airflow_env: dict[str, str], emulator: EmulatorServer) -> None:
    subprocess.run(
        [
            str(AIRFLOW_BIN),
            "connections",
            "add",
            "imggen_cli",
            "--conn-type",
            "imggen",
            "--conn-host",
            f"{emulator.base_url}/v1",
            "--conn-password",
            API_KEY,
            "--conn-extra",
            json.dumps({"default_model": "qwen-image", "max_retries": 1}),
        ],
        env=airflow_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    stored = subprocess.run(
        [str(AIRFLOW_BIN), "connections", "get", "imggen_cli", "--output", "json"],
        env=airflow_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    (conn,) = cli_json(stored.stdout)  # type: ignore[misc]
    assert conn["conn_type"] == "imggen"
    # `airflow connections test` builds the hook from the stored connection and calls test_connection().
    tested = subprocess.run(
        [str(AIRFLOW_BIN), "connections", "test", "imggen_cli"],
        env={**airflow_env, "AIRFLOW__CORE__TEST_CONNECTION": "Enabled"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert tested.returncode == 0, tested.stdout[-2000:] + tested.stderr[-2000:]
    assert "Connection success!" in tested.stdout
    assert API_KEY not in tested.stdout + tested.stderr
    log = emulator.requests_log()
    assert [entry["path"] for entry in log] == ["/v1/models"] and log[0]["status"] == 200


def test_a_host_without_scheme_that_fails_tls_says_https_was_assumed(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The emulator speaks plain http: Host without a scheme gets https, and the TLS error says why."""
    from airflow_provider_imggen.exceptions import ImageGenerationAPIError

    bare_host = emulator.base_url.removeprefix("http://")
    set_imggen_connection(monkeypatch, f"{bare_host}/v1", max_retries=0)
    with pytest.raises(
        ImageGenerationAPIError, match="https was assumed: if the API is served over plain http"
    ):
        ImageGenerationHook().generate_images("a lighthouse", model="wan2.2-t2i-flash")
    assert emulator.billed_images() == 0
    set_imggen_connection(monkeypatch, f"{emulator.base_url}/v1", max_retries=0)
    assert len(ImageGenerationHook().generate_images("a lighthouse", model="wan2.2-t2i-flash").images) == 1


def test_price_list_and_budget_as_the_form_stores_them() -> None:
    """The form stores the budget as JSON text and an untouched price list as an empty string."""
    import jsonschema
    from airflow.sdk import Connection

    from airflow_provider_imggen.connection_settings import parse_connection

    schema = get_provider_info()["connection-types"][0]["conn-fields"]
    extra = {"price_list": "singapore", "budget": '{"dag_run": 10, "connection_per_day": "2 USD"}'}
    for name, value in extra.items():
        jsonschema.validate(value, schema[name]["schema"])
    conn = Connection(conn_id="form", conn_type="imggen", host="https://gw.example.com/v1", password="k")
    conn.extra = json.dumps(extra)
    settings = parse_connection(conn)
    assert settings.price_list == 1
    assert [(b.scope, str(b.limit), b.unit) for b in settings.budgets] == [
        ("dag_run", "10", "images"),
        ("connection_per_day", "2", "USD"),
    ]
    conn.extra = json.dumps({"price_list": "", "budget": ""})
    assert (parse_connection(conn).price_list, parse_connection(conn).budgets) == (None, ())
    conn.extra = json.dumps({"budget": '{"dag_run": "ten"}'})
    with pytest.raises(ImageGenerationValidationError, match="connection 'form' extra budget"):
        parse_connection(conn)
