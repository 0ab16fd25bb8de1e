"""The Terminology page: live counts from stored values, applying through a background job, and what people
see in a real browser (histogram with the threshold, highlighted terms, lexicon upload)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from conftest import metric_value, run_page
from streamlit.testing.v1 import AppTest

from core.config import REPO_ROOT
from core.jobs import wait_step_job
from core.terms import TermFilterConfig, TermScoreConfig, filter_preview, score_terms
from core.workspace import Workspace
from studio import widgets

PAGE = str(REPO_ROOT / "pages" / "terms.py")


@pytest.fixture(scope="module")
def scored_page_ws(demo_ws_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("terms_page") / "ws"
    shutil.copytree(demo_ws_path, path)
    with Workspace.open(path) as ws:
        score_terms(ws, TermScoreConfig())
    return path


def page(workspace: Path) -> AppTest:
    return run_page(PAGE, workspace)


def metric(at: AppTest, label: str) -> str:
    return metric_value(at, label)


def test_page_without_scores_asks_to_score(ws_copy: Path) -> None:
    at = page(ws_copy)
    assert not at.exception
    assert any("No document is scored yet" in i.value for i in at.info)
    assert any(b.label.startswith("Score all documents") for b in at.button)


def test_counts_follow_the_threshold_and_apply_runs_as_a_job(scored_page_ws: Path) -> None:
    at = page(scored_page_ws)
    assert not at.exception
    with Workspace.open(scored_page_ws, read_only=True) as ws:
        default = filter_preview(ws, TermFilterConfig()).per_corpus
        strict = filter_preview(ws, TermFilterConfig(min_density=0.06)).per_corpus
    dropped_default = sum(c["documents"] - c["kept"] for c in default)
    dropped_strict = sum(c["documents"] - c["kept"] for c in strict)
    assert metric(at, "Dropped") == f"{dropped_default:,}"
    assert metric(at, "Applied now") == "nothing"

    at.slider(key="terms_min_density").set_value(0.06).run()
    assert not at.exception
    assert metric(at, "Dropped") == f"{dropped_strict:,}" and dropped_strict > dropped_default
    # Either side of the threshold: densities shown for the documents just below and just above 0.06.
    shown = [m.value for m in at.markdown if "density **" in m.value]
    assert shown, "no document shown near the threshold"
    densities = [float(v.split("**")[1]) for v in shown]
    assert any(d < 0.06 for d in densities) and any(d >= 0.06 for d in densities)

    apply = next(b for b in at.button if b.label.startswith("Apply"))
    assert apply.label == f"Apply: drop {dropped_strict:,} documents"
    apply.click().run()
    job = widgets.current_job(scored_page_ws)
    assert job is not None and job.argv[0] == "terms" and "--apply" in job.argv
    wait_step_job(job.workspace, job.job_id, timeout_s=120)
    assert job.exit_code() == 0, job.log_file.read_text() if job.log_file.exists() else "no log"
    with Workspace.open(scored_page_ws, read_only=True) as ws:
        assert ws.scalar("SELECT count(*) FROM active_drops WHERE step = 'terms'") == dropped_strict
        assert ws.scalar("SELECT min(threshold) FROM active_drops WHERE reason = 'low_term_density'") == 0.06
    at = page(scored_page_ws)
    assert metric(at, "Applied now") == f"{dropped_strict:,} dropped"


@pytest.mark.browser
@pytest.mark.slow
def test_terms_page_in_browser(scored_page_ws: Path, tmp_path: Path, app_server, browser_page) -> None:
    from conftest import open_studio_page, wait_for_app

    url = app_server(scored_page_ws)
    pg = browser_page(url)
    open_studio_page(pg, url, "Terminology")
    pg.get_by_text("Density per corpus").wait_for(timeout=30_000)
    pg.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    assert pg.locator("mark").count() > 0, "no term highlighted in the documents near the threshold"
    assert pg.get_by_text("Just below: dropped").count() == 1
    pg.screenshot(path="/tmp/terms_page.png")
    pg.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    pg.screenshot(path="/tmp/terms_page_histogram.png")
    pg.get_by_text("Just below: dropped").scroll_into_view_if_needed()
    pg.screenshot(path="/tmp/terms_page_near.png")

    lexicon = tmp_path / "cardio_terms.csv"
    lexicon.write_text("term,weight\natrial flutter,2\nejection fraction,1.5\n", encoding="utf-8")
    pg.get_by_text("Lexicons", exact=True).first.click()
    pg.locator("input[type='file']").set_input_files(str(lexicon))
    saved = scored_page_ws / "artifacts" / "lexicons" / "cardio_terms.csv"
    deadline = time.time() + 30
    while not saved.exists() and time.time() < deadline:
        pg.wait_for_timeout(300)
    assert saved.read_text(encoding="utf-8") == lexicon.read_text(encoding="utf-8")
    pg.get_by_text("Saved cardio_terms.csv").or_(pg.get_by_text("Combine these lexicons")).first.wait_for()
    wait_for_app(pg)
    pg.get_by_text("Combine these lexicons").first.scroll_into_view_if_needed()
    pg.screenshot(path="/tmp/terms_page_upload.png")


# --- mining a lexicon on the page -------------------------------------------------------------------------------
@pytest.fixture
def mined_page_ws(tmp_path: Path) -> Path:
    """A small workspace with planted renal terms in its domain corpus, mined once."""
    from test_lexicon_mine import planted_workspace

    from core.lexicon_mine import LexiconMineConfig
    from core.lexicon_mine import run as mine

    path = planted_workspace(tmp_path)
    with Workspace.open(path) as ws:
        mine(ws, LexiconMineConfig(min_df=3))
    return path


def test_mined_candidates_are_reviewed_and_saved(mined_page_ws: Path) -> None:
    from core.lexicon_mine import load_candidates, mining_runs
    from core.terms import load_lexicon

    with Workspace.open(mined_page_ws, read_only=True) as ws:
        run_id = mining_runs(ws)[0]["run_id"]
    candidates = load_candidates(mined_page_ws, run_id)
    at = page(mined_page_ws)
    assert not at.exception
    assert any(f"{len(candidates):,} candidates" in m.value for m in at.markdown)
    # Every candidate passes the default cut-off; the planted terms separate the sampled documents completely.
    assert metric(at, "Accepted terms") == f"{len(candidates):,}"
    assert metric(at, "Domain sample kept") == "80 of 80"
    assert metric(at, "General sample dropped") == "80 of 80"

    # A higher cut-off accepts fewer terms, and the counts move with it.
    strict = float(candidates["z"].sort_values(ascending=False).iloc[1])
    at.slider(key="mine_cut").set_value(round(strict, 1)).run()
    accepted = int((candidates["z"] >= round(strict, 1)).sum())
    assert not at.exception and metric(at, "Accepted terms") == f"{accepted:,}" and accepted < len(candidates)
    kept_now = metric(at, "Domain sample kept")
    assert kept_now != "80 of 80"  # one or two planted terms per document are no longer enough everywhere

    at.text_input(key="mine_save_name").set_value("renal terms").run()
    next(b for b in at.button if b.label.startswith("Save lexicon")).click().run()
    saved = mined_page_ws / "artifacts" / "lexicons" / "renal_terms.csv"
    assert not at.exception and saved.exists()
    assert set(load_lexicon(saved).weights) == set(candidates.loc[candidates["z"] >= round(strict, 1), "term"])

    # Mining again runs the command as a job.
    next(b for b in at.button if b.label == "Mine candidates").click().run()
    job = widgets.current_job(mined_page_ws)
    assert job is not None and job.argv[0] == "lexicon-mine"
    wait_step_job(job.workspace, job.job_id, timeout_s=120)
    assert job.exit_code() == 0, job.log_file.read_text() if job.log_file.exists() else "no log"
    assert (mined_page_ws / "artifacts" / "lexicons" / "mined.csv").exists()
