"""The report: a job's models against their base (tiny random Llamas, so it is fast), one self-contained HTML file
that opens in headless Chromium with every section and chart visible and no network request, and its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evalkit import job_folder, small_mmlu_workspace, tiny_llama, validation_folder

from core.evaluate import EvalConfig
from core.models import ModelUnavailable
from core.report import SECTIONS, ReportConfig, build_report, job_model_dir
from core.workspace import Workspace, WorkspaceError
from studio.cli import main as cli_main


@pytest.fixture(scope="module")
def report_setup(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("report")
    ws = small_mmlu_workspace(root, data_dir)
    base = tiny_llama(root / "base", seed=0)
    job = job_folder(root / "job-cpt-1", tiny_llama(root / "trained", seed=1), base_model=str(base))
    tiny_llama(job / "model_averaged", seed=2)
    validation = validation_folder(root / "validation")
    out = root / "out" / "report.html"
    scoring = EvalConfig(model="", mix=str(validation))
    with Workspace.open(ws) as w:
        result = build_report(w, ReportConfig(jobs=[str(job)], out=str(out), scoring=scoring))
    return ws, job, base, validation, result


def test_job_lookup_accepts_a_folder_or_a_job_id_and_refuses_what_is_not_a_job(report_setup, tmp_path: Path) -> None:
    ws, job, base, _, _ = report_setup
    with Workspace.open(ws) as w:
        found = job_model_dir(w, str(job))
        assert set(found.models) == {"trained", "averaged"} and found.meta["base_model"] == str(base)
        assert [m["step"] for m in found.metrics] == [1, 2, 3, 4, 5, 6]
        with pytest.raises(WorkspaceError, match="neither a job output folder"):
            job_model_dir(w, "job-that-does-not-exist")
        empty = tmp_path / "unfinished"
        empty.mkdir()
        with pytest.raises(ModelUnavailable, match="no model/ folder"):
            job_model_dir(w, str(empty))
        # the training step's jobs table (core.jobs): a job id resolves to its output folder, its TOML config read
        w.con.execute("INSERT INTO jobs (job_id, kind, config, status, output_dir) "
                      "VALUES ('cpt-1', 'train', 'learning_rate = 0.0001', 'finished', ?)", [str(job)])
        by_id = job_model_dir(w, "cpt-1")
        assert by_id.output_dir == job.resolve() and set(by_id.models) == {"trained", "averaged"}
        assert by_id.config == {"learning_rate": 0.0001}
        w.con.execute("DELETE FROM jobs WHERE job_id = 'cpt-1'")


def test_report_json_has_gain_retention_perplexity_flips_and_lineage(report_setup) -> None:
    _, job, _, _, result = report_setup
    data = json.loads(Path(result.json_path).read_text())
    assert [e["label"] for e in data["entries"]] == ["trained", "averaged"]
    for entry in data["entries"]:
        titles = {c["title"] for c in entry["cards"]}
        assert {"Domain gain", "Retention", "Domain perplexity"} <= titles
        for card in entry["cards"]:
            if "gain" in card:
                assert card["gain"]["low"] <= card["gain"]["value"] <= card["gain"]["high"]
                assert card["passed"] == (card["gain"]["value"] > 0 if card["kind"] == "domain"
                                          else card["retention"]["value"] >= 0.95)
        kinds = {(c["benchmark"], c["kind"], c["formulation"], c["metric"]) for c in entry["comparisons"]}
        assert ("mmlu_med", "domain", "cloze", "acc_norm") in kinds and ("mmlu_gen", "general", "letter", "acc") in kinds
        assert {p["validation_set"] for p in entry["perplexity"]} == {"domain", "general"}
        for flip in entry["flips"]:
            assert flip["question"] and flip["direction"] in ("wrong_to_right", "right_to_wrong")
        assert entry["lineage"]["output_dir"] == str(job.resolve())
        assert entry["metrics"][0]["step"] == 1
    # the base was scored once for both variants: its cached scores are reused
    assert data["entries"][0]["scores"]["base"] == data["entries"][1]["scores"]["base"]


@pytest.mark.browser
def test_report_html_opens_offline_with_every_section_and_chart(report_setup, _browser) -> None:
    _, _, _, _, result = report_setup
    html_text = Path(result.html_path).read_text()
    assert "<script src=" not in html_text and "<link " not in html_text  # plotly.js is inline
    context = _browser.new_context(viewport={"width": 1400, "height": 1000})
    requests: list[str] = []

    def refuse(route) -> None:
        requests.append(route.request.url)
        route.abort()

    context.route("http://**/*", refuse)
    context.route("https://**/*", refuse)
    page = context.new_page()
    page.goto(Path(result.html_path).as_uri())
    page.wait_for_selector(".plotly-graph-div .main-svg", timeout=30_000)
    for section in SECTIONS:
        blocks = page.locator(f"[data-section='{section}']")
        assert blocks.count() == 2, section  # one per model of the job
        for k in range(blocks.count()):
            blocks.nth(k).scroll_into_view_if_needed()
            assert blocks.nth(k).is_visible(), section
    charts = page.locator(".plotly-graph-div")
    # per entry: 4 subject charts (2 benchmarks x 2 formulations), perplexity, training curves
    assert charts.count() == 12
    for k in range(charts.count()):
        chart = charts.nth(k)
        chart.scroll_into_view_if_needed()
        assert chart.is_visible() and chart.locator(".main-svg").count() >= 1
        box = chart.bounding_box()
        assert box and box["height"] > 200 and box["width"] > 300
    assert page.get_by_text("Domain gain").first.is_visible()
    assert page.get_by_text("Retention").first.is_visible()
    assert requests == []
    context.close()


def test_report_command_writes_html_and_json(report_setup, tmp_path: Path, capsys) -> None:
    ws, job, _, validation, _ = report_setup
    out = tmp_path / "r.html"
    code = cli_main(["report", str(ws), "--jobs", str(job), "--out", str(out), "--mix", str(validation),
                     "--formulation", "letter", "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["ok"] and Path(printed["html"]).is_file() and Path(printed["json"]).is_file()
    assert any(c["title"] == "Retention" for c in printed["cards"])
    assert cli_main(["report", str(ws), "--jobs", "nope", "--out", str(out)]) == 2


def test_evaluate_and_report_pages_show_the_cached_scores_and_the_report(report_setup) -> None:
    from conftest import run_page

    ws, _, _, _, result = report_setup
    at = run_page("evaluate.py", ws)
    assert not at.exception
    frames = [d.value for d in at.dataframe]
    scores = frames[0]
    assert {"mmlu_med", "mmlu_gen"} <= set(scores["benchmark"]) and {"letter", "cloze"} <= set(scores["formulation"])
    assert scores["acc"].between(0, 1).all()
    assert len(frames[1]) == 6  # the items of the first score listed
    reports = ws / "artifacts" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "r.html").write_text(Path(result.html_path).read_text())
    (reports / "r.json").write_text(Path(result.json_path).read_text())
    at = run_page("report.py", ws)
    assert not at.exception
    assert [b.label for b in at.download_button] == ["Download HTML", "Download JSON"]


def test_retention_over_items_the_base_never_got_right_is_undefined_not_nan() -> None:
    from core.evaluate.evaluation import BenchmarkScore, ItemResult, ModelScores
    from core.report import pooled

    def scores(preds: list[int]) -> ModelScores:
        items = [ItemResult(f"d{k}", f"i{k}", "gen", "s", "cloze", [0.0] * 4, [1] * 4, p, p, 1, "")
                 for k, p in enumerate(preds)]
        bench = BenchmarkScore("gen", "general", "cloze", 0, "key", False, {}, {}, {}, 0, {}, items)
        return ModelScores(None, [bench], [])  # type: ignore[arg-type]

    card = pooled(scores([0, 0, 2, 3]), scores([1, 0, 1, 3]), "general", "cloze", 0.0, 0.95)
    assert card["passed"] and card["text"] == "undefined: the base scored 0 of 4 (trained 50.0 %)"
    assert "nan" not in card["text"]
