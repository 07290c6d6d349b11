"""
The Images view of a 50-image DAG run: time to first paint in chromium and the API server's peak RSS,
against Airflow's own pages of the same run, measured in the same run.

Starts the browser test's stack (tests/ui_stack.py: airflow standalone, the emulator, moto_server), runs
the example content pipeline with 25 subjects (25 mapped generations x 2 images, stored in S3 by one
transfer), then, logged in as admin in Debian's chromium, loads each page in a fresh browser context
(empty browser cache) and reads the Performance API:

- anchor: the DAG run's page (``/dags/<dag>/runs/<run>``) and its XCom page (``.../xcoms``) in Airflow's UI;
- the gallery's own page (``/imggen/gallery``), cold (the server's thumbnail cache empty, so all 50
  objects are read from S3 and thumbnailed) then warm (thumbnails cached on the server, not in the browser);
- the gallery as users open it: the run page's *Images* tab (Airflow's UI with the gallery in its iframe).

For each: first contentful paint (FCP), and "complete": every <img> of the gallery loaded (for Airflow's
pages, the load event plus the network going idle). The API server's RSS is sampled every 20 ms; its peak
while a page loads is reported over the RSS just before. The cold gallery is measured once (the first view
of the run after the server started, the first time that process reads S3), then once more with 128 px
thumbnails (none cached: every object read and thumbnailed again, by a process that has used S3 before);
the other figures are medians over --rounds.

    python benchmarks/bench_ui_gallery.py [--rounds 3] [--subjects 25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil  # Airflow's dependency
from playwright.sync_api import Browser, Page, sync_playwright

from tests.ui_stack import CONTENT_DAG, UNSTORED_DAG, Stack, images_stack

CHROMIUM = "/usr/bin/chromium"


class RssSampler:
    """Peak RSS of a set of processes (the API server), sampled in a thread."""

    def __init__(self, pids: list[int], interval: float = 0.02) -> None:
        self.processes = [psutil.Process(pid) for pid in pids]
        self.interval = interval

    def rss(self) -> int:
        total = 0
        for process in self.processes:
            with suppress(psutil.Error):
                total += process.memory_info().rss
        return total

    @contextmanager
    def peak(self) -> Iterator[dict[str, int]]:
        result = {"baseline": self.rss(), "peak": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                result["peak"] = max(result["peak"], self.rss())
                time.sleep(self.interval)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join()
            result["peak"] = max(result["peak"], self.rss())


FCP = """() => new Promise((resolve) => {
    const found = () => performance.getEntriesByName('first-contentful-paint')[0];
    if (found()) { resolve(found().startTime); return; }
    new PerformanceObserver((list, observer) => {
        if (found()) { observer.disconnect(); resolve(found().startTime); }
    }).observe({type: 'paint', buffered: true});
})"""
ALL_IMAGES = "() => document.images.length > 0 && [...document.images].every((img) => img.complete)"
LOADED_WIDTHS = "() => [...document.images].map((img) => img.naturalWidth)"


def measure(
    browser: Browser, cookies: list[dict[str, Any]], url: str, ready: Callable[[Page], None]
) -> tuple[float, float]:
    """(FCP, complete) in ms from navigation start, in a fresh context (empty browser cache)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        context.add_cookies(cookies)  # type: ignore[arg-type]
        page = context.new_page()
        page.set_default_timeout(300_000)
        page.goto(url, wait_until="commit")
        fcp = float(page.evaluate(FCP))
        ready(page)
        complete = float(page.evaluate("() => performance.now()"))
        return fcp, complete
    finally:
        context.close()


def airflow_page_ready(page: Page) -> None:
    page.wait_for_load_state("networkidle")


def gallery_ready(expected: int) -> Callable[[Page], None]:
    def ready(page: Page) -> None:
        page.wait_for_function(ALL_IMAGES, polling=50)
        widths = page.evaluate(LOADED_WIDTHS)
        assert len(widths) == expected and all(width > 0 for width in widths), widths

    return ready


def tab_ready(expected: int) -> Callable[[Page], None]:
    def ready(page: Page) -> None:
        page.locator("iframe").wait_for()
        frame = page.locator("iframe").element_handle().content_frame()
        assert frame is not None
        frame.wait_for_load_state()
        frame.wait_for_function(ALL_IMAGES, polling=50)
        widths = frame.evaluate(LOADED_WIDTHS)
        assert len(widths) == expected and all(width > 0 for width in widths), widths

    return ready


def login_cookies(browser: Browser, stack: Stack) -> list[dict[str, Any]]:
    context = browser.new_context()
    page = context.new_page()
    page.goto(stack.url)
    page.locator("input[name=username]").fill("admin")
    page.locator("input[name=password]").fill(stack.passwords["admin"])
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 120
    while not any(cookie["name"] == "_token" for cookie in context.cookies()):
        assert time.monotonic() < deadline, "login failed"
        page.wait_for_timeout(200)
    page.wait_for_url(lambda current: "/auth/" not in current)
    page.wait_for_load_state("networkidle")
    cookies = context.cookies()
    context.close()
    return cookies  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--subjects", type=int, default=25, help="images = 2 x subjects")
    args = parser.parse_args()
    images = 2 * args.subjects
    home = Path(tempfile.mkdtemp(prefix="bench-ui-gallery-"))
    with images_stack(home, parallelism=4) as stack:
        subjects = [f"product {number}: a ceramic object, studio light" for number in range(args.subjects)]
        started = time.monotonic()
        run_id = stack.trigger(CONTENT_DAG, conf={"subjects": subjects})
        other_run = stack.trigger(UNSTORED_DAG)
        state = stack.wait_for_run(CONTENT_DAG, run_id, timeout=1800)
        assert state == "success", f"the content pipeline run {state} (see {home})"
        print(f"content pipeline: {images} images generated and stored in {time.monotonic() - started:.0f} s")
        assert stack.wait_for_run(UNSTORED_DAG, other_run) == "success"
        stored = stack.xcom(CONTENT_DAG, run_id, "store_in_s3")
        assert len(stored) == images, len(stored)
        (api_pid,) = [
            pid for pid in stack.api_server_pids() if "api_server" in " ".join(psutil.Process(pid).cmdline())
        ][:1] or stack.api_server_pids()[:1]
        sampler = RssSampler([api_pid])
        run_page = f"{stack.url}/dags/{CONTENT_DAG}/runs/{quote(run_id, safe='')}"
        gallery = f"{stack.url}/imggen/gallery?dag_id={CONTENT_DAG}&run_id={quote(run_id, safe='')}"
        warmup_gallery = (
            f"{stack.url}/imggen/gallery?dag_id={UNSTORED_DAG}&run_id={quote(other_run, safe='')}"
        )
        results: dict[str, list[tuple[float, float, float]]] = {}

        def record(name: str, url: str, ready: Callable[[Page], None]) -> None:
            with sampler.peak() as rss:
                fcp, complete = measure(browser, cookies, url, ready)
            results.setdefault(name, []).append((fcp, complete, (rss["peak"] - rss["baseline"]) / 1e6))

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
            )
            try:
                cookies = login_cookies(browser, stack)
                # Unmeasured first visits: the API server imports the code of Airflow's pages, and of the
                # view (its app, Pillow) on the other DAG's gallery, whose images are not in S3.
                measure(browser, cookies, run_page, airflow_page_ready)
                measure(browser, cookies, f"{run_page}/xcoms", airflow_page_ready)
                measure(browser, cookies, warmup_gallery, gallery_ready(1))
                baseline_rss = sampler.rss()
                # Once: the first view of this run, every object read from S3 and thumbnailed, in a
                # process that has not talked to S3 yet (botocore loads its models, the client is built).
                record("gallery, cold (first S3 use)", gallery, gallery_ready(images))
                # Once: the same work in a process that has (128 px thumbnails: none cached yet).
                record("gallery, cold thumbnails", f"{gallery}&size=128", gallery_ready(images))
                for _ in range(args.rounds):
                    record("anchor: DAG run page", run_page, airflow_page_ready)
                    record("anchor: XCom page", f"{run_page}/xcoms", airflow_page_ready)
                    record("gallery, warm server cache", gallery, gallery_ready(images))
                    record("run page, Images tab", f"{run_page}/plugin/imggen-gallery", tab_ready(images))
            finally:
                browser.close()
    print(f"\n{images} images; API server RSS before the measured loads: {baseline_rss / 1e6:.0f} MB")
    print(f"{'page':34} {'FCP ms':>8} {'complete ms':>12} {'peak RSS +MB':>13}")
    medians = {}
    for name, rows in results.items():
        fcp, complete, rss = (statistics.median(column) for column in zip(*rows, strict=True))
        medians[name] = (fcp, complete, rss)
        print(f"{name:34} {fcp:8.0f} {complete:12.0f} {rss:13.1f}")
    anchor = medians["anchor: DAG run page"]
    print("\nratios to the DAG run page (same run, same browser):")
    for name, (fcp, complete, _) in medians.items():
        print(f"  {name:34} FCP {fcp / anchor[0]:.2f}x   complete {complete / anchor[1]:.2f}x")


if __name__ == "__main__":
    main()
