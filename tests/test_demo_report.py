"""The demo's last steps (train, evaluate, report) as the recipe runs them, on a tiny randomly initialised Llama, a
tiny export and a small fixed MMLU subset: a short CPT job averaged with its base, the base, trained and averaged
models evaluated, the report files written with every section and shown by the Report page; run again, the job
is reused and nothing is evaluated twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from evalkit import small_mmlu_workspace, tiny_llama
from test_train import tiny  # noqa: F401  (the tiny export of the training tests)

from core.demo import load_recipe, run_steps
from core.jobs import list_jobs
from core.report import SECTIONS
from core.workspace import Workspace


def _demo_steps(export: Path, model: Path) -> list[dict]:
    """The recipe's train, evaluate and report steps, with the model, mix and sizes made tiny."""
    steps = {s["name"]: s for s in load_recipe()["step"]}
    train = {**steps["train"], "model": str(model), "mix": str(export), "max_steps": 4, "block_size": 32,
             "eval_steps": 2, "save_steps": 100, "eval_tokens": 128, "learning_rate": 3e-3}
    scoring = {"benchmarks": ["mmlu_med", "mmlu_gen"], "limit": None, "perplexity_docs": 5}
    evaluate = {**steps["evaluate"], "mix": str(export), **scoring}
    report = {**steps["report"], "mix": str(export), "scoring": {**steps["report"]["scoring"], **scoring}}
    for step in (evaluate, report["scoring"]):
        step.pop("limit")
    return [train, evaluate, report]


@pytest.fixture(scope="module")
def demo_run(tiny, data_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    root = tmp_path_factory.mktemp("demo_report")
    ws = small_mmlu_workspace(root, data_dir)
    model = tiny_llama(root / "base", seed=0)
    planned = _demo_steps(tiny["export"], model)
    with Workspace.open(ws) as w:
        first = run_steps(w, planned)
        second = run_steps(w, planned)
    return ws, planned, first, second


def test_recipe_trains_with_averaging_then_evaluates_and_reports(demo_run) -> None:
    _, planned, first, _ = demo_run
    assert planned[0]["average"] == {"enabled": True, "alpha": 0.3}
    assert [s["step"] for s in first] == ["train", "evaluate", "report"] and all(s["seconds"] >= 0 for s in first)
    train, evaluate, report = first
    job = Path(train["output_dir"])
    assert (job / "model" / "model.safetensors").is_file() and (job / "model_averaged" / "model.safetensors").is_file()
    assert evaluate["job_id"] == train["job_id"] and evaluate["models"] == ["base", "trained", "averaged"]
    # 3 models x 2 benchmarks x 2 formulations, the base scored twice (once per comparison) and cached the second time
    assert evaluate["scores"] == 16 and evaluate["cached"] == 4
    html, data = Path(report["html"]), json.loads(Path(report["json"]).read_text())
    assert html.name == "demo.html" and html.parent.name == "reports" and html.parent.parent.name == "artifacts"
    assert [e["label"] for e in data["entries"]] == ["trained", "averaged"]
    for entry in data["entries"]:
        assert {"Domain gain", "Retention", "Domain perplexity"} <= {c["title"] for c in entry["cards"]}
        assert {p["validation_set"] for p in entry["perplexity"]} == {"domain", "general"}
        assert len(entry["metrics"]) > 0 and entry["lineage"]["output_dir"] == str(job)
        for benchmark_scores in (entry["scores"]["base"]["benchmarks"], entry["scores"]["trained"]["benchmarks"]):
            assert {(s["benchmark"], s["formulation"]) for s in benchmark_scores} == {
                (b, f) for b in ("mmlu_med", "mmlu_gen") for f in ("letter", "cloze")}
    assert data["entries"][0]["model"]["fingerprint"] != data["entries"][1]["model"]["fingerprint"]
    page = html.read_text(encoding="utf-8")
    assert all(f"data-section='{s}'" in page or f'data-section="{s}"' in page for s in SECTIONS)
    assert "<script src=" not in page
    assert any("Domain gain" in card for card in report["cards"])


def test_rerun_reuses_the_job_and_every_score(demo_run) -> None:
    ws, _, first, second = demo_run
    assert second[0]["job_id"] == first[0]["job_id"] and second[0]["status"] == "finished"
    assert len(list_jobs(ws, "train")) == 1
    assert second[1]["cached"] == second[1]["scores"]  # nothing evaluated again
    assert json.loads(Path(second[2]["json"]).read_text())["entries"][0]["cards"] == \
        json.loads(Path(first[2]["json"]).read_text())["entries"][0]["cards"]


def test_report_page_offers_the_demo_report(demo_run) -> None:
    from conftest import run_page

    ws, _, _, _ = demo_run
    at = run_page("report.py", ws)
    assert not at.exception
    assert [b.label for b in at.download_button] == ["Download HTML", "Download JSON"]
    assert "demo.html" in [Path(str(o)).name for o in at.selectbox[-1].options]
