"""Two browser sessions on one workspace at once (issue 14, "Faults"): two curators, each in a browser of their
own, move a threshold and apply their filter at the same moment. DuckDB lets one process write the workspace, so
`core.jobs` runs workspace writers one at a time: the first job runs, the second is queued behind it and its page
says so; both finish, and the workspace holds exactly what running the same two commands one after the other on a
copy of it gives: both runs with the thresholds the pages set, the decisions of both, nothing twice, no job failed,
and every page of both sessions shows the final counts after a reload.

The app is served once on the browser walk's small demo workspace (`tests/data/demo_walk.toml`, its cheap steps:
tokens, exact and MinHash dedup, quality, terminology). A reader holds the workspace (as a notebook or
`duckdb -readonly` would) while both sessions press their buttons, so the first writer waits for it and the queued
state lasts as long as the test looks at it, on any machine; then the reader lets go.

The queued state's screenshot goes to `$STUDIO_SCREENSHOTS` (default: the test's temporary folder) as
`12_two_sessions.png`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from browser_walk import (
    VIEWPORT,
    build_walk_workspace,
    open_studio_page,
    scroll_to_top,
    shown_metric,
    wait_for_app,
    wait_for_job_end,
)

from core.config import REPO_ROOT
from core.corpus import workspace_status
from core.flow import stale_steps
from core.jobs import (
    Job,
    cancel_step_job,
    list_step_jobs,
    queued_message,
    sleep_until,
    studio_argv,
    wait_step_job,
)
from core.workspace import ActiveRun, Workspace, active_run

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WALK_STEPS = ("tokens", "dedup", "quality", "terms")
QUALITY_SLIDER = re.compile("^Threshold for word_count:min")
DENSITY_SLIDER = "Minimum density (hits per word / character)"
APPLY = re.compile(r"^Apply: drop [\d,]+ documents$")


@pytest.fixture(scope="module")
def sessions_ws(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sessions") / "ws"
    build_walk_workspace(path, data_dir, steps=WALK_STEPS)
    return path


def shown(text: str) -> str:
    """`text` as the page's Markdown draws it (">=" becomes a sign of its own)."""
    return text.replace(">=", "≥")


def open_session(browser: Any, url: str, title: str, marker: str) -> Any:
    """A browser session of its own (a new context: its own cookies, its own Streamlit session) on a page."""
    page = browser.new_context(viewport=VIEWPORT).new_page()
    page.goto(url)
    wait_for_app(page)
    open_studio_page(page, url, title)
    page.get_by_text(marker).first.wait_for(timeout=60_000)
    wait_for_app(page)
    return page


def move_slider(page: Any, slider: Any, key: str, times: int = 1) -> float:
    """Press `key` on a slider `times` times, wait for the Dropped count to follow, return the new value."""
    before = shown_metric(page, "Dropped")
    slider.focus()
    for _ in range(times):
        slider.press(key)
    assert sleep_until(lambda: shown_metric(page, "Dropped") != before, 60, 0.25), "the counts did not follow"
    wait_for_app(page)
    return float(slider.input_value())  # a range input


def applied_filters(ws: Path) -> dict[str, ActiveRun]:
    """The quality and terminology filters that count now."""
    with Workspace.open(ws, create=False, read_only=True) as w:
        return {step: active_run(w, step) for step in ("quality", "terms")}


def decisions(ws: Path) -> list[tuple]:
    """Every decision of an active run, without its run id and time (those differ between two workspaces)."""
    with Workspace.open(ws, create=False, read_only=True) as w:
        return w.con.execute(
            "SELECT d.doc_id, d.step, d.verdict, d.reason, d.score, d.threshold FROM decisions d "
            "JOIN runs r USING (run_id) WHERE r.active ORDER BY ALL").fetchall()


def run_steps_count(ws: Path) -> Counter:
    with Workspace.open(ws, create=False, read_only=True) as w:
        return Counter(step for (step,) in w.con.execute("SELECT step FROM runs").fetchall())


def consistency(ws: Path) -> dict[str, Any]:
    """What the pages and the command line would report of the workspace."""
    with Workspace.open(ws, create=False, read_only=True) as w:
        duplicated = w.scalar("SELECT count(*) - count(DISTINCT (doc_id, run_id)) FROM decisions")
        return {"current": workspace_status(w)["current_documents"], "stale": [s.step for s in stale_steps(w)],
                "duplicated_decisions": duplicated}


def replay(copy: Path, jobs: list[Job]) -> None:
    """The jobs' own commands, headless, one after the other in the order they ran, on a copy of the workspace."""
    for job in sorted(jobs, key=lambda j: j.started_at):
        argv = studio_argv(copy, tomllib.loads(job.config)["argv"])
        done = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]


def test_two_sessions_apply_filters_at_once_and_the_second_is_queued(
        sessions_ws: Path, tmp_path: Path, app_server, _browser, capsys: pytest.CaptureFixture) -> None:
    started = time.monotonic()
    ws = tmp_path / "ws"
    shutil.copytree(sessions_ws, ws)
    baseline = tmp_path / "cli"  # the same workspace, for the same two commands run headless
    shutil.copytree(sessions_ws, baseline)
    screens = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screens")
    screens.mkdir(parents=True, exist_ok=True)
    url = app_server(ws)

    quality = open_session(_browser, url, "Quality", "All chosen rules together")
    terms = open_session(_browser, url, "Terminology", "Documents filtered")
    try:
        # Each session moves its own threshold: the minimum word count, the minimum term density.
        word_count = move_slider(quality, quality.get_by_role("slider", name=QUALITY_SLIDER), "PageUp")
        density = move_slider(terms, terms.get_by_role("slider", name=DENSITY_SLIDER), "ArrowRight", times=2)
        assert word_count != 20 and density == pytest.approx(0.03), (word_count, density)

        # Both apply at the same moment, while a reader holds the workspace.
        reader = Workspace.open(ws, create=False, read_only=True)
        try:
            for page in (quality, terms):
                page.get_by_role("button", name=APPLY).dispatch_event("click")
            assert sleep_until(lambda: len(list_step_jobs(ws)) == 2, 60), list_step_jobs(ws)
            launched = list_step_jobs(ws)
            by_status = {job.status: job for job in launched}
            assert sorted(by_status) == ["queued", "running"], [(j.label, j.status) for j in launched]
            first, second = by_status["running"], by_status["queued"]
            page_of = {job.job_id: quality if job.kind == "score" else terms for job in launched}
            assert set(page_of.values()) == {quality, terms}

            # Both pages show both jobs; the second's says it waits, for which job, and why.
            for page in (quality, terms):
                page.get_by_text(shown(f"{first.label} is running")).wait_for(timeout=60_000)
                page.get_by_text(shown(f"{second.label} is queued")).wait_for(timeout=60_000)
            # the first says why it has not started its work: another process holds the workspace
            for page in (quality, terms):
                page.get_by_text(re.compile(r"waiting for workspace .*, in use by")).first.wait_for(timeout=60_000)
            waiting = page_of[second.job_id]
            waiting.get_by_text(shown(queued_message(first.label))).wait_for(timeout=60_000)
            assert waiting.locator("[data-testid='stException']").count() == 0
            scroll_to_top(waiting)
            waiting.screenshot(path=str(screens / "12_two_sessions.png"))
            assert {j.status for j in list_step_jobs(ws)} == {"running", "queued"}  # still, as shown
        finally:
            reader.close()

        # Both finish, one after the other; each session sees how its own job ended.
        ended = {job.job_id: wait_step_job(ws, job.job_id, timeout_s=300) for job in (first, second)}
        assert [j.status for j in ended.values()] == ["finished", "finished"], [j.error for j in ended.values()]
        assert (second.folder / "started").stat().st_mtime >= (first.folder / "exit_code").stat().st_mtime - 0.01
        for job in (first, second):
            wait_for_job_end(page_of[job.job_id], shown(job.label), timeout_ms=120_000)
        assert all(job.status == "finished" for job in list_step_jobs(ws))  # no job failed

        # The workspace: both runs with the pages' thresholds, as the same two commands give on a copy.
        runs = applied_filters(ws)
        assert runs["quality"].run_id == ended_result(ended, "score")["filter"]["run_id"]
        assert runs["terms"].run_id == ended_result(ended, "terms")["filter_run_id"]
        assert runs["quality"].params["thresholds"]["word_count:min@latin"] == word_count
        assert runs["terms"].params["min_density"] == pytest.approx(density)
        replay(baseline, list(ended.values()))
        headless = applied_filters(baseline)
        for step in ("quality", "terms"):
            assert (runs[step].params, runs[step].counts) == (headless[step].params, headless[step].counts), step
        assert run_steps_count(ws) == run_steps_count(baseline)  # one run per command, none twice
        app_decisions, cli_decisions = decisions(ws), decisions(baseline)
        assert Counter(d[1] for d in app_decisions)["quality"] > 0 and Counter(
            d[1] for d in app_decisions)["terms"] > 0
        assert app_decisions == cli_decisions
        state = consistency(ws)
        assert state == consistency(baseline) and state["duplicated_decisions"] == 0, state

        # Every page of both sessions shows the final counts after a reload.
        quality_dropped = f"{runs['quality'].counts['dropped']:,}"
        terms_dropped = f"{runs['terms'].counts['dropped']:,} dropped"
        for page in (quality, terms):
            page.reload()
            wait_for_app(page)
            open_studio_page(page, url, "Overview")
            page.get_by_text("The flow").first.wait_for(timeout=60_000)
            assert shown_metric(page, "Current (after filters)") == f"{state['current']:,}"
            open_studio_page(page, url, "Quality")
            page.get_by_text("All chosen rules together").first.wait_for(timeout=60_000)
            assert shown_metric(page, "Dropped") == quality_dropped
            assert page.get_by_text(f'"word_count:min@latin": {word_count:g}', exact=False).count() >= 1
            open_studio_page(page, url, "Terminology")
            page.get_by_text("Documents filtered").first.wait_for(timeout=60_000)
            assert shown_metric(page, "Applied now") == terms_dropped
            assert page.locator("[data-testid='stException']").count() == 0
    except BaseException:
        for name, page in (("quality", quality), ("terms", terms)):  # what each session showed when it failed
            page.screenshot(path=str(screens / f"failed_{name}.png"), full_page=True)
        raise
    finally:
        for page in (quality, terms):
            page.context.close()
        for job in list_step_jobs(ws):  # a failed test leaves no job running
            if job.active:
                cancel_step_job(ws, job.job_id)
                wait_step_job(ws, job.job_id, timeout_s=60)
    with capsys.disabled():
        print(f"\ntwo sessions: {time.monotonic() - started:.1f} s; queued screenshot "
              f"{screens / '12_two_sessions.png'}", flush=True)


def ended_result(ended: dict[str, Job], kind: str) -> dict[str, Any]:
    return next(job for job in ended.values() if job.kind == kind).result()
