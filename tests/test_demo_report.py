"""The demo's last steps as the recipe runs them (two mixes, a training job on each, evaluate, report), on a tiny
workspace with a real recall run, a tiny randomly initialised Llama and a small fixed MMLU subset: an eval-driven mix
and its random control that differ only in where the domain text comes from, a short CPT job on each (the
eval-driven one averaged with its base), the base and every trained model evaluated with the base scored once, and
ONE report with both runs side by side, shown by the Report page; run again, the mixes and jobs are reused and
nothing is evaluated twice."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from evalkit import small_mmlu_workspace, tiny_llama

from core.demo import load_recipe, run_steps
from core.ingest import IngestConfig, ingest
from core.jobs import list_jobs
from core.recall import RecallConfig, run_recall
from core.report import SECTIONS
from core.workspace import Workspace

CORPORA = (("medquad", "domain", "medquad/corpus_en_medquad_nih_paragraphs.jsonl", 120),
           ("wiki", "general", "llamafactory/corpus_en_wikipedia_paragraphs.jsonl", 80),
           ("medquad_sft", "instruction", "medquad/sft_en_medquad_alpaca.jsonl", 30))
SCORING = {"benchmarks": ["mmlu_med", "mmlu_gen"], "perplexity_docs": 5}


def _tiny_workspace(root: Path, data_dir: Path) -> Path:
    """The small MMLU workspace with small domain, general and instruction corpora and a recall run over them, so
    the recipe's mix steps find a recalled set and its control."""
    path = small_mmlu_workspace(root, data_dir)
    with Workspace.open(path) as ws:
        for name, role, relative, n in CORPORA:
            with open(data_dir / relative, encoding="utf-8") as fh:
                lines = [next(fh) for _ in range(n)]
            (root / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
            ingest(ws, IngestConfig(sources=[str(root / f"{name}.jsonl")], corpus=name, role=role))
        run_recall(ws, RecallConfig(k=10, floor=0.1))
    return path


def _demo_steps(model: Path) -> list[dict]:
    """The recipe's steps from its first mix on, in order, with the model and the sizes made tiny."""
    steps = load_recipe()["step"]
    planned = []
    for step in steps[next(i for i, s in enumerate(steps) if s["name"] == "mix"):]:
        step = dict(step)
        if step["name"] == "mix":
            step.update(total_tokens=3_000, validation={"tokens": 600})
        elif step["name"] == "train":
            step.update(model=str(model), max_steps=4, block_size=32, eval_steps=2, save_steps=100, eval_tokens=128,
                        learning_rate=3e-3)
        elif step["name"] == "evaluate":
            step.update(SCORING)
            step.pop("limit")
        elif step["name"] == "report":
            step["scoring"] = {k: v for k, v in {**step["scoring"], **SCORING}.items() if k != "limit"}
        planned.append(step)
    return planned


@pytest.fixture(scope="module")
def demo_run(data_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("demo_report")
    ws = _tiny_workspace(root, data_dir)
    model = tiny_llama(root / "base", seed=0)
    planned = _demo_steps(model)
    with Workspace.open(ws) as w:
        first = run_steps(w, planned)
        second = run_steps(w, planned)
    return ws, planned, first, second


def _members(out_dir: str) -> list[dict]:
    return pq.read_table(Path(out_dir) / "members.parquet").to_pylist()


def test_two_mixes_differ_only_in_where_the_domain_text_comes_from(demo_run) -> None:
    ws, planned, first, _ = demo_run
    assert [s.get("stage", s["step"]) for s in first] == [
        "mix demo-mip", "mix demo-control", "train demo-mip", "train demo-control", "evaluate", "report"]
    mip, control = (json.loads((Path(s["out_dir"]) / "manifest.json").read_text()) for s in first[:2])
    assert mip["components"]["recalled"]["source"] == "recalled" and "control" not in mip["components"]
    assert control["components"]["control"]["source"] == "control" and "recalled" not in control["components"]
    for manifest in (mip, control):  # the whole domain share from the set; the domain corpora only hold out text
        assert manifest["components"]["domain"]["tokens"] == 0
        assert {name: round(c["share_requested"], 3) for name, c in manifest["components"].items()} == {
            ("recalled" if manifest is mip else "control"): 0.8, "domain": 0.0, "instruction": 0.1, "general": 0.1}
    # the same held-out text for both mixes, so their perplexities compare (and the base's is scored once)
    for vset in ("domain", "general"):
        assert (Path(first[0]["out_dir"]) / f"validation_{vset}.jsonl").read_bytes() == \
            (Path(first[1]["out_dir"]) / f"validation_{vset}.jsonl").read_bytes()
    with Workspace.open(ws, read_only=True) as w:
        recalled = {r[0] for r in w.query("SELECT doc_id FROM recalled_documents")}
        random_control = {r[0] for r in w.query("SELECT doc_id FROM control_documents")}
    for step, component, allowed in ((first[0], "recalled", recalled), (first[1], "control", random_control)):
        drawn = {m["doc_id"] for m in _members(step["out_dir"]) if m["component"] == component}
        assert drawn and drawn <= allowed


def test_a_job_on_each_mix_then_one_evaluation_and_one_report_of_both(demo_run) -> None:
    ws, planned, first, _ = demo_run
    averaged = [bool(s.get("average", {}).get("enabled")) for s in planned if s["name"] == "train"]
    assert averaged[0] and planned[2]["average"] == {"enabled": True, "alpha": 0.3}
    _, _, train_mip, train_control, evaluate, report = first
    assert train_mip["status"] == train_control["status"] == "finished"  # trained one after the other
    assert train_mip["job_id"] != train_control["job_id"]
    for train, with_average in zip((train_mip, train_control), averaged, strict=True):
        job = Path(train["output_dir"])
        assert (job / "model" / "model.safetensors").is_file()
        assert (job / "model_averaged" / "model.safetensors").is_file() == with_average
    models = [["base", "trained", *(["averaged"] if a else [])] for a in averaged]
    assert [(j["mix"], j["job_id"], j["models"]) for j in evaluate["jobs"]] == [
        ("demo-mip", train_mip["job_id"], models[0]), ("demo-control", train_control["job_id"], models[1])]
    assert evaluate["job_id"] == train_mip["job_id"] and evaluate["models"] == models[0]
    # each trained model with the base, 2 benchmarks x 2 formulations each: the base scored once, then cached
    comparisons = sum(len(m) - 1 for m in models)
    assert evaluate["scores"] == 8 * comparisons and evaluate["cached"] == 4 * comparisons - 4

    html, data = Path(report["html"]), json.loads(Path(report["json"]).read_text())
    assert html.name == "demo.html" and html.parent.name == "reports" and html.parent.parent.name == "artifacts"
    assert [(e["mix"], e["label"]) for e in data["entries"]] == [
        (mix, label) for mix, labels in zip(("demo-mip", "demo-control"), models, strict=True) for label in labels[1:]]
    assert [(r["mix"], r["label"]) for r in data["side_by_side"]] == [(e["mix"], e["label"]) for e in data["entries"]]
    for row in data["side_by_side"]:
        assert {"Domain gain", "Retention", "Domain perplexity"} <= set(row["cards"])
    for entry in data["entries"]:
        assert {p["validation_set"] for p in entry["perplexity"]} == {"domain", "general"}
        assert len(entry["metrics"]) > 0
        assert entry["lineage"]["output_dir"] == (train_mip if entry["mix"] == "demo-mip" else train_control)[
            "output_dir"]
        for benchmark_scores in (entry["scores"]["base"]["benchmarks"], entry["scores"]["trained"]["benchmarks"]):
            assert {(s["benchmark"], s["formulation"]) for s in benchmark_scores} == {
                (b, f) for b in ("mmlu_med", "mmlu_gen") for f in ("letter", "cloze")}
    # one base for every entry: the same scores on the same items, its perplexity scored once per validation set
    assert len({json.dumps(e["scores"]["base"]["benchmarks"], sort_keys=True) for e in data["entries"]}) == 1
    with Workspace.open(ws, read_only=True) as w:
        assert w.scalar("SELECT count(*) FROM eval_perplexity WHERE model_fingerprint = ?",
                        [data["entries"][0]["base"]["fingerprint"]]) == 2
    assert len({e["model"]["fingerprint"] for e in data["entries"]}) == len(data["entries"])
    page = html.read_text(encoding="utf-8")
    assert all(f"data-section='{s}'" in page or f'data-section="{s}"' in page for s in SECTIONS)
    assert "data-section='Runs side by side'" in page and "on mix demo-control" in page
    assert "<script src=" not in page
    assert any("Domain gain" in card for card in report["cards"])


def test_rerun_reuses_the_mixes_the_jobs_and_every_score(demo_run) -> None:
    ws, _, first, second = demo_run
    assert [s["run_id"] for s in second[:2]] == [s["run_id"] for s in first[:2]]  # the exports are reused
    assert [s["job_id"] for s in second[2:4]] == [s["job_id"] for s in first[2:4]]
    assert len(list_jobs(ws, "train")) == 2
    assert second[4]["cached"] == second[4]["scores"]  # nothing evaluated again
    assert json.loads(Path(second[5]["json"]).read_text())["side_by_side"] == \
        json.loads(Path(first[5]["json"]).read_text())["side_by_side"]


def test_report_page_offers_the_demo_report(demo_run) -> None:
    from conftest import run_page

    ws, _, _, _ = demo_run
    at = run_page("report.py", ws)
    assert not at.exception
    assert [b.label for b in at.download_button] == ["Download HTML", "Download JSON"]
    assert "demo.html" in [Path(str(o)).name for o in at.selectbox[-1].options]


def test_mix_page_starts_a_preset_from_the_control_set(demo_run) -> None:
    from streamlit.testing.v1 import AppTest

    ws, _, _, _ = demo_run
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "mix.py"), default_timeout=60)
    at.session_state["workspace"] = str(ws)
    at.run()
    assert not at.exception
    at.selectbox(key="mix_domain_source").set_value("control")
    at.button[0].click()  # Load the preset
    at.run()
    assert not at.exception
    assert [(s.label, s.value) for s in at.slider] == [("control", 80.0), ("domain", 0.0), ("instruction", 10.0),
                                                       ("general", 10.0)]


def test_a_training_job_that_fails_fails_the_train_step(demo_run, tmp_path: Path) -> None:
    """The train step says its job failed (with the log's last lines), instead of passing and leaving the evaluate
    step to find no model."""
    import shutil

    ws, planned, _, _ = demo_run
    copy = tmp_path / "ws"
    shutil.copytree(ws, copy)
    broken = tiny_llama(tmp_path / "broken-model", seed=0)
    for weights in Path(broken).glob("*.safetensors"):  # cut short, as a disk that filled up leaves them
        weights.write_bytes(weights.read_bytes()[:64])
    train = next(dict(s) for s in planned if s["name"] == "train")
    train.update(model=str(broken), max_steps=2)
    train.pop("average", None)
    with Workspace.open(copy) as w, pytest.raises(RuntimeError, match=r"training job train-\S+ failed \(log: "):
        run_steps(w, [train])
