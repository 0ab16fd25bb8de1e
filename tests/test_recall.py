"""Eval-driven recall on real data with the bundled embedder: near paraphrases of MMLU-Med items are excluded by
the leakage cap (which the n-gram check misses), clean paragraphs are not, the recalled set leans to the domain, the
control set matches its size and length, the views the mix reads are filled, and what-if counts match a real run."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.decontam import DecontamConfig, contamination_index
from core.ingest import IngestConfig, ingest
from core.recall import RecallConfig, control_sample, run_recall, shared_spans, what_if
from core.workspace import Workspace
from studio.cli import main

N_NEAR = 25


def _tokens(text: str) -> int:
    return len(re.findall(r"\w+", text))


def near_paraphrase(rec: dict) -> str:
    """A near copy that shares no 13-gram with the item: one word of the question dropped after every 11 tokens
    (so no 13 tokens of it run unchanged), the options re-lettered 'A)' on their own lines."""
    kept, run = [], 0
    for word in rec["question"].split():
        if run + _tokens(word) > 11:
            run = 0
            continue
        kept.append(word)
        run += _tokens(word)
    options = "\n".join(f"{'ABCD'[i]}) {c}" for i, c in enumerate(rec["choices"]))
    return f"{' '.join(kept)}\n{options}"


def _lines(path: Path, n: int, seed: int, min_chars: int = 200) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    rows = [r for r in rows if len(r.get("text", r.get("question", ""))) >= min_chars]
    return random.Random(seed).sample(rows, n)


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def recall_ws(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("recall")
    mcq = [json.loads(line) for line in (data_dir / "mmlu/mcq_mmlu_medical_test.jsonl").read_text().splitlines()]
    items = random.Random(11).sample(mcq, 150)
    # Items whose options are all shorter than an n-gram (a long gold option copied whole is a lexical copy).
    near = [r for r in items if _tokens(r["question"]) >= 14 and max(map(_tokens, r["choices"])) < 12][:N_NEAR]
    medquad = _lines(data_dir / "medquad/corpus_en_medquad_nih_paragraphs.jsonl", 300, seed=1)
    wiki = _lines(data_dir / "llamafactory/corpus_en_wikipedia_paragraphs.jsonl", 300, seed=2)
    path = root / "ws"
    with Workspace.open(path) as ws:
        import_benchmark(ws, BenchmarkImportConfig([_write(root / "mmlu_med_150.jsonl", items)], "mmlu_med", "domain"))
        for name, role, rows in (("medquad", "domain", [{"text": r["text"]} for r in medquad]),
                                 ("wiki", "general", [{"text": r["text"]} for r in wiki]),
                                 ("near_copies", "general", [{"text": near_paraphrase(r)} for r in near])):
            ingest(ws, IngestConfig(sources=[_write(root / f"{name}.jsonl", rows)], corpus=name, role=role))
        result = run_recall(ws, RecallConfig(floor=0.4))
    return {"path": path, "result": result, "near": near}


@pytest.mark.slow
def test_near_paraphrases_are_excluded_by_the_cap_and_missed_by_ngrams(recall_ws: dict) -> None:
    result = recall_ws["result"]
    with Workspace.open(recall_ws["path"], read_only=True) as ws:
        drops = ws.query("SELECT d.corpus, a.details, a.score, a.threshold, a.reason FROM active_drops a "
                         "JOIN documents d USING (doc_id) WHERE a.step = 'recall'")
        questions = dict(ws.query("SELECT doc_id, question FROM benchmark_items"))
        near_texts = [r[0] for r in ws.query("SELECT text FROM documents WHERE corpus = 'near_copies'")]
        index = contamination_index(ws, DecontamConfig())
        nearest = ws.query("SELECT d.text, i.question, c.best_similarity FROM recall_candidates c "
                           "JOIN documents d USING (doc_id) JOIN benchmark_items i ON i.doc_id = c.best_item "
                           "WHERE c.run_id = ? AND d.corpus = 'near_copies'", [result.run_id])
    near_drops = [d for d in drops if d[0] == "near_copies"]
    rate = len(near_drops) / N_NEAR
    lowest = min(r[2] for r in nearest)
    print(f"\nnear paraphrases excluded by the cap 0.95: {len(near_drops)}/{N_NEAR} = {rate:.0%}; "
          f"lowest cosine of a near copy to its item {lowest:.3f}")
    # Dropping a word after every 11 tokens and re-lettering the options keeps most copies at or above 0.95 with
    # all-MiniLM-L6-v2; the rest sit just below the cap (lowest measured 0.84), as the page's cap view shows.
    assert rate >= 0.7
    for text, question, _similarity in nearest:  # every near copy's best item is the one it copies
        assert " ".join(question.split()[:3]) in text
    assert lowest >= 0.8
    assert result.excluded_by_cap == len(drops)
    for _corpus, details, score, threshold, reason in near_drops:
        evidence = json.loads(details)
        assert score >= threshold == 0.95 and "leakage cap" in reason
        # The item named is the one the document paraphrases.
        source = questions[evidence["item"]].split()
        assert any(" ".join(source[:8]) in t for t in near_texts)
    # Clean paragraphs never reach the cap; the n-gram check does not see the paraphrases.
    assert {d[0] for d in drops} == {"near_copies"}
    assert sum(bool(f) for f in index.find_many(near_texts)) <= 2
    with Workspace.open(recall_ws["path"], read_only=True) as ws:
        flagged = ws.query("SELECT count(DISTINCT item_doc_id) FROM flagged_benchmark_items WHERE flag = 'near'")
    assert flagged[0][0] == result.items_flagged_near >= len(near_drops) - 2


@pytest.mark.slow
def test_recalled_set_control_set_and_views(recall_ws: dict) -> None:
    result = recall_ws["result"]
    assert result.index_kind == "exact" and result.items == 150 and result.pool_documents == 600 + N_NEAR
    assert result.recalled_documents > 20
    with Workspace.open(recall_ws["path"], read_only=True) as ws:
        by_corpus = dict(ws.query("SELECT d.corpus, count(*) FROM recalled_documents r JOIN documents d "
                                  "USING (doc_id) GROUP BY 1"))
        control = ws.query("SELECT count(*) FROM control_documents")[0][0]
        recalled = ws.query("SELECT count(*), min(best_similarity) FROM recalled_documents")[0]
        stored = ws.query("SELECT count(*) FROM recall_set WHERE run_id = ?", [result.run_id])[0][0]
        stats = ws.query("SELECT sum(hits), max(hits) FROM recall_item_stats WHERE run_id = ?", [result.run_id])[0]
        live = what_if(ws, result.run_id, 0.4, 0.95, 50)
    # Medical exam items pull medical paragraphs, not Wikipedia.
    assert by_corpus.get("medquad", 0) > 3 * by_corpus.get("wiki", 0)
    assert recalled[0] == stored == result.recalled_documents and recalled[1] >= 0.4
    assert control == result.control_documents == result.recalled_documents
    assert abs(result.control_tokens - result.recalled_tokens) <= 0.2 * result.recalled_tokens
    assert stats[1] <= 50
    assert live["recalled_documents"] == result.recalled_documents
    assert live["excluded_by_cap"] == result.excluded_by_cap
    assert result.by_benchmark[0]["benchmark"] == "mmlu_med" and result.by_benchmark[0]["kind"] == "domain"


@pytest.mark.slow
def test_rerun_with_another_cap_supersedes_and_cli_json(recall_ws: dict, capsys: pytest.CaptureFixture) -> None:
    first = recall_ws["result"]
    code = main(["recall", str(recall_ws["path"]), "--json", "--floor", "0.4", "--cap", "0.99"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"]
    # The pool ignores the step's own earlier drops: the same documents, embeddings from the cache.
    assert out["pool_documents"] == first.pool_documents
    assert out["excluded_by_cap"] < first.excluded_by_cap
    with Workspace.open(recall_ws["path"], read_only=True) as ws:
        active = ws.query("SELECT count(*) FROM active_drops WHERE step = 'recall'")[0][0]
        latest = ws.query("SELECT run_id FROM latest_recall_run")[0][0]
    assert active == out["excluded_by_cap"] and latest == out["run_id"]
    code = main(["recall", str(recall_ws["path"]), "--json", "--floor", "0.9", "--cap", "0.8"])
    assert code == 2 and "floor" in capsys.readouterr().out


def test_control_sample_matches_size_and_length_profile() -> None:
    rng = random.Random(0)
    pool = [int(rng.lognormvariate(5, 1)) + 1 for _ in range(5000)]
    recalled = sorted(pool)[-300:]  # long documents, as recall tends to pick
    import numpy as np

    chosen = control_sample(np.asarray(pool), np.asarray(recalled), seed=3)
    assert len(chosen) == len(set(chosen.tolist())) == 300
    total = sum(pool[i] for i in chosen)
    assert abs(total - sum(recalled)) <= 0.15 * sum(recalled)
    again = control_sample(np.asarray(pool), np.asarray(recalled), seed=3)
    assert again.tolist() == chosen.tolist()


def test_shared_spans_mark_the_common_word_runs() -> None:
    a = "Intro text. Which of the following is a tumour suppressor gene? More text."
    b = "WHICH of the following is a TUMOUR suppressor gene\nA. RET"
    spans_a, spans_b = shared_spans(a, b)
    assert a[spans_a[0][0]:spans_a[0][1]] == "Which of the following is a tumour suppressor gene"
    assert b[spans_b[0][0]:spans_b[0][1]] == "WHICH of the following is a TUMOUR suppressor gene"


# --- the page -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def page_ws(recall_ws: dict) -> Path:
    """The recall workspace with a contamination check over a planted copy, so every section has content."""
    path = recall_ws["path"]
    with Workspace.open(path) as ws:
        question, answer = ws.query("SELECT question, answer FROM benchmark_items ORDER BY doc_id LIMIT 1")[0]
        text = ("The committee reviewed the examination papers in detail before the results were published. "
                f"{question} {answer}. The review continued with the next section of the paper.")
        source = ws.artifacts / "leaked.jsonl"
        source.write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
        ingest(ws, IngestConfig(sources=[str(source)], corpus="leaked", role="general"))
        from core.decontam import run_decontam

        run_decontam(ws, DecontamConfig(corpora=["leaked", "medquad", "wiki"]))
        assert ws.query("SELECT count(*) FROM contamination c JOIN documents d USING (doc_id) "
                        "WHERE d.corpus = 'leaked'")[0][0] >= 1
    return path


@pytest.mark.slow
def test_page_live_counts_follow_the_movable_floor_and_cap(page_ws: Path, recall_ws: dict) -> None:
    assert page_ws == recall_ws["path"]
    from streamlit.testing.v1 import AppTest

    from core.config import REPO_ROOT

    at = AppTest.from_file(str(REPO_ROOT / "pages" / "recall.py"), default_timeout=60)
    at.session_state["workspace"] = str(page_ws)
    at.run()
    assert not at.exception

    def metric(label: str) -> str:
        return next(m.value for m in at.metric if m.label == label)

    with Workspace.open(page_ws, read_only=True) as ws:  # the page shows the latest recall run
        run_id = ws.query("SELECT run_id FROM latest_recall_run")[0][0]
        counts = json.loads(ws.query("SELECT counts FROM runs WHERE run_id = ?", [run_id])[0][0])
        params = json.loads(ws.query("SELECT params FROM runs WHERE run_id = ?", [run_id])[0][0])
    assert metric("Recalled documents") == f"{counts['recalled_documents']:,}"
    assert metric("Would be recalled") == f"{counts['recalled_documents']:,}"
    at.slider(key="whatif_floor").set_value(0.3).run()
    with Workspace.open(page_ws, read_only=True) as ws:
        expected = what_if(ws, run_id, 0.3, params["cap"], 50)
    assert metric("Would be recalled") == f"{expected['recalled_documents']:,}"
    assert expected["recalled_documents"] > counts["recalled_documents"]
    at.slider(key="whatif_cap").set_value(0.9).run()
    assert int(metric("Would be excluded (≥ cap)").replace(",", "")) >= recall_ws["result"].excluded_by_cap
    # The contamination table shows the planted copy with its evidence.
    frames = [df.value for df in at.dataframe]
    evidence = next(f for f in frames if "span_text" in f.columns)
    assert set(evidence["corpus"]) == {"leaked"}


@pytest.mark.browser
@pytest.mark.slow
def test_recall_page_in_browser(page_ws: Path, app_server, browser_page) -> None:
    from conftest import open_studio_page

    url = app_server(page_ws)
    pg = browser_page(url)
    open_studio_page(pg, url, "Recall")
    pg.get_by_text("What if: move the floor and the cap").wait_for(timeout=30_000)
    pg.locator(".js-plotly-plot").first.wait_for(timeout=30_000)
    pg.screenshot(path="/tmp/recall_page.png", full_page=True)
    assert pg.locator(".js-plotly-plot").count() >= 2  # histogram and subject coverage
    assert pg.locator("mark").count() > 0, "no shared words highlighted beside the items at the cap"
    pg.get_by_text("Documents right at the cap").first.scroll_into_view_if_needed()
    pg.screenshot(path="/tmp/recall_page_cap.png")
    pg.get_by_text("Contamination (n-gram overlap)").first.scroll_into_view_if_needed()
    pg.screenshot(path="/tmp/recall_page_contamination.png")
