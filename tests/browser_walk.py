"""Driving the studio in headless Chromium, one way for every browser test and `bench/browser_demo.py`: serving a
workspace with `studio app`, waiting for Streamlit to be idle, opening a page from the sidebar, reading metrics,
filling inputs, and the two longer walks they share: a training job on the Train page (launch, live curves, the
page closed and re-opened re-attaches, stop, resume, finish) and the Report page's HTML (downloaded, then opened
offline with every section and chart visible and no network request)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from core.config import REPO_ROOT
from core.demo import build_demo, load_recipe, run_steps
from core.jobs import get_job, list_jobs, sleep_until
from core.workspace import Workspace

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium: never `playwright install`
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
VIEWPORT = {"width": 1400, "height": 900}
TOML_LABEL = "Config (TOML): launched as shown; edits here win until the form changes"
WALK_RECIPE = REPO_ROOT / "tests" / "data" / "demo_walk.toml"  # the small demo workspace the browser tests serve

Snap = Callable[[Any, str], None]  # (page, name) -> a screenshot saved somewhere


# --- the workspace ----------------------------------------------------------------------------------------------
def build_walk_workspace(path: Path, data_dir: Path, steps: Collection[str] | None = None,
                         before_steps: Callable[[Workspace], None] | None = None) -> float:
    """The small demo workspace of `WALK_RECIPE` at `path`: its corpora ingested, `before_steps(ws)` (e.g. one more
    benchmark), then its steps in its order (only those named in `steps`, when given). Returns the seconds taken."""
    started = time.monotonic()
    with Workspace.open(path) as ws:
        build_demo(ws, data_dir, recipe_path=WALK_RECIPE, steps=False, publish=False)
        if before_steps is not None:
            before_steps(ws)
        run_steps(ws, [s for s in load_recipe(WALK_RECIPE)["step"] if steps is None or s["name"] in steps])
    return time.monotonic() - started


# --- the server and the browser --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(workspace: Path, env: dict[str, str] | None = None, timeout_s: float = 90) -> tuple[subprocess.Popen, str]:
    """`studio app WORKSPACE` on a free local port, in its own process group; (process, base URL) once it listens.
    `env` adds to this process's environment (jobs the app launches inherit it)."""
    port = free_port()
    full_env = dict(os.environ, STUDIO_WORKSPACE=str(workspace), **(env or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "studio.cli", "app", str(workspace), "--port", str(port), "--host", "127.0.0.1"],
        cwd=REPO_ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"studio app exited with {proc.returncode}") from None
            time.sleep(0.3)
    stop_app(proc)
    raise RuntimeError(f"studio app did not start within {timeout_s:.0f} s")


def stop_app(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def open_app(browser: Any, url: str, page_title: str | None = None, downloads: bool = False) -> Any:
    """A new browser context and page on the app, loaded and idle (on the page named `page_title`, if given)."""
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=downloads)
    page = context.new_page()
    page.goto(url)
    wait_for_app(page)
    if page_title:
        open_studio_page(page, url, page_title)
    return page


# --- Streamlit ---------------------------------------------------------------------------------------------------
def wait_for_app(page: Any, timeout_ms: int = 60_000) -> None:
    """Wait until Streamlit is connected and the script has finished running."""
    page.wait_for_selector("[data-testid='stApp'][data-test-connection-state='CONNECTED']", timeout=timeout_ms)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=timeout_ms)
    page.wait_for_timeout(300)


def open_studio_page(page: Any, base_url: str, title: str) -> None:
    """Navigate with the sidebar link named `title` and wait for its script to finish."""
    page.get_by_role("link", name=title).first.click()
    page.wait_for_timeout(500)
    wait_for_app(page)


def scroll_to_top(page: Any, locator: Any = None) -> None:
    """Scroll so that `locator` (default: the page's title) starts the view, whichever element scrolls; then wait
    for the app to be idle."""
    target = locator if locator is not None else page.locator("[data-testid='stMain'] h1").first
    target.evaluate("element => element.scrollIntoView({block: 'start'})")
    wait_for_app(page)


def shown_metric(page: Any, label: str) -> str:
    """The value an `st.metric` labelled `label` shows."""
    metric = page.locator("[data-testid='stMetric']").filter(
        has=page.locator("[data-testid='stMetricLabel']", has_text=re.compile(f"^{re.escape(label)}$")))
    return metric.first.locator("[data-testid='stMetricValue']").inner_text().strip()


def cut_metric_values(page: Any) -> list[str]:
    """The metric values the page shows cut short (wider than their box, drawn with an ellipsis)."""
    return page.evaluate("""Array.from(document.querySelectorAll("[data-testid='stMetricValue'] div"))
        .filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.innerText)""")


def set_input(page: Any, label: str, value: object, commit: str = "Enter") -> None:
    """Type `value` into the text or number input labelled `label` and commit it (Enter; "Tab" inside a form,
    where Enter would submit it)."""
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press(commit)
    if commit == "Enter":
        wait_for_app(page)


def choose_option(page: Any, label: str, option: str) -> None:
    """Pick `option` in the select box (or add it to the multiselect) labelled `label`."""
    page.get_by_label(label, exact=True).click()
    page.get_by_role("option", name=option).first.click()
    page.keyboard.press("Escape")  # a multiselect's list stays open
    wait_for_app(page)


def wait_for_job_end(page: Any, label: str | re.Pattern, timeout_ms: int = 300_000) -> None:
    """Wait for the job panel's outcome line `LABEL: finished` (a job launched from the page), then for the page
    to redraw with its results; a failed job fails at once with the panel's message."""
    pattern = label if isinstance(label, re.Pattern) else re.compile(re.escape(label))
    finished = page.locator("[data-testid='stAlert']").filter(has_text=re.compile(pattern.pattern + ": finished"))
    failed = page.locator("[data-testid='stAlert']").filter(has_text=re.compile(pattern.pattern + ": failed"))
    finished.or_(failed).first.wait_for(timeout=timeout_ms)
    if failed.count():
        raise AssertionError(failed.first.inner_text())
    wait_for_app(page)


# --- the Train page ----------------------------------------------------------------------------------------------
def train_walk(browser: Any, url: str, ws: Path, snap: Snap, *, steps: int, model: str = "", mix: str = "",
               mix_folder: str = "", block_size: int = 128, batch_size: int = 2, eval_steps: int = 4,
               save_steps: int = 4, eval_tokens: int | None = None, progress_timeout_ms: int = 600_000,
               end_timeout_s: float = 900) -> dict[str, Any]:
    """A CPT job launched from the Train page's form (`model`; the mix `mix`, or the export folder `mix_folder`),
    watched live, the page closed and opened again while it runs (it re-attaches), stopped, resumed and finished.
    The app must run with `STUDIO_TRAIN_STEP_DELAY` long enough for Stop to land before the last step. Returns
    what was seen: job id, charts drawn, the step it stopped at, attempts, the last step, seconds."""
    from core.train.metrics import read_metrics  # (imported here: conftest imports this module)

    log: dict[str, Any] = {}
    page = open_app(browser, url, "Train")
    page.wait_for_selector("text=New training job")
    if model:
        set_input(page, "Model", model)
    if mix_folder:  # another export folder, e.g. so that a bench's job is not taken for the demo's own
        choose_option(page, "Mix", "another export folder…")
        set_input(page, "Export folder", mix_folder)
    elif mix:
        choose_option(page, "Mix", mix)
    set_input(page, "Max steps (0: epochs)", steps)
    set_input(page, "Block size (tokens)", block_size)
    set_input(page, "Batch size (per device)", batch_size)
    set_input(page, "Evaluate every (steps)", eval_steps)
    set_input(page, "Checkpoint every (steps)", save_steps)
    if eval_tokens is not None:
        page.get_by_text("Advanced", exact=True).click()
        set_input(page, "Validation tokens per set", eval_tokens)
    wait_for_app(page)  # a rerun can still show the text area it replaces beside the new one: read the newest
    toml = page.get_by_label(TOML_LABEL).last.input_value()
    expected = [f"max_steps = {steps}", f"block_size = {block_size}", f"batch_size = {batch_size}",
                f"eval_steps = {eval_steps}"]
    expected += [f'mix = "{mix_folder or mix}"'] if mix_folder or mix else []
    expected += [f'model = "{model}"'] if model else []
    expected += [f"eval_tokens = {eval_tokens}"] if eval_tokens is not None else []
    for line in expected:
        assert line in toml, (line, toml)
    before = {j.job_id for j in list_jobs(ws, "train")}
    snap(page, "train_1_form")
    page.get_by_role("button", name="Launch").click()
    assert sleep_until(lambda: {j.job_id for j in list_jobs(ws, "train")} - before, 120), "no job was launched"
    job_id = next(iter({j.job_id for j in list_jobs(ws, "train")} - before))
    log["job_id"] = job_id
    started = time.time()
    page.wait_for_selector(f"text=/step [2-9] of {steps}/", timeout=progress_timeout_ms)  # live progress
    page.locator(".js-plotly-plot").nth(3).wait_for(timeout=60_000)  # the four live panels
    log["live_charts"] = page.locator(".js-plotly-plot").count()
    scroll_to_top(page)
    snap(page, "train_2_live")
    page.context.close()  # the page closes while the job runs

    page = open_app(browser, url, "Train")
    page.wait_for_selector(f"text={job_id}", timeout=60_000)
    log["reattached_status"] = get_job(ws, job_id).status
    snap(page, "train_3_reattached")
    # The live panel redraws every 2 s, replacing its buttons: a click that waits for a stable element can miss
    # them all on a loaded machine, so the click event is sent to whichever button is there.
    page.locator(f".st-key-stop_{job_id} button").first.dispatch_event("click", timeout=60_000)
    assert sleep_until(lambda: get_job(ws, job_id).status == "stopped", end_timeout_s), get_job(ws, job_id).status
    log["stopped_at_step"] = max(r["step"] for r in read_metrics(Path(get_job(ws, job_id).output_dir)))
    page.reload()
    wait_for_app(page)
    open_studio_page(page, url, "Train")
    page.wait_for_selector("text=usable, and resumable", timeout=60_000)
    snap(page, "train_4_stopped")
    page.locator(f".st-key-resume_{job_id} button").first.dispatch_event("click", timeout=60_000)
    assert sleep_until(lambda: get_job(ws, job_id).status == "finished", end_timeout_s), get_job(ws, job_id).status
    done = get_job(ws, job_id)
    log["attempts"] = done.attempts
    log["last_step"] = max(r["step"] for r in read_metrics(Path(done.output_dir)))
    log["output_dir"] = done.output_dir
    log["train_seconds"] = round(time.time() - started, 1)
    page.reload()
    wait_for_app(page)
    open_studio_page(page, url, "Train")
    page.wait_for_selector("text=Past jobs", timeout=60_000)
    page.locator(".js-plotly-plot").nth(7).wait_for(timeout=60_000)  # the job's panels and the comparison's
    snap(page, "train_5_finished")
    page.context.close()
    return log


# --- the Report page ------------------------------------------------------------------------------------------------
def download_report(page: Any, folder: Path, snap: Snap) -> Path:
    """On the Report page showing a report: wait for it to draw, download its HTML into `folder`."""
    page.wait_for_selector("text=Download HTML", timeout=60_000)
    frame = page.frame_locator("iframe").first
    frame.locator("[data-section='Headline']").first.wait_for(timeout=60_000)
    frame.locator(".plotly-graph-div .main-svg").first.wait_for(timeout=60_000)
    snap(page, "report_1_page")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download HTML").click()
    html_file = folder / info.value.suggested_filename
    info.value.save_as(str(html_file))
    return html_file


def check_report_offline(browser: Any, html_file: Path, snap: Snap) -> dict[str, Any]:
    """Open a downloaded report with every network request refused: each section of `core.report.SECTIONS` and
    each chart must be visible, and nothing may be fetched."""
    from core.report import SECTIONS  # (imported here: it loads lm-eval, and conftest imports this module)

    offline = browser.new_context(viewport=VIEWPORT)
    requests: list[str] = []

    def refuse(route: Any) -> None:
        requests.append(route.request.url)
        route.abort()

    offline.route("http://**/*", refuse)
    offline.route("https://**/*", refuse)
    page = offline.new_page()
    page.goto(html_file.as_uri())
    page.wait_for_selector(".plotly-graph-div .main-svg", timeout=60_000)
    visible = {}
    for section in SECTIONS:
        blocks = page.locator(f"[data-section='{section}']")
        for k in range(blocks.count()):
            blocks.nth(k).scroll_into_view_if_needed()
        visible[section] = [blocks.nth(k).is_visible() for k in range(blocks.count())]
    charts = page.locator(".plotly-graph-div")
    drawn = 0
    for k in range(charts.count()):
        charts.nth(k).scroll_into_view_if_needed()
        drawn += charts.nth(k).locator(".main-svg").count() >= 1 and charts.nth(k).is_visible()
    page.evaluate("window.scrollTo(0, 0)")
    snap(page, "report_2_html")
    log = {"sections_visible": visible, "charts": charts.count(), "charts_drawn": drawn,
           "network_requests": requests, "html_bytes": html_file.stat().st_size}
    offline.close()
    assert all(v and all(v) for v in visible.values()), visible
    assert drawn == log["charts"] and requests == [], log
    return log
