"""The Quality page: live counts from stored values as a threshold moves, documents either side of it, applying
through a background job, and what people see in a real browser (histogram with the threshold line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import metric_value, run_page
from streamlit.testing.v1 import AppTest

from core.config import REPO_ROOT
from core.jobs import wait_step_job
from core.quality import QualityFilterConfig, QualityScoreConfig, apply_filters, filter_preview, score_quality
from core.workspace import Workspace
from studio import widgets

PAGE = str(REPO_ROOT / "pages" / "quality.py")


@pytest.fixture(scope="module")
def scored_ws(demo_ws_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("quality_page") / "ws"
    shutil.copytree(demo_ws_path, path)
    with Workspace.open(path) as ws:
        score_quality(ws, QualityScoreConfig(corpora=["medquad_nih", "fever_textbook_zh", "c4_web_en"]))
    return path


def page(workspace: Path) -> AppTest:
    return run_page(PAGE, workspace)


def metric(at: AppTest, label: str) -> str:
    return metric_value(at, label)


def test_page_without_signals_asks_to_score(ws_copy: Path) -> None:
    at = page(ws_copy)
    assert not at.exception
    assert any("No document has quality signals yet" in i.value for i in at.info)
    assert any(b.label == "Score documents" for b in at.button)


def test_counts_follow_the_threshold_and_apply_runs_as_a_job(scored_ws: Path) -> None:
    at = page(scored_ws)
    assert not at.exception
    with Workspace.open(scored_ws, read_only=True) as ws:
        default = filter_preview(ws, QualityFilterConfig())
        looser = filter_preview(ws, QualityFilterConfig(thresholds={"word_count:min@latin": 20}))
    assert metric(at, "Dropped") == f"{default.dropped:,}"
    # the first rule is Gopher's minimum word count, on Latin-script documents
    slider = at.slider(key="quality_thr_word_count:min@latin")
    slider.set_value(20.0).run()
    assert not at.exception
    assert metric(at, "Dropped") == f"{looser.dropped:,}" and looser.dropped < default.dropped
    assert any("`word_count:min@latin` = 20" in c.value for c in at.caption)
    # documents just either side of the threshold, with their values
    markdown = " ".join(m.value for m in at.markdown)
    assert "Just failing: dropped" in markdown and "Just passing: kept" in markdown
    assert "word_count = **19" in markdown or "word_count = **1" in markdown

    apply = next(b for b in at.button if b.label.startswith("Apply: drop"))
    assert apply.label == f"Apply: drop {looser.dropped:,} documents"
    apply.click().run()
    job = widgets.current_job(scored_ws)
    assert job is not None and job.argv[:2] == ["score", "--rules"]
    assert "word_count:min@latin=20" in job.argv and "--apply" in job.argv
    wait_step_job(job.workspace, job.job_id, timeout_s=180)
    assert job.exit_code() == 0, job.log_file.read_text()
    with Workspace.open(scored_ws, read_only=True) as ws:
        drops = ws.query("SELECT count(*) FROM decisions d JOIN runs r USING (run_id) "
                         "WHERE r.step = 'quality' AND r.active AND d.verdict = 'drop'")[0][0]
    assert drops == looser.dropped


def test_the_rule_box_shows_the_threshold_applied_now(scored_ws: Path, tmp_path: Path) -> None:
    """After a filter that moved a threshold (the demo's minimum word count of 20), the rule box names the applied
    value and says so, not the rule's default."""
    path = tmp_path / "ws"
    shutil.copytree(scored_ws, path)
    with Workspace.open(path) as ws:
        apply_filters(ws, QualityFilterConfig(thresholds={"word_count:min": 20}))
    at = page(path)
    assert not at.exception
    box = at.selectbox(key="quality_rule")
    assert box.options[:2] == ["gopher_quality / word_count:min (keep if >= 20 as applied; default 50)",
                               "gopher_quality / word_count:max (keep if <= 100000)"]
    assert box.value.name == "word_count:min" and at.slider(key="quality_thr_word_count:min@latin").value == 20.0


def test_composite_section_says_what_is_missing(scored_ws: Path) -> None:
    at = page(scored_ws)
    assert not at.exception
    infos = " ".join(i.value for i in at.info)
    assert "fluency (perplexity) available for 0" in infos
    assert [n.label for n in at.number_input if n.key.startswith("quality_weight_")] == \
        ["relevance", "fluency", "informativeness", "safety"]


@pytest.mark.browser
@pytest.mark.slow
def test_quality_page_in_a_browser(scored_ws: Path, app_server, browser_page) -> None:
    from conftest import open_studio_page

    url = app_server(scored_ws)
    pw_page = browser_page(url)
    open_studio_page(pw_page, url, "Quality")
    pw_page.get_by_text("All chosen rules together").wait_for(timeout=30_000)
    pw_page.wait_for_selector(".js-plotly-plot", timeout=30_000)
    assert pw_page.locator(".js-plotly-plot .shapelayer path").count() >= 1  # the threshold line
    assert pw_page.get_by_text("Just failing: dropped").count() == 1
    pw_page.screenshot(path="/tmp/quality_page.png", full_page=True)
