"""The whole flow in a real browser, as a curator walks it: headless Chromium against a live `studio app` on a small
demo workspace (`tests/data/demo_walk.toml`: every role, the curation steps), every page in flow order. On the way
it moves a quality threshold and sees the counts change, opens a dropped document's audit trail, builds and exports
a mix, trains on it (a tiny random Llama with the real SmolLM2 tokenizer: launch, live curves, re-attach, stop,
resume, finish), evaluates the trained model against its base, and builds the report and downloads its HTML.

Screenshots of every page go to `$STUDIO_SCREENSHOTS` (default: the test's temporary folder; the path is printed),
`NN_page.png` one per page and `more/` the states in between. The README's screenshots are those files:

    STUDIO_SCREENSHOTS=/tmp/screens pytest tests/test_browser_walk.py && cp /tmp/screens/*.png docs/screens/
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_walk import (
    VIEWPORT,
    build_walk_workspace,
    check_report_offline,
    choose_option,
    cut_metric_values,
    download_report,
    open_studio_page,
    scroll_to_top,
    set_input,
    shown_metric,
    start_app,
    stop_app,
    train_walk,
    wait_for_app,
    wait_for_job_end,
)
from evalkit import tiny_llama

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.embed import PATH_ENV as EMBED_PATH_ENV
from core.evaluate import score_table
from core.fastpath import TORCH_FP32
from core.jobs import cancel_step_job, get_step_job, kill_job, list_jobs, list_step_jobs, sleep_until
from core.workspace import Workspace

pytestmark = [pytest.mark.browser, pytest.mark.slow]  # slow: MiniLM embeds the recall sample

MMLU_GENERAL = "mmlu/mcq_mmlu_general_test.jsonl"
MIX_NAME = "walk-mix"
TRAIN_STEPS = 30
STEP_DELAY_S = 1.0  # per training step: time for the page to be closed, re-opened and Stop clicked
EVAL_LIMIT = 8  # items per benchmark, for the Evaluate page and the report alike (so the report reuses scores)


def general_benchmark_sample(data_dir: Path, target: Path, per_subject: int = 3) -> Path:
    """The first `per_subject` items of every MMLU general subject, as a JSONL file."""
    taken: dict[str, int] = {}
    with open(data_dir / MMLU_GENERAL, encoding="utf-8") as source, open(target, "w", encoding="utf-8") as out:
        for line in source:
            subject = json.loads(line)["subject"]
            if taken.get(subject, 0) < per_subject:
                taken[subject] = taken.get(subject, 0) + 1
                out.write(line)
    return target


@pytest.fixture(scope="module")
def walk_setup(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The small demo workspace, built once (the recipe's corpora, a general benchmark sample, the recipe's
    steps), and a tiny model beside it (inside the app's allowed roots)."""
    root = tmp_path_factory.mktemp("walk")

    def add_general_benchmark(ws: Workspace) -> None:
        sample = general_benchmark_sample(data_dir, root / "mmlu_general_sample.jsonl")
        import_benchmark(ws, BenchmarkImportConfig(sources=[str(sample)], name="mmlu_general", kind="general"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(EMBED_PATH_ENV, TORCH_FP32)  # no inference-path calibration on a fresh machine
        build_s = build_walk_workspace(root / "ws", data_dir, before_steps=add_general_benchmark)
    yield {"ws": root / "ws", "model": tiny_llama(root / "tiny-llama"), "build_s": round(build_s, 1)}


@pytest.fixture
def screens(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screens")
    (folder / "more").mkdir(parents=True, exist_ok=True)
    return folder


def assert_no_error_shown(page: Any, where: str) -> None:
    exceptions = page.locator("[data-testid='stException']")
    assert exceptions.count() == 0, f"{where}: {exceptions.first.inner_text()}"


def visit(page: Any, url: str, title: str, marker: str, shot: Path | None = None) -> None:
    """Open a page from the sidebar, wait for `marker` to be drawn, check no exception shows, screenshot it."""
    open_studio_page(page, url, title)
    page.get_by_text(marker).first.wait_for(timeout=60_000)
    wait_for_app(page)
    assert_no_error_shown(page, title)
    if shot is not None:
        scroll_to_top(page)
        page.screenshot(path=str(shot))


def end_jobs(ws: Path) -> None:
    """End every job still running on the workspace: step jobs (their work is rolled back), then training jobs."""
    for job in list_step_jobs(ws):
        if job.active:
            cancel_step_job(ws, job.job_id)
            sleep_until(lambda job=job: not get_step_job(ws, job.job_id).active, 30)
    for job in list_jobs(ws):
        if job.active:
            kill_job(ws, job.job_id)


def dropped_document(ws: Path, step: str) -> dict[str, Any]:
    """A document one drop decision of `step` took out, with its rule and score as recorded."""
    with Workspace.open_for_reading(ws) as w:
        row = w.con.execute(
            "SELECT f.doc_id, f.dropped_by, f.drop_reason, f.drop_score FROM document_fate f "
            "WHERE f.dropped_by = ? AND f.drop_score IS NOT NULL "
            "AND (SELECT count(*) FROM decisions d WHERE d.doc_id = f.doc_id) = 1 ORDER BY f.doc_id LIMIT 1",
            [step]).fetchone()
    assert row is not None, f"the walk workspace has no document dropped by {step}"
    return dict(zip(["doc_id", "dropped_by", "reason", "score"], row, strict=True))


def test_a_curator_walks_every_page_from_corpora_to_report(walk_setup: dict[str, Any], screens: Path, _browser,
                                                          data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    ws, model = walk_setup["ws"], walk_setup["model"]
    seconds: dict[str, float] = {"build": walk_setup["build_s"]}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        seconds[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()
        with capsys.disabled():
            print(f"\nbrowser walk: {name} took {seconds[name]} s", flush=True)

    def more(page: Any, name: str) -> None:
        page.screenshot(path=str(screens / "more" / f"{name}.png"))

    proc, url = start_app(ws, {"STUDIO_DATA": str(data_dir), "STUDIO_TRAIN_STEP_DELAY": str(STEP_DELAY_S)})
    context = _browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    try:
        page = context.new_page()
        page.goto(url)
        wait_for_app(page)
        lap("serve")

        # --- the curation pages -----------------------------------------------------------------------------------
        visit(page, url, "Overview", "The flow", screens / "01_overview.png")
        body = page.inner_text("[data-testid='stMain']")
        assert "Runs" in body and "(not run)" in body  # semantic dedup is left out of the walk's recipe
        visit(page, url, "Ingest", "From a path on the server", screens / "02_ingest.png")

        # the audit trail: which step dropped a document, by which rule, with which score
        fate = dropped_document(ws, "quality")
        visit(page, url, "Corpus", "Documents per corpus and language")
        more(page, "corpus_top")
        set_input(page, "Document id", fate["doc_id"])
        verdict = page.locator("[data-testid='stAlert']").filter(has_text="Dropped by")
        verdict.first.wait_for(timeout=30_000)
        trail = verdict.first.inner_text()
        assert f"Dropped by {fate['dropped_by']}: {fate['reason']}" in trail and "score" in trail, (trail, fate)
        assert page.get_by_text("Provenance").count() == 1
        scroll_to_top(page, page.get_by_text("Document", exact=True))
        page.screenshot(path=str(screens / "03_corpus.png"))

        visit(page, url, "Deduplication", "Clusters, largest first", screens / "04_dedup.png")

        # a threshold moved: the kept and dropped counts follow
        visit(page, url, "Quality", "All chosen rules together")
        before = (shown_metric(page, "Kept"), shown_metric(page, "Dropped"))
        slider = page.get_by_role("slider", name=re.compile("^Threshold for"))
        slider.focus()
        slider.press("PageUp")  # a tenth of the range up
        deadline = time.monotonic() + 60
        while (shown_metric(page, "Kept"), shown_metric(page, "Dropped")) == before:
            assert time.monotonic() < deadline, f"the counts did not change: {before}"
            page.wait_for_timeout(250)
        wait_for_app(page)
        after = (shown_metric(page, "Kept"), shown_metric(page, "Dropped"))
        kept, dropped = (int(value.replace(",", "")) for value in after)
        assert shown_metric(page, "Documents") == f"{kept + dropped:,}"  # the same documents, split differently
        assert after != before
        scroll_to_top(page)
        page.screenshot(path=str(screens / "05_quality.png"))
        scroll_to_top(page, page.get_by_text("All chosen rules together"))
        more(page, "quality_counts")

        visit(page, url, "Terminology", "Density per corpus", screens / "06_terms.png")
        visit(page, url, "Recall", "Contamination (n-gram overlap)", screens / "07_recall.png")
        lap("curation pages")

        # --- the mix: built and exported ------------------------------------------------------------------------
        visit(page, url, "Mix", "Requested versus available tokens")
        assert cut_metric_values(page) == []  # the plan's token figures in full
        set_input(page, "Name", MIX_NAME)
        set_input(page, "Token budget", 200_000)
        page.get_by_text("Ordering, validation, export").click()
        set_input(page, "Validation tokens per set", 5_000)  # small sets: perplexity is scored on each, per model
        more(page, "mix_recipe")
        page.get_by_role("button", name="Export mix").first.click()
        wait_for_job_end(page, f"Export mix {MIX_NAME}", timeout_ms=300_000)
        export = ws / "artifacts" / "exports" / MIX_NAME
        manifest = json.loads((export / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["budget"]["exported_tokens"] > 0
        assert all((export / entry["file"]).is_file() for entry in manifest["files"].values())
        files = page.get_by_text("Files", exact=True)
        files.wait_for(timeout=60_000)
        assert page.get_by_text(str(export)).count() >= 1  # where the export went, said on the page
        assert shown_metric(page, "Tokens") == f"{manifest['budget']['exported_tokens']:,}"
        removed = manifest["decontamination"]
        assert shown_metric(page, "Decontamination: dropped / cut") == \
            f"{removed['dropped_documents']:,} / {removed['cut_documents']:,}"
        assert shown_metric(page, "Decontamination: dropped / cut") not in cut_metric_values(page)  # in full
        scroll_to_top(page, page.get_by_text("Exports", exact=True))
        page.screenshot(path=str(screens / "08_mix.png"))
        lap("mix")

        # --- training: launch, watch, re-attach, stop, resume, finish --------------------------------------------
        def train_snap(shot_page: Any, name: str) -> None:
            more(shot_page, name)
            if name == "train_2_live":
                shot_page.screenshot(path=str(screens / "09_train.png"))

        trained = train_walk(_browser, url, ws, train_snap, steps=TRAIN_STEPS, model=str(model), mix=MIX_NAME,
                             block_size=64, eval_steps=10, save_steps=5, eval_tokens=1024,
                             progress_timeout_ms=300_000, end_timeout_s=300)
        assert trained["live_charts"] >= 4 and trained["reattached_status"] in ("running", "stopping")
        assert 0 < trained["stopped_at_step"] < TRAIN_STEPS
        assert trained["attempts"] == 2 and trained["last_step"] == TRAIN_STEPS
        lap("train")

        # --- evaluation: the trained model against its base --------------------------------------------------------
        page.reload()
        wait_for_app(page)
        visit(page, url, "Evaluate", "Command line: ")
        trained_model = str(Path(trained["output_dir"]) / "model")
        set_input(page, "Model", trained_model, commit="Tab")
        set_input(page, "Baseline (optional)", str(model), commit="Tab")
        set_input(page, "Items per benchmark (0 = all)", EVAL_LIMIT, commit="Tab")
        page.get_by_role("button", name="Evaluate").first.click()
        wait_for_job_end(page, re.compile(r"Evaluate \S+"), timeout_ms=300_000)
        page.get_by_text("Perplexity on the validation sets").wait_for(timeout=60_000)
        assert page.get_by_text("Nothing evaluated yet.").count() == 0
        assert page.locator("[data-testid='stDataFrame']").count() >= 2  # scores and the items of one score
        with Workspace.open_for_reading(ws) as w:
            scores = score_table(w)
        assert {"mmlu_medical", "mmlu_general"} <= set(scores["benchmark"])
        assert scores["model"].nunique() == 2  # the trained model and its base
        scroll_to_top(page)
        page.screenshot(path=str(screens / "10_evaluate.png"))
        lap("evaluate")

        # --- the report: built, shown, downloaded, opened offline ------------------------------------------------
        visit(page, url, "Report", "Build a report")
        choose_option(page, "Training jobs", trained["job_id"])
        set_input(page, "Items per benchmark (0 = all)", EVAL_LIMIT, commit="Tab")
        set_input(page, "Report file name", "walk", commit="Tab")
        more(page, "report_form")
        page.get_by_role("button", name="Build report").first.click()
        wait_for_job_end(page, "Report", timeout_ms=300_000)
        html_file = download_report(page, screens / "more", lambda p, name: p.screenshot(
            path=str(screens / "11_report.png")))
        assert html_file.name == "walk.html"
        assert html_file.read_bytes() == (ws / "artifacts" / "reports" / "walk.html").read_bytes()
        offline = check_report_offline(_browser, html_file, lambda p, name: more(p, name))
        lap("report")
    finally:
        context.close()
        stop_app(proc)
        end_jobs(ws)  # a failed walk leaves no job running
    with capsys.disabled():
        print(f"\nbrowser walk: screenshots in {screens}; seconds {json.dumps(seconds)}; training {trained}; "
              f"report {offline['html_bytes']:,} bytes, {offline['charts']} charts")
