"""A real-browser check of the demo workspace (headless Chromium): on the Train page, a short CPT job on the demo
mix is launched from the form, watched live, the page closed and opened again (it re-attaches), stopped, resumed
and finished; on the Report page, the demo's report is shown and its HTML downloaded and opened offline with every
section visible and no network request. Screenshots go to --screens.

    python bench/browser_demo.py WORKSPACE [--screens DIR] [--steps 12]

WORKSPACE is one `studio demo` built (its mix `demo-mip` and its report `artifacts/reports/demo.html`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from conftest import CHROMIUM, open_studio_page, wait_for_app  # noqa: E402

from core.jobs import get_job, list_jobs, sleep_until  # noqa: E402
from core.report import SECTIONS  # noqa: E402
from core.train.metrics import read_metrics  # noqa: E402


def serve(workspace: Path, step_delay: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, STUDIO_WORKSPACE=str(workspace), STUDIO_TRAIN_STEP_DELAY=str(step_delay))
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "app", str(workspace), "--port", str(port),
                             "--host", "127.0.0.1"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("studio app did not start within 90 s")


def set_number(page, label: str, value: int) -> None:
    field = page.get_by_label(label, exact=True)
    field.fill(str(value))
    field.press("Enter")
    wait_for_app(page)


def train_walk(browser, url: str, ws: Path, screens: Path, steps: int, log: dict, model: str = "",
               mix_folder: str = "") -> None:
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.goto(url)
    wait_for_app(page)
    open_studio_page(page, url, "Train")
    page.wait_for_selector("text=New training job")
    if model:
        field = page.get_by_label("Model", exact=True)
        field.fill(model)
        field.press("Enter")
        wait_for_app(page)
    if mix_folder:  # the demo mix's export folder, so this job is not taken for the demo's own
        page.get_by_label("Mix", exact=True).click()
        page.get_by_role("option", name="another export folder…").click()
        wait_for_app(page)
        field = page.get_by_label("Export folder", exact=True)
        field.fill(mix_folder)
        field.press("Enter")
        wait_for_app(page)
    set_number(page, "Max steps (0: epochs)", steps)
    set_number(page, "Block size (tokens)", 128)
    set_number(page, "Batch size (per device)", 2)
    set_number(page, "Evaluate every (steps)", 4)
    set_number(page, "Checkpoint every (steps)", 4)
    toml = page.get_by_label("Config (TOML): launched as shown; edits here win until the form changes").input_value()
    for line in (f"max_steps = {steps}", "block_size = 128", "batch_size = 2", "eval_steps = 4", f'mix = "{mix_folder or "demo-mip"}"'):
        assert line in toml, (line, toml)
    before = {j.job_id for j in list_jobs(ws, "train")}
    page.screenshot(path=str(screens / "train_1_form.png"), full_page=True)
    page.get_by_role("button", name="Launch").click()
    assert sleep_until(lambda: {j.job_id for j in list_jobs(ws, "train")} - before, 120)
    job_id = next(iter({j.job_id for j in list_jobs(ws, "train")} - before))
    log["job_id"] = job_id
    started = time.time()
    page.wait_for_selector(f"text=/step [3-9] of {steps}/", timeout=600_000)  # live progress
    page.wait_for_timeout(2500)
    log["live_charts"] = page.locator(".js-plotly-plot").count()
    page.screenshot(path=str(screens / "train_2_live.png"), full_page=True)
    context.close()  # close the page while the job runs

    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    page.goto(url)
    wait_for_app(page)
    open_studio_page(page, url, "Train")
    page.wait_for_selector(f"text={job_id}", timeout=60_000)
    log["reattached_running"] = get_job(ws, job_id).status
    page.screenshot(path=str(screens / "train_3_reattached.png"), full_page=True)
    page.locator(f".st-key-stop_{job_id} button").first.click(timeout=60_000)
    assert sleep_until(lambda: get_job(ws, job_id).status == "stopped", 600), get_job(ws, job_id).status
    log["stopped_at_step"] = max(r["step"] for r in read_metrics(Path(get_job(ws, job_id).output_dir)))
    page.reload()
    wait_for_app(page)
    open_studio_page(page, url, "Train")
    page.wait_for_selector("text=usable, and resumable", timeout=60_000)
    page.screenshot(path=str(screens / "train_4_stopped.png"), full_page=True)
    page.locator(f".st-key-resume_{job_id} button").first.click(timeout=60_000)
    assert sleep_until(lambda: get_job(ws, job_id).status == "finished", 900), get_job(ws, job_id).status
    done = get_job(ws, job_id)
    log["attempts"] = done.attempts
    log["last_step"] = max(r["step"] for r in read_metrics(Path(done.output_dir)))
    log["train_seconds"] = round(time.time() - started, 1)
    page.reload()
    wait_for_app(page)
    open_studio_page(page, url, "Train")
    page.wait_for_selector("text=Past jobs", timeout=60_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(screens / "train_5_finished.png"), full_page=True)
    context.close()


def report_walk(browser, url: str, screens: Path, log: dict) -> None:
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    page.goto(url)
    wait_for_app(page)
    open_studio_page(page, url, "Report")
    page.wait_for_selector("text=Download HTML", timeout=60_000)
    frame = page.frame_locator("iframe").first
    frame.locator("[data-section='Headline']").first.wait_for(timeout=60_000)
    page.wait_for_timeout(2000)
    page.screenshot(path=str(screens / "report_1_page.png"), full_page=True)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download HTML").click()
    html_file = screens / "downloaded_demo_report.html"
    info.value.save_as(str(html_file))
    context.close()

    offline = browser.new_context(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []

    def refuse(route) -> None:
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
    page.screenshot(path=str(screens / "report_2_html_top.png"))
    page.screenshot(path=str(screens / "report_3_html_full.png"), full_page=True)
    log.update(sections_visible=visible, charts=charts.count(), charts_drawn=drawn, network_requests=requests,
               html_bytes=html_file.stat().st_size)
    assert all(v and all(v) for v in visible.values()), visible
    assert drawn == charts.count() and requests == []
    offline.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--screens", type=Path, default=Path("/work/measure/screens"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--step-delay", type=float, default=1.0, help="seconds added per step: time to watch")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-report", action="store_true")
    parser.add_argument("--model", default="", help="the model to train (default: the form's, bundled:smollm2)")
    parser.add_argument("--mix-folder", default="", help="train on this export folder instead of the mix demo-mip")
    args = parser.parse_args()
    args.screens.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    log: dict = {"workspace": str(args.workspace)}
    proc, url = serve(args.workspace.resolve(), args.step_delay)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                if not args.skip_report:
                    report_walk(browser, url, args.screens, log)
                if not args.skip_train:
                    train_walk(browser, url, args.workspace.resolve(), args.screens, args.steps, log, args.model,
                               args.mix_folder)
            finally:
                browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        print(json.dumps(log, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
