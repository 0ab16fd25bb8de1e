"""The flow (core/flow.py): one declared order of the curation steps, each step seeing what the steps before it
left; stale steps; the funnel; dedup keeping a member that survived the filters before it; and the demo recipe's
curation steps run twice on the shared data giving the same corpus, counts and export."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.dedup import DedupConfig, deduplicate
from core.demo import build_demo, load_recipe
from core.flow import (
    FLOW,
    check_recipe_order,
    drop_counts,
    flow_order,
    funnel,
    scope_sql,
    set_flow_order,
    stale_steps,
)
from core.ingest import IngestConfig, ingest
from core.quality import QualityFilterConfig, QualityScoreConfig, apply_filters, score_quality
from core.workspace import Workspace, WorkspaceError
from studio.cli import main as studio_main

MEDQUAD = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"
FILTERS_FIRST = ("quality", "terms", "dedup_exact", "dedup_minhash", "dedup_semantic", "decontam", "recall")


def _planted_cluster(data_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    """A real MedQuAD paragraph three times: first with a lorem-ipsum line appended (C4's lorem-ipsum rule
    drops it), then as it is, then with one word changed; plus two unrelated paragraphs. The three are
    near-duplicates (MinHash Jaccard well above 0.8)."""
    with open(data_dir / MEDQUAD, encoding="utf-8") as fh:
        texts = [t for t in (json.loads(line)["text"] for line in fh) if 80 <= len(t.split()) <= 150][:3]
    base, other1, other2 = texts
    words = base.split()
    words[len(words) // 2] = "altered"
    path = tmp_path / "planted.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i, text in enumerate([base + "\nLorem ipsum dolor sit amet.", base, " ".join(words), other1, other2]):
            fh.write(json.dumps({"id": f"p{i}", "text": text}) + "\n")
    return path, base


def _doc_ids(ws: Workspace) -> list[str]:
    return [r[0] for r in ws.query("SELECT doc_id FROM documents ORDER BY source_line")]


def _lorem_filter() -> QualityFilterConfig:
    return QualityFilterConfig(rules=["c4_lorem_ipsum:max"], keep_share=0.0)


def test_cluster_whose_first_member_fails_a_filter_keeps_another(data_dir: Path, empty_ws: Workspace,
                                                                  tmp_path: Path) -> None:
    ws = empty_ws
    path, _ = _planted_cluster(data_dir, tmp_path)
    ingest(ws, IngestConfig(sources=[str(path)], corpus="planted", role="domain"))
    first, second, third, *_ = _doc_ids(ws)
    # The filters before dedup, as FineWeb orders them.
    assert set_flow_order(ws, FILTERS_FIRST) == FILTERS_FIRST and flow_order(ws) == FILTERS_FIRST
    score_quality(ws, QualityScoreConfig(workers=1))
    filtered = apply_filters(ws, _lorem_filter())
    assert filtered.dropped == 1 and filtered.by_rule == {"c4_lorem_ipsum:max": 1}
    result = deduplicate(ws, DedupConfig(method="minhash", keep="first"))
    assert result.documents == 4  # the filter's drop is out of dedup's scope
    drops = dict(ws.query("SELECT doc_id, step FROM active_drops"))
    assert drops == {first: "quality", third: "dedup_minhash"}
    kept = ws.query("SELECT kept_doc FROM dedup_clusters WHERE run_id = ?", [result.run_id])
    assert {k for (k,) in kept} == {second}  # the cluster keeps the first member that survived the filter
    assert not stale_steps(ws)
    # The same steps in the other time order give the same corpus: the scope follows the flow, not history.
    again = deduplicate(ws, DedupConfig(method="minhash", keep="first"))
    assert [s.step for s in stale_steps(ws)] == []
    assert apply_filters(ws, _lorem_filter()).dropped == 1
    assert [s.step for s in stale_steps(ws)] == ["dedup_minhash"]  # the filter before it was re-applied
    assert deduplicate(ws, DedupConfig(method="minhash", keep="first")).dropped == again.dropped == 1
    assert not stale_steps(ws)
    assert dict(ws.query("SELECT doc_id, step FROM active_drops")) == drops
    # New documents: every step that ran has not seen them.
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"id": "m0", "text": "A paragraph ingested after curation."}) + "\n")
    ingest(ws, IngestConfig(sources=[str(more)], corpus="planted", role="domain"))
    assert [(s.step, s.because) for s in stale_steps(ws)] == [("quality", "ingest"), ("dedup_minhash", "ingest")]


def test_default_order_dedup_first_and_stale_marking(data_dir: Path, empty_ws: Workspace, tmp_path: Path) -> None:
    ws = empty_ws
    path, _ = _planted_cluster(data_dir, tmp_path)
    ingest(ws, IngestConfig(sources=[str(path)], corpus="planted", role="domain"))
    first, second, third, *_ = _doc_ids(ws)
    assert flow_order(ws) == FLOW
    score_quality(ws, QualityScoreConfig(workers=1))
    apply_filters(ws, _lorem_filter())  # applied first in time, but after dedup in the flow
    assert stale_steps(ws) == []
    near = deduplicate(ws, DedupConfig(method="minhash", keep="longest"))
    assert near.documents == 5  # the quality filter comes later in the flow: its drops do not narrow dedup
    stale = stale_steps(ws)
    assert [(s.step, s.because) for s in stale] == [("quality", "dedup_minhash")]
    assert funnel(ws).stages[FLOW.index("quality")].stale
    # keep = longest keeps the lorem-ipsum copy (it is the longest); the quality filter then drops it.
    assert ws.query("SELECT DISTINCT kept_doc FROM dedup_clusters WHERE run_id = ?", [near.run_id]) == [(first,)]
    apply_filters(ws, _lorem_filter())
    assert stale_steps(ws) == []
    # keep = first keeps the ingest order's first; best_quality needs scores and uses the composite.
    by_quality = deduplicate(ws, DedupConfig(method="minhash", policy="quality"))
    assert by_quality.dropped == 2 and DedupConfig(policy="quality").keep == "best_quality"
    counts = funnel(ws)
    assert [s.step for s in counts.stages] == list(FLOW)
    assert counts.stages[0].documents_in == 5 and counts.current_documents == 5 - sum(
        s.dropped for s in counts.stages)
    assert drop_counts(ws)["dedup_minhash"] == 2


def test_one_scope_function_and_order_checks(empty_ws: Workspace) -> None:
    sql, params = scope_sql(empty_ws, "terms", roles=["domain"], corpora=["it's"])
    assert "it's" not in sql and params == [["terms", "decontam", "recall"], ["domain"], ["it's"]]
    assert empty_ws.query(f"SELECT count(*) FROM ({sql})", params) == [(0,)]
    with pytest.raises(WorkspaceError, match="not a step of the flow"):
        scope_sql(empty_ws, "mix")
    with pytest.raises(WorkspaceError, match="missing dedup_exact"):
        set_flow_order(empty_ws, FLOW[1:])
    recipe = load_recipe()
    check_recipe_order(recipe["step"])  # the demo recipe follows the flow
    swapped = [{"name": "quality"}, {"name": "dedup", "methods": ["exact"]}]
    with pytest.raises(ValueError, match="runs quality before dedup_exact"):
        check_recipe_order(swapped)
    check_recipe_order(swapped, FILTERS_FIRST)


def test_cli_keep_and_status_show_the_flow(ws_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpora = "fever_textbook_zh"
    assert studio_main(["dedup", str(ws_copy), "--method", "exact", "--corpora", corpora, "--keep", "longest",
                        "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"]["policy"] == "longest" and out["dropped"] > 0
    assert studio_main(["dedup", str(ws_copy), "--method", "minhash", "--corpora", corpora, "--policy", "first",
                        "--json"]) == 0
    capsys.readouterr()
    assert studio_main(["dedup", str(ws_copy), "--method", "exact", "--corpora", corpora, "--json"]) == 0
    capsys.readouterr()
    assert studio_main(["status", str(ws_copy)]) == 0
    text = capsys.readouterr().out
    assert "Exact dedup" in text and "MinHash dedup" in text and "STALE" in text
    assert "stale: dedup_minhash" in text
    assert studio_main(["status", str(ws_copy), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in data["stale_steps"]] == ["dedup_minhash"]
    assert data["flow"]["stages"][0]["dropped"] == out["dropped"]


# --- the demo recipe, twice ------------------------------------------------------------------------------------------
# A subset of the demo's corpora (every role, natural exact duplicates, Chinese and English, two benchmarks), so the
# demo recipe's curation steps run twice in about a minute; the steps are the recipe's, with the embedding and
# language-model work bounded (perplexity off, semantic dedup and recall on small pools).
SUBSET = ("fever_textbook_zh", "medical_dialogue_zh", "medical_rag_qa_zh", "pubmed_abstracts", "wikipedia_en",
          "alpaca_en", "medical_sharegpt_zh", "mmlu_medical", "cmmlu_medical")
CHEAPER = {
    "dedup": {"semantic": {"corpora": ["medical_rag_qa_zh"]}},
    "quality": {"perplexity": False},
    "recall": {"benchmarks": ["mmlu_medical"], "pool": ["pubmed_abstracts", "wikipedia_en", "alpaca_en"],
               "max_items_per_benchmark": 60, "pool_sample": 300},
    "mix": {"total_tokens": 400_000, "validation": {"tokens": 20_000}},
}


def _test_recipe(tmp_path: Path) -> Path:
    import tomli_w

    recipe = load_recipe()
    recipe["corpus"] = [c for c in recipe["corpus"] if c["name"] in SUBSET]
    assert len(recipe["corpus"]) == len(SUBSET)
    # the curation steps and the mix only: training and what follows it are not part of this comparison
    recipe["step"] = [step for step in recipe["step"] if step["name"] not in ("train", "evaluate", "report")]
    for step in recipe["step"]:
        step.update(CHEAPER.get(step["name"], {}))
    path = tmp_path / "recipe.toml"
    path.write_bytes(tomli_w.dumps(recipe).encode())
    return path


def _outcome(ws: Workspace) -> dict:
    """What a re-run must reproduce: the current corpus, the drops per step, every step's own counts (timings
    aside) and the exported mix files."""
    current = ws.query("SELECT doc_id FROM current_documents ORDER BY doc_id")
    runs = {}
    for step, counts in ws.query("SELECT step, counts FROM runs WHERE active AND status = 'ok' AND step IN "
                                 "(SELECT unnest(?::VARCHAR[]))", [list(FLOW)]):
        # what a run did, not what it found: timings, its id, signatures computed (the re-run reuses them)
        runs[step] = {k: v for k, v in json.loads(counts).items()
                      if "second" not in k and k not in ("run_id", "signatures_computed", "docs_per_s")}
    export = Path(ws.scalar("SELECT export_dir FROM mixes m JOIN runs r ON r.run_id = m.mix_id "
                            "ORDER BY r.ended_at DESC LIMIT 1"))
    manifest = json.loads((export / "manifest.json").read_text())
    files = {key: f["sha256"] for key, f in manifest["files"].items()}
    return {"current": current, "drops": drop_counts(ws), "runs": runs, "files": files,
            "funnel": [(s.documents_in, s.dropped, s.tokens_out) for s in funnel(ws).stages]}


@pytest.mark.slow
def test_demo_recipe_twice_gives_the_same_corpus_counts_and_export(data_dir: Path, tmp_path: Path) -> None:
    recipe = _test_recipe(tmp_path)
    outcomes, seconds = [], []
    with Workspace.open(tmp_path / "ws") as ws:
        for _ in range(2):
            started = time.perf_counter()
            build_demo(ws, data_dir, recipe)
            seconds.append(time.perf_counter() - started)
            assert stale_steps(ws) == []
            outcomes.append(_outcome(ws))
        first, second = outcomes
        assert len(first["current"]) > 10_000 and all(first["drops"][s] > 0 for s in
                                                      ("dedup_exact", "dedup_minhash", "quality", "terms"))
        assert second["current"] == first["current"]
        assert second["drops"] == first["drops"]
        assert second["runs"] == first["runs"]
        assert second["funnel"] == first["funnel"]
        assert second["files"] == first["files"]
        # Each step saw what the steps before it left: quality's scope is the dedup survivors of its roles.
        survivors = ws.scalar(
            f"SELECT count(*) FROM ({scope_sql(ws, 'quality', ['domain', 'general'])[0]})",
            scope_sql(ws, "quality", ["domain", "general"])[1])
        assert first["runs"]["quality"]["documents"] == survivors
    print(f"demo recipe on {len(SUBSET)} corpora: first run {seconds[0]:.0f} s, re-run {seconds[1]:.0f} s")


def test_overview_draws_the_funnel_and_marks_stale_steps(data_dir: Path, tmp_path: Path) -> None:
    from conftest import run_page

    path, _ = _planted_cluster(data_dir, tmp_path)
    with Workspace.open(tmp_path / "ws") as ws:
        ingest(ws, IngestConfig(sources=[str(path)], corpus="planted", role="domain"))
        score_quality(ws, QualityScoreConfig(workers=1))
        apply_filters(ws, _lorem_filter())
        deduplicate(ws, DedupConfig(method="minhash"))
    at = run_page("home.py", tmp_path / "ws")
    assert not at.exception
    assert any("**quality** ran before **dedup_minhash**" in w.value for w in at.warning)
    table = next(t.value for t in at.dataframe if "documents in" in t.value.columns)
    assert table["step"].tolist() == [
        "Exact dedup", "MinHash dedup", "Semantic dedup", "Quality", "Terminology", "Decontamination",
        "Recall (leakage cap)"]
    # dedup kept the first member and dropped the other two; the stale quality run had dropped the first
    assert table["dropped"].tolist() == [0, 2, 0, 1, 0, 0, 0] and table["stale"].tolist()[3]
    assert table["documents in"].tolist()[:2] == [5, 5] and table["documents out"].tolist()[-1] == 2
    assert len(at.get("plotly_chart")) == 2  # the funnel and the fate by role
