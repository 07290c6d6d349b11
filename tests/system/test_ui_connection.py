"""
The ``imggen`` connection set up the way a platform team does it: in the Airflow UI, in a real browser.

Starts ``airflow standalone`` (own AIRFLOW_HOME, SQLite, free ports) next to the emulator, drives Debian's
chromium with Playwright through Admin → Connections → Add, tests the connection with a wrong key and
with the right one, saves it, checks that what the form stored is what the hook reads, and runs a DAG on
it. Screenshots land in test-artifacts/ui-connection/. ``make chromium`` installs the browser.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Locator, Page, expect, sync_playwright

from airflow_provider_imggen.emulator import EmulatorServer
from airflow_provider_imggen.get_provider_info import KNOWN_MODEL_NAMES
from airflow_provider_imggen.hooks.image_generation import ConnectionSettings, ImageGenerationHook
from benchmarks.demo import background, free_port
from tests.conftest import AIRFLOW_BIN, API_KEY, TESTS_DIR

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = TESTS_DIR.parent / "test-artifacts" / "ui-connection"
CONN_ID = "imggen_ui"
DAG_ID = "imggen_ui_connection"
WRONG_KEY = "sk-wrong-9d3a61c0"
# What the form is filled with; none of them is the hook's default, so the round trip shows each one.
DEFAULT_MODEL = "wan2.2-t2i-flash"
REQUEST_TIMEOUT = 60
MAX_RETRIES = 2
WORKSPACE = "ws-ui-form"
# Airflow answers in seconds; a loaded 2-core machine can take minutes for the first start and run.
START_TIMEOUT = 240
RUN_TIMEOUT = 240


@dataclass(frozen=True)
class AirflowUI:
    """A running ``airflow standalone``: its URL, environment and admin password."""

    url: str
    env: dict[str, str]
    password: str

    @cached_property
    def _token(self) -> str:
        answer = requests.post(
            f"{self.url}/auth/token", json={"username": "admin", "password": self.password}, timeout=60
        )
        answer.raise_for_status()
        return str(answer.json()["access_token"])

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the REST API as the admin user."""
        headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.url}{path}", headers=headers, timeout=120, **kwargs)

    def cli(self, *args: str) -> str:
        return subprocess.run(
            [str(AIRFLOW_BIN), *args], env=self.env, capture_output=True, text=True, check=True, timeout=120
        ).stdout


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowUI]:
    """``airflow standalone`` in its own process group, stopped with all its children afterwards."""
    home = tmp_path_factory.mktemp("airflow-ui-home")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # what is there is from this run
    ARTIFACTS.mkdir(parents=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW_")},
        # `airflow standalone` starts its components as `airflow ...` from PATH.
        "PATH": f"{AIRFLOW_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "AIRFLOW__CORE__DAGS_FOLDER": str(TESTS_DIR / "ui_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        # LocalExecutor forks one worker per parallelism slot (32 by default); one task needs one.
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": url,
        # The log servers of the worker and the triggerer default to fixed ports (8793, 8794).
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
    }
    log = home / "standalone.log"
    try:
        with background(
            [str(AIRFLOW_BIN), "standalone"],
            f"{url}/api/v2/monitor/health",
            log,
            env=env,
            start_timeout=START_TIMEOUT,
        ):
            passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
            yield AirflowUI(url=url, env=env, password=passwords["admin"])
    finally:
        if log.exists():
            shutil.copyfile(log, ARTIFACTS / "standalone.log")


@pytest.fixture
def page(airflow_ui: AirflowUI) -> Iterator[Page]:
    """A chromium page, logged in as admin."""
    assert CHROMIUM.exists(), "no /usr/bin/chromium: run `make chromium` (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            # Generous: the machine may be busy; a wait ends as soon as the page is there.
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(airflow_ui.url)
            page.locator("input[name=username]").fill("admin")
            page.locator("input[name=password]").fill(airflow_ui.password)
            page.keyboard.press("Enter")
            page.get_by_role("button", name="Admin").wait_for()
            yield page
            # Where the browser was last, for a failure's post-mortem.
            page.screenshot(path=ARTIFACTS / "last-page.png")
        finally:
            browser.close()


def field_labels(form: Locator) -> list[str]:
    """The labels of the form's visible fields, without the required-field asterisks."""
    labels = [text.replace("*", "").strip() for text in form.locator("label:visible").all_inner_texts()]
    return [label for label in labels if label]  # a switch has a label of its own, without text


def field(form: Locator, label: str) -> Locator:
    """The form field labelled ``label`` (label, input and description)."""
    return form.locator("[data-scope=field][data-part=root]").filter(has_text=label)


def toast(page: Page, title: str) -> Locator:
    """The toast with this title (the one that appeared last)."""
    found = page.locator("[data-scope=toast][data-part=root]").filter(has_text=title).last
    found.wait_for()
    return found


def test_create_test_save_and_use_the_connection_in_the_ui(
    page: Page, airflow_ui: AirflowUI, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_url = f"{emulator.base_url}/v1"

    # Admin → Connections → Add Connection → type "Image Generation".
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    page.get_by_role("button", name="Add Connection").click()
    form = page.get_by_role("dialog")
    form.locator("input[name=connection_id]").fill(CONN_ID)
    form.get_by_role("combobox").click()
    page.keyboard.type("Image Generation")
    page.get_by_role("option", name="Image Generation", exact=True).click()

    # Standard fields: Host relabelled with a gateway placeholder, the key as a password, the rest hidden.
    host = form.locator("input[name=host]")
    password = form.locator("input[name=password]")
    assert host.get_attribute("placeholder") == (
        "https://gateway.example.com/v1 or https://dashscope-intl.aliyuncs.com/api/v1"
    )
    assert password.get_attribute("type") == "password"
    assert password.get_attribute("placeholder") == "sk-... (a DashScope key works only in its own region)"
    assert field_labels(form) == ["Connection ID", "Connection Type", "Description", "Base URL", "API Key"]
    for hidden in ("login", "port", "schema"):
        assert form.locator(f"input[name={hidden}]").count() == 0, hidden
    host.fill(base_url)
    password.fill(WRONG_KEY)
    password.blur()
    form.screenshot(path=ARTIFACTS / "form-standard-fields.png", animations="disabled")

    # Extra fields, with labels, descriptions and defaults.
    # The form shows one section at a time.
    form.get_by_role("button", name="Extra Fields", exact=True).click()
    model = field(form, "Default model").get_by_role("combobox")
    model.wait_for()
    expect(host).to_be_hidden()
    timeout = field(form, "Request timeout (seconds)").get_by_role("spinbutton")
    retries = field(form, "Maximum retries").get_by_role("spinbutton")
    assert field_labels(form) == [
        "Connection ID",
        "Connection Type",
        "Default model",
        "Request timeout (seconds)",
        "Maximum retries",
        "API style",
        "Workspace ID",
        "Gateway dialect (api_style openai)",
        "Retry requests whose outcome is unknown (may bill twice)",
        "Billing ledger (pay once across runs)",
        "Price list",
        "Budget (limits enforced before billing)",
        "Result hosts (ImageGenerationToS3Operator)",
        "Allow private result hosts (ImageGenerationToS3Operator)",
    ]
    expect(form.get_by_text("any name the gateway serves is accepted", exact=False)).to_be_visible()
    # The transfer's result-URL policy: private result hosts are opt-in, the switch is off.
    private_hosts = field(form, "Allow private result hosts").locator("input[type=checkbox]")
    assert private_hosts.count() == 1 and not private_hosts.is_checked()
    assert (timeout.input_value(), retries.input_value()) == ("180", "3")
    # Paying twice is opt-in: the switch is off.
    unknown_outcome = field(form, "may bill twice").locator("input[type=checkbox]")
    assert unknown_outcome.count() == 1 and not unknown_outcome.is_checked()
    # Default model: the known models offered as suggestions of a free-text field (an <input list=...>).
    suggestions = form.locator(f"datalist#{model.get_attribute('list')} option")
    assert [option.get_attribute("value") for option in suggestions.all()] == KNOWN_MODEL_NAMES
    model.fill("my-gateway-model")
    assert model.input_value() == "my-gateway-model"
    assert model.get_attribute("aria-invalid") != "true"
    model.fill(DEFAULT_MODEL)
    # API style: a choice of exactly the two styles the hook knows.
    field(form, "API style").get_by_role("combobox").click()
    expect(page.get_by_role("option")).to_have_text(["openai", "dashscope"])
    page.get_by_role("option", name="openai", exact=True).click()
    # The regions' base URLs and the workspace header, said where the fields are.
    expect(form.get_by_text("https://dashscope-intl.aliyuncs.com/api/v1", exact=False)).to_be_visible()
    expect(form.get_by_text("X-DashScope-WorkSpace", exact=False)).to_be_visible()
    field(form, "Gateway dialect").get_by_role("combobox").click()
    expect(page.get_by_role("option")).to_have_text(["openai", "nested"])
    page.get_by_role("option", name="openai", exact=True).click()
    field(form, "Workspace ID").locator("input").fill(WORKSPACE)

    timeout.fill(str(REQUEST_TIMEOUT))
    retries.fill(str(MAX_RETRIES))
    retries.blur()
    form.screenshot(path=ARTIFACTS / "form-extra-fields.png", animations="disabled")
    form.get_by_role("button", name="Save").click()
    toast(page, "Connection has been successfully created")

    # Test with the wrong key: the API's own message, key redacted, no traceback.
    row = page.get_by_role("row").filter(has_text=CONN_ID)
    row.get_by_role("button", name="Test Connection").click()
    failed = toast(page, "Test Connection Failed")
    page.screenshot(path=ARTIFACTS / "test-failed.png", animations="disabled")
    failed_text = failed.inner_text()
    assert "Incorrect API key provided: ***" in failed_text
    assert WRONG_KEY not in failed_text and "Traceback" not in failed_text
    assert WRONG_KEY not in page.content()

    # Fix the key in the edit form, test again.
    row.get_by_role("button", name="Edit Connection").click()
    form = page.get_by_role("dialog")
    form.locator("input[name=password]").fill(API_KEY)
    form.get_by_role("button", name="Save").click()
    form.wait_for(state="hidden")
    row.get_by_role("button", name="Test Connection").click()
    succeeded = toast(page, "Test Connection Successful")
    page.screenshot(path=ARTIFACTS / "test-succeeded.png", animations="disabled")
    expected = f"Connected to {emulator.base_url}: 3 model(s) available; default model {DEFAULT_MODEL}"
    assert expected in succeeded.inner_text()
    assert API_KEY not in page.content()
    assert [(entry["path"], entry["status"]) for entry in emulator.requests_log()] == [
        ("/v1/models", 401),
        ("/v1/models", 200),
    ]

    # Round trip: the stored connection, read back by the hook, is what the form said.
    (stored,) = json.loads(airflow_ui.cli("connections", "get", CONN_ID, "--output", "json"))
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", stored["get_uri"])
    hook = ImageGenerationHook(imggen_conn_id=CONN_ID)
    # The form's extra fields are stored as top-level keys of Connection.extra, typed by their schemas.
    extra = dict(hook.connection.extra_dejson)
    # The transfer's fields, left untouched, mean its defaults (however the form stores an empty list).
    assert extra.pop("result_hosts", None) in (None, [], "")
    assert extra.pop("allow_private_result_hosts", None) in (None, False)
    assert extra.pop("ledger", None) in (None, ""), "no ledger unless asked for"
    assert extra.pop("price_list", None) in (None, ""), "the list prices of the host unless asked for"
    assert extra.pop("budget", None) in (None, ""), "no budget unless asked for"
    assert extra == {
        "default_model": DEFAULT_MODEL,
        "request_timeout": REQUEST_TIMEOUT,
        "max_retries": MAX_RETRIES,
        "api_style": "openai",
        "retry_unknown_outcome": False,
        "workspace": WORKSPACE,
        "gateway_dialect": "openai",
    }
    assert hook.settings == ConnectionSettings(
        base_url=emulator.base_url,
        api_key=API_KEY,
        default_model=DEFAULT_MODEL,
        request_timeout=float(REQUEST_TIMEOUT),
        max_retries=MAX_RETRIES,
        api_style="openai",
        workspace=WORKSPACE,
    )

    # A DAG run on the saved connection: its requests carry the form's model and retry budget.
    emulator.clear_log()
    # A throttled POST is retried (nothing was billed); a 5xx would not be (it may have been billed).
    emulator.set_faults(fail_next=["429"], retry_after_seconds=0.1)
    deadline = time.monotonic() + RUN_TIMEOUT
    while airflow_ui.api("GET", f"/api/v2/dags/{DAG_ID}").status_code != 200:
        assert time.monotonic() < deadline, "the DAG processor never parsed tests/ui_dags"
        time.sleep(1)
    # Trigger it from its page, as a user would.
    page.goto(f"{airflow_ui.url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    with page.expect_response(
        lambda response: response.request.method == "POST" and response.url.endswith(f"/{DAG_ID}/dagRuns")
    ) as triggered:
        page.get_by_role("dialog").get_by_role("button", name="Trigger").click()
    assert triggered.value.status == 200, triggered.value.text()
    run_id = triggered.value.json()["dag_run_id"]
    state = None
    while state not in ("success", "failed"):
        assert time.monotonic() < deadline, f"DAG run still {state} after {RUN_TIMEOUT} s"
        time.sleep(1)
        state = airflow_ui.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()["state"]
    task_log = airflow_ui.api(
        "GET",
        f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/generate/logs/1",
        params={"full_content": "true"},
        headers={"Accept": "application/x-ndjson"},
    ).text
    (ARTIFACTS / "task.log").write_text(task_log)
    assert state == "success", task_log[-3000:]
    page.goto(f"{airflow_ui.url}/dags/{DAG_ID}/runs/{run_id}")
    expect(page.get_by_text("Success", exact=True).first).to_be_visible()
    page.screenshot(path=ARTIFACTS / "dag-run.png", animations="disabled")
    assert f"(attempt 1 of {MAX_RETRIES + 1})" in task_log
    assert API_KEY not in task_log
    generations = [entry for entry in emulator.requests_log() if entry["path"] == "/v1/images/generations"]
    assert [(entry["status"], entry["fault"], entry["model"]) for entry in generations] == [
        (429, "429", None),  # the emulator answers a scripted fault before reading the body
        (200, None, DEFAULT_MODEL),
    ]
    assert {entry["workspace"] for entry in generations} == {WORKSPACE}
