"""The Deduplication page: the movable threshold counts from stored pairs, boundary pairs either side of it,
runs and re-applies as background jobs, and what people see in a real browser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import run_page
from streamlit.testing.v1 import AppTest

from core.config import REPO_ROOT
from core.dedup import DedupConfig, deduplicate, what_if
from core.jobs import wait_step_job
from core.workspace import Workspace, active_run
from studio import widgets

PAGE = str(REPO_ROOT / "pages" / "dedup.py")
CORPORA = ["medquad_nih", "medical_dialogue_zh", "medical_consultations_zh_raw", "medical_dialogue_sft_zh"]


@pytest.fixture(scope="module")
def deduped_ws(demo_ws_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dedup_page") / "ws"
    shutil.copytree(demo_ws_path, path)
    with Workspace.open(path) as ws:
        deduplicate(ws, DedupConfig(method="exact"))
        deduplicate(ws, DedupConfig(method="minhash", threshold=0.8, corpora=CORPORA))
    return path


def page(workspace: Path) -> AppTest:
    return run_page(PAGE, workspace)


def wait_for(job: widgets.Job, seconds: float = 180) -> None:
    wait_step_job(job.workspace, job.job_id, timeout_s=seconds)
    assert job.exit_code() == 0, job.log_file.read_text() if job.log_file.exists() else "no log"


def test_page_without_runs_offers_to_run(ws_copy: Path) -> None:
    at = page(ws_copy)
    assert not at.exception
    assert any("No near-duplicates (minhash) run yet" in i.value for i in at.info)
    assert any(b.label == "Run minhash dedup" for b in at.button)
    # The S-curve of the bands × rows solved for the threshold is drawn before anything runs.
    assert any("bands ×" in c.value for c in at.caption)


def test_threshold_moves_over_stored_pairs_and_applies_as_a_job(deduped_ws: Path) -> None:
    at = page(deduped_ws)
    assert not at.exception
    with Workspace.open(deduped_ws, read_only=True) as ws:
        run = active_run(ws, "dedup_minhash")
        at_07 = what_if(ws, run.run_id, 0.7)
    dropped = run.counts["dropped"]
    assert next(m.value for m in at.metric if m.label == "Dropped") == f"{dropped:,}"
    assert at_07 > dropped

    at.slider(key="dedup_moved_minhash").set_value(0.7).run()
    assert not at.exception
    line = next(m.value for m in at.markdown if "would be dropped" in m.value)
    assert f"**{at_07:,}** documents would be dropped" in line
    sims = [float(m.value.split("**")[1]) for m in at.markdown if m.value.startswith("similarity **")]
    assert any(s >= 0.7 for s in sims) and any(s < 0.7 for s in sims)

    apply = next(b for b in at.button if b.label.startswith("Apply"))
    apply.click().run()
    job = widgets.current_job(deduped_ws)
    assert job is not None and job.argv[:3] == ["dedup", "--method", "minhash"] and "0.7" in job.argv
    wait_for(job)
    with Workspace.open(deduped_ws, read_only=True) as ws:
        now = active_run(ws, "dedup_minhash")
        assert now.params["threshold"] == 0.7 and now.params["corpora"] == CORPORA
        # LSH tuned for 0.7 can only surface more pairs than the ones stored by the 0.8 run.
        assert now.counts["dropped"] >= at_07
        assert ws.scalar("SELECT count(*) FROM active_drops WHERE step = 'dedup_minhash'") == now.counts["dropped"]


def test_exact_method_shows_clusters_and_normalisation(deduped_ws: Path) -> None:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["workspace"] = str(deduped_ws)
    at.session_state["dedup_method"] = "exact"
    at.run()
    assert not at.exception
    assert any("Hashed as: `fever treat the cause not the symptom`" in m.value for m in at.markdown)
    assert at.dataframe, "no cluster table"
    assert any(e.label.endswith(": kept") for e in at.expander)


@pytest.mark.browser
@pytest.mark.slow
def test_review_page_in_a_browser(deduped_ws: Path, app_server, browser_page) -> None:
    from conftest import open_studio_page

    url = app_server(deduped_ws)
    pg = browser_page(url)
    open_studio_page(pg, url, "Deduplication")
    pg.get_by_text("Similarity of the stored pairs").wait_for(timeout=30_000)
    pg.get_by_text("Pairs at the threshold").scroll_into_view_if_needed()
    pg.wait_for_timeout(1500)
    assert pg.locator("[data-testid='stPlotlyChart']").count() >= 1
    assert pg.locator("mark").count() >= 1  # differing spans highlighted
    assert pg.get_by_text("documents would be dropped").count() == 1
    pg.screenshot(path="/tmp/studio-dedup-page.png", full_page=True)
