"""The app shell and the Ingest, Overview and Corpus pages: page logic with AppTest, what people see in Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import open_studio_page, run_page, wait_for_app
from streamlit.testing.v1 import AppTest

from core.config import REPO_ROOT
from core.jobs import wait_step_job
from core.workspace import Workspace
from studio.widgets import current_job

PAGES = REPO_ROOT / "pages"


def page_test(page: str, workspace: Path) -> AppTest:
    return run_page(page, workspace)


def test_overview_counts_everything(demo_ws_path: Path) -> None:
    at = page_test("home.py", demo_ws_path)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    with Workspace.open(demo_ws_path, read_only=True) as ws:
        total = ws.scalar("SELECT count(*) FROM documents")
    assert metrics["Documents"] == f"{total:,}"
    assert metrics["Ingest errors"] == "0"


def test_corpus_page_search_and_document_viewer(demo_ws_path: Path) -> None:
    at = page_test("corpus.py", demo_ws_path)
    assert not at.exception
    assert {m.label for m in at.metric} == {"domain", "general", "instruction", "benchmark"}
    at.text_input(key="corpus_query").set_value("党参").run()
    assert not at.exception
    viewer = at.text_input(key="corpus_doc_id").value
    assert viewer, "the first search hit opens in the viewer"
    with Workspace.open(demo_ws_path, read_only=True) as ws:
        text, source = ws.query("SELECT text, source_file FROM documents WHERE doc_id = ?", [viewer])[0]
    assert "党参" in text
    assert any((t.value.astype(str) == source).any().any() for t in at.table)
    assert any("No step has decided" in s.value for s in at.success)


def test_corpus_viewer_shows_who_dropped_a_document(ws_copy: Path) -> None:
    import pyarrow as pa

    with Workspace.open(ws_copy) as ws:
        doc_id = ws.scalar("SELECT doc_id FROM documents WHERE corpus = 'c4_web_en' LIMIT 1")
        with ws.run("quality", {"rule": "test"}) as run:
            ws.record_decisions(run, pa.table({"doc_id": [doc_id], "verdict": ["drop"],
                                               "reason": ["gopher: too few words"], "score": [12.0]}))
    at = page_test("corpus.py", ws_copy)
    at.text_input(key="corpus_doc_id").set_value(doc_id).run()
    assert any("Dropped by **quality**: gopher: too few words (score 12.0)" in e.value for e in at.error)


def test_ingest_page_previews_and_runs_a_job(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("STUDIO_ROOTS", str(data_dir))
    ws_path = tmp_path / "ws"
    Workspace.open(ws_path).close()
    at = page_test("ingest.py", ws_path)
    at.text_input(key="ingest_path").set_value(
        str(data_dir / "chinese_medical_dialogue/raw/sample_IM_5000-6000_gb18030.csv")).run()
    assert not at.exception
    assert any("gb18030" in m.value for m in at.markdown)
    at.selectbox(key="ingest_text_field").set_value("answer")  # chosen from the previewed columns
    at.button(key="ingest_run").click().run()
    assert not at.exception
    job = current_job(ws_path)
    assert job is not None and job.argv[0] == "ingest"
    wait_step_job(job.workspace, job.job_id, timeout_s=120)
    assert job.exit_code() == 0, job.log_file.read_text()
    with Workspace.open(ws_path, read_only=True) as ws:
        assert ws.scalar("SELECT count(*) FROM documents WHERE language = 'zh'") == 7644


def test_ingest_page_refuses_paths_outside_the_allowed_roots(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("STUDIO_ROOTS", str(data_dir))
    ws_path = tmp_path / "ws"
    Workspace.open(ws_path).close()
    at = page_test("ingest.py", ws_path)
    at.text_input(key="ingest_path").set_value(str(data_dir / ".." / "PLATFORM.md")).run()
    assert any("outside the folders" in e.value for e in at.error)
    at.text_input(key="ingest_path").set_value("/etc/passwd").run()
    assert any("outside the folders" in e.value for e in at.error)


@pytest.mark.browser
def test_ingest_and_corpus_pages_in_a_browser(ws_copy: Path, data_dir: Path, app_server, browser_page) -> None:
    page = browser_page(app_server(ws_copy))
    page.wait_for_selector("text=Overview")
    open_studio_page(page, "", "Ingest")
    page.wait_for_selector("text=From a path on the server")
    body = page.inner_text("[data-testid='stMain']")
    assert "Corpora" in body and "Ingested files (21)" in body and "No record was skipped" in body
    assert page.locator("[data-testid='stDataFrame']").count() >= 1  # the corpora table (drawn on a canvas)
    page.screenshot(path="/tmp/studio-ingest.png", full_page=True)

    page.get_by_label("File, folder or glob").fill(str(data_dir / "medquad/sft_en_medquad_alpaca.jsonl"))
    page.keyboard.press("Enter")
    wait_for_app(page)
    page.wait_for_selector("text=layout guessed")
    assert "alpaca" in page.inner_text("[data-testid='stMain']")

    open_studio_page(page, "", "Corpus")
    page.wait_for_selector("text=Documents per corpus and language")
    page.wait_for_selector(".js-plotly-plot")
    page.get_by_label("Text contains").fill("hypertension")
    page.keyboard.press("Enter")
    wait_for_app(page)
    # Wait for what the search itself draws: the viewer's "Provenance" heading can be on screen from the rerun
    # before, and Streamlit streams a page's elements while its script still runs.
    page.get_by_text("match(es)").first.wait_for()
    page.get_by_text("Decisions", exact=True).first.wait_for()
    body = page.inner_text("[data-testid='stMain']")
    assert "match(es)" in body and "Decisions" in body
    page.screenshot(path="/tmp/studio-corpus.png", full_page=True)
