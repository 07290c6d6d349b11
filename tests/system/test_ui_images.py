"""
The Images view in a real browser, on a real ``airflow standalone``, against the emulator and moto_server.

Runs the example content pipeline (3 prompts x 2 images, stored in S3) and a DAG whose generations are not
stored (one with result URLs that expire after a few seconds), then drives Debian's chromium through the
*Images* tabs of the transfer task, of a mapped generation task and of the DAG runs: every thumbnail loads
and every image's metadata is the one its XCom records. A DAG on priced connections (list prices in CNY
and USD) shows the cost per image, per task and per run: the price table's price times what the emulator
billed. Every route refuses unauthenticated requests,
and a second API server on the same database, whose auth manager refuses one user the content pipeline
(tests/ui_auth_manager.py), refuses that user the view as Airflow refuses him the DAG's XCom.
Screenshots land in test-artifacts/ui-images/; ``UPDATE_DOCS=1`` also copies the README's into docs/.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests
from playwright.sync_api import Frame, Page, expect, sync_playwright

from tests.conftest import TESTS_DIR
from tests.ui_stack import AIRFLOW_BIN, API_KEY, CONTENT_DAG, UNSTORED_DAG, Stack, images_stack

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = TESTS_DIR.parent / "test-artifacts" / "ui-images"
DOCS = TESTS_DIR.parent / "docs"
ROUTES = ("images", "gallery", "thumbnail", "image")


class Runs:
    """The stack and the two DAG runs the tests look at."""

    def __init__(self, stack: Stack, content: str, unstored: str) -> None:
        self.stack = stack
        self.content = content
        self.unstored = unstored

    def route_params(self, route: str) -> dict[str, str]:
        """Valid parameters for each route, on the content pipeline's transfer."""
        run = {"dag_id": CONTENT_DAG, "run_id": self.content}
        if route == "gallery":
            return run
        task = {**run, "task_id": "store_in_s3", "map_index": "-1"}
        return task if route == "images" else {**task, "n": "0"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    home = tmp_path_factory.mktemp("airflow-ui-images-home")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    try:
        with images_stack(home) as stack:
            content = stack.trigger(CONTENT_DAG)
            unstored = stack.trigger(UNSTORED_DAG)
            for dag_id, run_id in ((CONTENT_DAG, content), (UNSTORED_DAG, unstored)):
                assert stack.wait_for_run(dag_id, run_id) == "success", f"{dag_id} failed (see {home})"
            yield Runs(stack, content, unstored)
    finally:
        for log in home.glob("*.log"):
            shutil.copyfile(log, ARTIFACTS / log.name)


@pytest.fixture
def page(runs: Runs) -> Iterator[Page]:
    """A chromium page logged in to the standalone as admin."""
    assert CHROMIUM.exists(), "no /usr/bin/chromium: run `make chromium` (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            login(page, runs.stack.url, "admin", runs.stack.passwords["admin"])
            yield page
            page.screenshot(path=ARTIFACTS / "last-page.png")
        finally:
            browser.close()


def doc_screenshot(artifact: Path, name: str) -> None:
    """With UPDATE_DOCS=1, the README's copy of a screenshot: 1000 px wide, 256 colours (a tenth the size)."""
    if not os.environ.get("UPDATE_DOCS"):
        return
    from PIL import Image

    with Image.open(artifact) as image:
        small = image.convert("RGB").resize((1000, round(image.height * 1000 / image.width)), Image.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(DOCS / name, optimize=True)


def login(page: Page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(password)
    page.keyboard.press("Enter")
    # Logged in once the UI holds its JWT cookie (what the Images view's iframe sends).
    deadline = time.monotonic() + 60
    while not any(cookie["name"] == "_token" for cookie in page.context.cookies()):
        assert time.monotonic() < deadline, "login did not set the _token cookie"
        page.wait_for_timeout(200)
    # Then the login page sends the browser to the UI: let that navigation finish before any other.
    page.wait_for_url(lambda current: "/auth/" not in current)
    page.wait_for_load_state("networkidle")


def run_path(dag_id: str, run_id: str) -> str:
    return f"/dags/{dag_id}/runs/{quote(run_id, safe='')}"


def open_images_tab(page: Page, url: str) -> Frame:
    """Open a task instance's or DAG run's page, click its *Images* tab; the view's iframe."""
    page.goto(url)
    page.get_by_role("link", name="Images", exact=True).click()
    iframe = page.locator("iframe")
    iframe.wait_for()
    frame = iframe.element_handle().content_frame()
    assert frame is not None
    frame.wait_for_selector("p.summary")
    return frame


def loaded_thumbnails(frame: Frame) -> list[dict[str, Any]]:
    """Wait until every thumbnail finished loading; each one's natural width and tile position."""
    frame.wait_for_function(
        "() => [...document.images].every((img) => img.complete)", timeout=120_000, polling=250
    )
    return frame.evaluate(
        """() => [...document.querySelectorAll('figure.tile')].map((tile) => {
            const img = tile.querySelector('img');
            const fields = {};
            tile.querySelectorAll('dd').forEach((dd) => { fields[dd.dataset.field] = dd.innerText; });
            return {kind: tile.dataset.kind, task: tile.dataset.task, position: +tile.dataset.position,
                    naturalWidth: img ? img.naturalWidth : null, fields};
        })"""
    )


def price_text(generation: dict[str, Any]) -> str:
    """What a tile shows as its cost per image: the generation's price and currency, if it has one."""
    cost = generation.get("cost") or {}
    if cost.get("per_image") is None or cost.get("currency") is None:
        return "price unknown"
    return f"{cost['per_image']} {cost['currency']}"


def expected_fields(stored: dict[str, Any], generation: dict[str, Any]) -> dict[str, str]:
    return {
        "prompt": stored["prompt"],
        "negative prompt": generation["negative_prompt"],
        "model": stored["model"],
        "size": f"{stored['width']}*{stored['height']}",
        "seed": str(stored["seed"]),
        "request id": stored["request_id"],
        "sha256": stored["sha256"],
        "S3 URI": stored["s3_uri"],
        "bytes": f"{stored['bytes']:,}",
        "cost per image": price_text(generation),
    }


def test_the_transfer_task_shows_every_stored_image_with_its_metadata(page: Page, runs: Runs) -> None:
    stack = runs.stack
    stored = stack.xcom(CONTENT_DAG, runs.content, "store_in_s3")
    generations = {
        g["request_id"]: g for g in (stack.xcom(CONTENT_DAG, runs.content, "generate", i) for i in range(3))
    }
    assert len(stored) == 6

    frame = open_images_tab(page, f"{stack.url}{run_path(CONTENT_DAG, runs.content)}/tasks/store_in_s3")
    tiles = loaded_thumbnails(frame)
    page.screenshot(path=ARTIFACTS / "transfer-task.png")
    doc_screenshot(ARTIFACTS / "transfer-task.png", "ui-images-task.png")
    assert [tile["kind"] for tile in tiles] == ["stored"] * 6
    assert all(tile["naturalWidth"] > 0 for tile in tiles), tiles
    for tile, entry in zip(tiles, stored, strict=True):
        assert tile["fields"] == expected_fields(entry, generations[entry["request_id"]])
    # Nothing secret reached the browser: no signed URL, no key, no AWS credential.
    html = frame.content()
    assert "Signature" not in html and "sk-test" not in html and "testing" not in html

    # The full image is the stored object, byte for byte (the page links only to the plugin's routes).
    href = frame.locator("figure.tile a").first.get_attribute("href")
    assert href and href.startswith("image?")
    cookies = {cookie["name"]: cookie["value"] for cookie in page.context.cookies()}
    full = requests.get(f"{stack.url}/imggen/{href}", cookies=cookies, timeout=60)
    assert full.status_code == 200 and full.headers["content-type"] == "image/png"
    import hashlib

    assert hashlib.sha256(full.content).hexdigest() == stored[0]["sha256"]

    # The transfer's "Images" extra link leads here; its "S3 object" link is empty (moto is not AWS).
    links = stack.api(
        "GET", f"/api/v2/dags/{CONTENT_DAG}/dagRuns/{runs.content}/taskInstances/store_in_s3/links"
    )
    assert links.status_code == 200, links.text
    extra_links = links.json()["extra_links"]
    assert extra_links["Images"] == (
        f"{stack.url}{run_path(CONTENT_DAG, runs.content)}/tasks/store_in_s3/plugin/imggen-images"
    )
    assert not extra_links.get("S3 object")


def test_a_mapped_generation_task_shows_its_images_from_s3(page: Page, runs: Runs) -> None:
    stack = runs.stack
    generation = stack.xcom(CONTENT_DAG, runs.content, "generate", 1)
    url = f"{stack.url}{run_path(CONTENT_DAG, runs.content)}/tasks/generate/mapped/1"
    frame = open_images_tab(page, url)
    tiles = loaded_thumbnails(frame)
    page.screenshot(path=ARTIFACTS / "generation-task.png")
    # Stored by the transfer: read from S3, not from the result URL (which expires).
    assert [tile["kind"] for tile in tiles] == ["stored", "stored"]
    assert all(tile["naturalWidth"] > 0 for tile in tiles)
    assert [tile["fields"]["seed"] for tile in tiles] == [
        str(image["seed"]) for image in generation["images"]
    ]
    assert {tile["fields"]["prompt"] for tile in tiles} == {generation["prompt"]}


def test_the_dag_run_galleries(page: Page, runs: Runs) -> None:
    stack = runs.stack
    frame = open_images_tab(page, f"{stack.url}{run_path(CONTENT_DAG, runs.content)}")
    tiles = loaded_thumbnails(frame)
    page.screenshot(path=ARTIFACTS / "dag-run-gallery.png")
    stored = stack.xcom(CONTENT_DAG, runs.content, "store_in_s3")
    assert [(tile["kind"], tile["task"]) for tile in tiles] == [("stored", "store_in_s3")] * 6
    assert all(tile["naturalWidth"] > 0 for tile in tiles)
    assert [tile["fields"]["S3 URI"] for tile in tiles] == [entry["s3_uri"] for entry in stored]
    # imggen_default names no price: the run's cost is the images billed only, no amount.
    assert {tile["fields"]["cost per image"] for tile in tiles} == {"price unknown"}
    table = cost_table(frame)
    assert {row["cells"]["per image"] for row in table["rows"]} == {"price unknown"}
    assert table["total"]["images billed"] == "6" and table["currencies"] == {}
    assert "6 image(s) at an unknown price" in table["total"]["billed"]

    # Not stored: one result still valid (fetched from its URL), one expired.
    short = stack.xcom(UNSTORED_DAG, runs.unstored, "generate_short_lived")
    assert datetime.fromisoformat(short["images"][0]["url_expires_at"]) < datetime.now(UTC)
    frame = open_images_tab(page, f"{stack.url}{run_path(UNSTORED_DAG, runs.unstored)}")
    tiles = loaded_thumbnails(frame)
    page.screenshot(path=ARTIFACTS / "unstored-gallery.png")
    doc_screenshot(ARTIFACTS / "unstored-gallery.png", "ui-images-unstored.png")
    by_task = {tile["task"]: tile for tile in tiles}
    assert by_task["generate_not_stored"]["kind"] == "result"
    assert by_task["generate_not_stored"]["naturalWidth"] > 0
    assert by_task["generate_not_stored"]["fields"]["negative prompt"] == "people"
    assert by_task["generate_short_lived"]["kind"] == "expired"
    assert by_task["generate_short_lived"]["naturalWidth"] is None  # no image: the expired tile
    expect(frame.locator("figure.expired .placeholder")).to_contain_text("expired, not stored")
    # Its thumbnail route says so too, without fetching anything.
    answer = stack.api(
        "GET",
        "/imggen/thumbnail",
        params={
            "dag_id": UNSTORED_DAG,
            "run_id": runs.unstored,
            "task_id": "generate_short_lived",
            "map_index": "-1",
            "n": "0",
        },
    )
    assert (answer.status_code, answer.json()) == (410, {"detail": "expired, not stored"})


def test_an_edit_shows_its_input_beside_what_it_made(page: Page, runs: Runs) -> None:
    from tests.input_images import png, sha256

    stack = runs.stack
    edit = stack.xcom(UNSTORED_DAG, runs.unstored, "edit_product")
    frame = open_images_tab(page, f"{stack.url}{run_path(UNSTORED_DAG, runs.unstored)}/tasks/edit_product")
    tiles = loaded_thumbnails(frame)
    page.screenshot(path=ARTIFACTS / "edit-task.png")
    assert [tile["kind"] for tile in tiles] == ["input", "result"]
    assert all(tile["naturalWidth"] > 0 for tile in tiles), "the input read from S3, the edit from its URL"
    (recorded,) = edit["input_images"]
    assert recorded["sha256"] == sha256(png(640, 480, seed=41))
    assert tiles[0]["fields"]["sha256"] == recorded["sha256"]
    assert tiles[0]["fields"]["S3 URI"] == "s3://imggen-content/inputs/product.png"
    expect(frame.locator("p.summary")).to_contain_text("made from 1 input image(s)")


COSTS_DAG = "imggen_ui_costs"
# The priced connections of tests/system/imggen_ui_costs_dag.py → their price list and its LIST_PRICES column.
PRICED_CONNECTIONS = {"imggen_beijing": ("beijing", 0), "imggen_singapore": ("singapore", 1)}
# Its generation tasks → their connection.
COSTS_TASKS = {
    "generate_cny": "imggen_beijing",
    "generate_cny_unstored": "imggen_beijing",
    "generate_usd": "imggen_singapore",
}


def cost_table(frame: Frame) -> dict[str, Any]:
    """The page's cost table: each row's cells by field, the total's cells, its amount per currency."""
    return frame.evaluate(
        """() => {
            const cells = (row) => Object.fromEntries(
                [...row.querySelectorAll('td[data-field]')].map((td) => [td.dataset.field, td.innerText]));
            const total = document.querySelector('table.costs tfoot tr');
            return {
                rows: [...document.querySelectorAll('table.costs tbody tr')].map((row) => (
                    {task: row.dataset.task, mapIndex: +row.dataset.mapIndex, cells: cells(row)})),
                total: total ? cells(total) : null,
                currencies: Object.fromEntries(total ? [...total.querySelectorAll('[data-currency]')].map(
                    (span) => [span.dataset.currency, span.innerText]) : []),
            };
        }"""
    )


def amount(text: str, currency: str) -> Decimal:
    """``0.28 CNY`` → Decimal("0.28"), the currency checked."""
    value, shown = text.split()
    assert shown == currency, text
    return Decimal(value)


def priced_run(stack: Stack) -> str:
    """
    Run tests/system/imggen_ui_costs_dag.py on the stack: its two priced connections created through the
    REST API (in the metadata DB, where workers and the API server read them), the DAG file serialized
    with ``airflow dags reserialize`` (the DAG processor lists new files only every few minutes).
    """
    for conn_id, (price_list, _) in PRICED_CONNECTIONS.items():
        created = stack.api(
            "POST",
            "/api/v2/connections",
            json={
                "connection_id": conn_id,
                "conn_type": "imggen",
                "host": f"{stack.emulator.base_url}/v1",
                "password": API_KEY,
                "extra": json.dumps({"price_list": price_list, "max_retries": 3}),
            },
        )
        assert created.status_code == 201, created.text
    shutil.copy(TESTS_DIR / "system" / "imggen_ui_costs_dag.py", stack.home / "dags")
    subprocess.run(
        [str(AIRFLOW_BIN), "dags", "reserialize"], env=stack.env, check=True, capture_output=True, timeout=300
    )
    run_id = stack.trigger(COSTS_DAG)
    assert stack.wait_for_run(COSTS_DAG, run_id) == "success", f"{COSTS_DAG} failed (see {stack.home})"
    return run_id


def test_the_cost_per_image_per_task_and_per_run(page: Page, runs: Runs) -> None:
    from airflow_provider_imggen.prices import LIST_PRICES

    stack = runs.stack
    billed_before = stack.emulator.billing()["billed_images"]
    run_id = priced_run(stack)
    billing = stack.emulator.billing()
    generations = {task: stack.xcom(COSTS_DAG, run_id, task) for task in COSTS_TASKS}
    # What the emulator billed each generation, and its list price on the task's connection.
    billed = {task: billing["by_request_id"][xcom["request_id"]] for task, xcom in generations.items()}
    assert sum(billed.values()) == billing["billed_images"] - billed_before == 4
    prices = {}
    for task, conn_id in COSTS_TASKS.items():
        listed = LIST_PRICES[generations[task]["model"]][PRICED_CONNECTIONS[conn_id][1]]
        assert listed is not None
        prices[task] = listed

    # Per image: each stored image's tile shows its generation's price per image.
    frame = open_images_tab(page, f"{stack.url}{run_path(COSTS_DAG, run_id)}/tasks/store")
    tiles = loaded_thumbnails(frame)
    stored = stack.xcom(COSTS_DAG, run_id, "store")
    by_request = {xcom["request_id"]: task for task, xcom in generations.items()}
    assert len(tiles) == len(stored) == 3 and all(tile["naturalWidth"] > 0 for tile in tiles)
    for tile, entry in zip(tiles, stored, strict=True):
        price = prices[by_request[entry["request_id"]]]
        assert amount(tile["fields"]["cost per image"], price.currency) == price.per_image
    # The transfer's page lists the generations whose images it stored, with what each was billed.
    assert [row["task"] for row in cost_table(frame)["rows"]] == ["generate_cny", "generate_usd"]

    # Per task: the generation's billed images (of those asked) and amount.
    frame = open_images_tab(page, f"{stack.url}{run_path(COSTS_DAG, run_id)}/tasks/generate_cny")
    page.screenshot(path=ARTIFACTS / "costs-task.png")
    (row,) = cost_table(frame)["rows"]
    price = prices["generate_cny"]
    assert row["cells"]["images billed"] == f"{billed['generate_cny']} of 2 asked"
    assert amount(row["cells"]["per image"], "CNY") == price.per_image
    assert amount(row["cells"]["billed"], "CNY") == price.per_image * billed["generate_cny"]

    # Per run: every generation (stored or not), and the total per currency: CNY never added to USD.
    frame = open_images_tab(page, f"{stack.url}{run_path(COSTS_DAG, run_id)}")
    page.screenshot(path=ARTIFACTS / "costs-run.png")
    table = cost_table(frame)
    rows = {row["task"]: row["cells"] for row in table["rows"]}
    assert set(rows) == set(COSTS_TASKS)
    for task, cells in rows.items():
        currency = prices[task].currency
        assert amount(cells["billed"], currency) == prices[task].per_image * billed[task]
    expected: dict[str, Decimal] = {}
    for task, price in prices.items():
        expected[price.currency] = expected.get(price.currency, Decimal(0)) + price.per_image * billed[task]
    assert set(expected) == {"CNY", "USD"}
    assert {currency: amount(text, currency) for currency, text in table["currencies"].items()} == expected
    assert table["total"]["images billed"] == str(sum(billed.values()))


def test_every_route_refuses_unauthenticated_requests(runs: Runs) -> None:
    stack = runs.stack
    for route in ROUTES:
        params = runs.route_params(route)
        # The control: the admin's JWT, as header or as the UI's cookie, is let in.
        assert stack.api("GET", f"/imggen/{route}", params=params).status_code == 200, route
        cookie = {"_token": stack.token("admin")}
        assert requests.get(f"{stack.url}/imggen/{route}", params=params, cookies=cookie, timeout=60).ok
        anonymous = requests.get(f"{stack.url}/imggen/{route}", params=params, timeout=60)
        assert anonymous.status_code == 401, (route, anonymous.text)
        forged = requests.get(
            f"{stack.url}/imggen/{route}",
            params=params,
            headers={"Authorization": "Bearer forged.jwt.x"},
            timeout=60,
        )
        assert forged.status_code in (401, 403), (route, forged.status_code)
        # Even with bad input, authentication comes first.
        assert requests.get(f"{stack.url}/imggen/{route}", params={"n": "x"}, timeout=60).status_code == 401


@pytest.mark.parametrize(
    ("route", "change", "status"),
    [
        ("thumbnail", {"n": "6"}, 404),  # the transfer stored 6 images: positions 0-5
        ("thumbnail", {"n": "-1"}, 400),
        ("thumbnail", {"map_index": "9"}, 404),
        ("thumbnail", {"size": "4096"}, 400),
        ("image", {"task_id": "summarize"}, 404),  # not an image task: nothing it names is read
        ("image", {"task_id": "../../etc"}, 400),
        ("images", {"task_id": "no_such_task"}, 404),
        ("gallery", {"run_id": "no_such_run"}, 404),
        ("gallery", {"dag_id": "no_such_dag"}, 404),
        ("image", {"key": "campaigns/other.png", "bucket": "other"}, 200),  # unknown parameters are ignored
    ],
)
def test_bad_input_gets_a_400_or_404_never_a_stack_trace(
    runs: Runs, route: str, change: dict[str, str], status: int
) -> None:
    answer = runs.stack.api("GET", f"/imggen/{route}", params={**runs.route_params(route), **change})
    assert answer.status_code == status, answer.text
    assert "Traceback" not in answer.text and 'File "' not in answer.text
    if status == 200:  # the XCom's image, not the key asked for
        stored = runs.stack.xcom(CONTENT_DAG, runs.content, "store_in_s3")
        import hashlib

        assert hashlib.sha256(answer.content).hexdigest() == stored[0]["sha256"]


def test_a_dag_the_auth_manager_refuses_is_refused(runs: Runs) -> None:
    with runs.stack.denying_api_server() as denying:
        for route in ROUTES:
            params = runs.route_params(route)
            refused = denying.api("GET", f"/imggen/{route}", user="outsider", params=params)
            assert refused.status_code == 403, (route, refused.text)
            assert denying.api("GET", f"/imggen/{route}", user="admin", params=params).status_code == 200
        # As Airflow's own API refuses him the DAG's XCom...
        xcom = (
            f"/api/v2/dags/{CONTENT_DAG}/dagRuns/{runs.content}/taskInstances/store_in_s3"
            "/xcomEntries/return_value"
        )
        assert denying.api("GET", xcom, user="outsider").status_code == 403
        # ... while another DAG's images are his to see.
        other = {"dag_id": UNSTORED_DAG, "run_id": runs.unstored}
        assert denying.api("GET", "/imggen/gallery", user="outsider", params=other).status_code == 200

        # In the browser: the outsider opens the content pipeline's run, the Images tab says no.
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-background-networking"]
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)
                login(page, denying.url, "outsider", denying.passwords["outsider"])
                page.goto(f"{denying.url}/imggen/gallery?dag_id={CONTENT_DAG}&run_id={quote(runs.content)}")
                expect(page.locator("body")).to_contain_text("Forbidden")
                page.screenshot(path=ARTIFACTS / "refused.png")
                assert "<img" not in page.content()
            finally:
                browser.close()
