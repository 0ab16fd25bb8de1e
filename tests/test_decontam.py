"""Decontamination on real data: MMLU-Med items (question with gold answer) planted into real general paragraphs,
verbatim, re-flowed, with changed case and punctuation; CMMLU items into Chinese textbook prose; the false positive
rate on the untouched shared corpora; cut mode; benchmark import of every supported file layout."""

from __future__ import annotations

import json
import random
import re
import tarfile
import textwrap
from pathlib import Path

import pytest

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.decontam import ContaminationIndex, DecontamConfig, contamination_index, cut_pieces, run_decontam
from core.ingest import IngestConfig, ingest
from core.workspace import Workspace
from studio.cli import main

N_PLANTED = 60


def _items(ws: Workspace, corpus: str, n: int, seed: int, min_words: int = 8) -> list[tuple[str, str, str]]:
    """A seeded sample of items long enough to check (question and answer of at least `min_words` words; the
    shorter ones, 8 of MMLU-Med's 1,089, are counted by the index as too short)."""
    rows = ws.query("SELECT doc_id, question, answer FROM benchmark_items WHERE corpus = ? ORDER BY doc_id", [corpus])
    rows = [r for r in rows if len(re.findall(r"\w+", f"{r[1]} {r[2]}")) >= min_words]
    return random.Random(seed).sample(rows, n)


def _paragraphs(ws: Workspace, corpus: str, n: int, seed: int) -> list[str]:
    rows = [r[0] for r in ws.query("SELECT text FROM documents WHERE corpus = ? AND char_count BETWEEN 400 AND 3000 "
                                   "ORDER BY doc_id", [corpus])]
    return random.Random(seed).sample(rows, n)


def _insert(paragraph: str, snippet: str) -> str:
    # Into the middle of a real paragraph, at a sentence boundary where there is one.
    cut = paragraph.find(". ", len(paragraph) // 2)
    cut = cut + 2 if cut > 0 else max(paragraph.find(" ", len(paragraph) // 2) + 1, 0)
    return f"{paragraph[:cut]}{snippet} {paragraph[cut:]}"


def reflow(text: str) -> str:
    return textwrap.fill(text, width=37)  # hard-wrapped lines, as in a PDF or e-mail copy


def recase_repunctuate(text: str) -> str:
    text = text.upper()
    text = re.sub(r"[,;:?!]", " ... ", text)
    return text.replace(". ", " -- ").replace("'", "’")


@pytest.fixture(scope="module")
def med_index(demo_ws_path: Path) -> ContaminationIndex:
    with Workspace.open(demo_ws_path, read_only=True) as ws:
        return contamination_index(ws, DecontamConfig(benchmarks=["mmlu_medical"]))


@pytest.fixture(scope="module")
def planted(demo_ws_path: Path) -> dict[str, list]:
    """(item doc id, planted text) per variant (the question and its gold answer inside a real paragraph), and
    the untouched paragraphs under 'originals'."""
    with Workspace.open(demo_ws_path, read_only=True) as ws:
        items = _items(ws, "mmlu_medical", N_PLANTED, seed=5)
        paragraphs = _paragraphs(ws, "wikipedia_en", N_PLANTED, seed=6)
        c4 = _paragraphs(ws, "c4_web_en", N_PLANTED, seed=7)
    variants: dict[str, list] = {"verbatim": [], "reflowed": [], "case_punct": [], "originals": paragraphs + c4}
    for (doc_id, question, answer), para, web in zip(items, paragraphs, c4, strict=True):
        copy = f"{question} {answer}."
        variants["verbatim"].append((doc_id, _insert(para, copy)))
        variants["reflowed"].append((doc_id, reflow(_insert(web, copy))))
        variants["case_punct"].append((doc_id, _insert(para, recase_repunctuate(copy))))
    return variants


@pytest.mark.parametrize("variant", ["verbatim", "reflowed", "case_punct"])
def test_planted_copies_are_caught_with_their_item_and_span(med_index: ContaminationIndex,
                                                             planted: dict, variant: str) -> None:
    texts = [t for _, t in planted[variant]]
    found = med_index.find_many(texts)
    caught = 0
    for (item_doc_id, text), overlaps in zip(planted[variant], found, strict=True):
        mine = [o for o in overlaps if o.item_doc_id == item_doc_id]
        if not mine:
            continue
        caught += 1
        question_words = re.findall(r"\w+", med_index.item(item_doc_id).text.casefold())
        span_words = re.findall(r"\w+", text[mine[0].start:mine[0].end].casefold())
        # The stored span is the planted copy (or the part of it long enough to be an n-gram).
        assert len(span_words) >= min(13, len(question_words))
        assert " ".join(span_words) in " ".join(question_words)
    assert caught == len(texts), f"{variant}: {caught}/{len(texts)} caught"
    # `find` one by one agrees with the batched path.
    assert [bool(med_index.find(t)) for t in texts[:10]] == [bool(f) for f in found[:10]]


def test_the_paragraphs_before_planting_are_not_flagged(med_index: ContaminationIndex, planted: dict) -> None:
    originals = planted["originals"]
    assert len(originals) == 2 * N_PLANTED
    assert med_index.find_many(originals) == [[] for _ in originals]


def test_chinese_items_are_caught_by_character_ngrams(demo_ws_path: Path) -> None:
    with Workspace.open(demo_ws_path, read_only=True) as ws:
        index = contamination_index(ws, DecontamConfig(benchmarks=["cmmlu_medical"]))
        items = _items(ws, "cmmlu_medical", 200, seed=3, min_words=0)
        prose = _paragraphs(ws, "fever_textbook_zh", 30, seed=4)
    items = [it for it in items if len(re.findall(r"[\u4e00-\u9fff]", it[1] + it[2])) >= 16][:30]
    texts = []
    for (_doc_id, question, answer), para in zip(items, prose, strict=False):
        copy = f"{question}{answer}"
        # Full-width punctuation changed and a line break in the middle of the copy.
        copy = copy.replace("，", ", ").replace("。", ".")
        copy = copy[: len(copy) // 2] + "\n" + copy[len(copy) // 2:]
        texts.append(_insert(para, copy))
    found = index.find_many(texts)
    for (doc_id, _, _), overlaps in zip(items, found, strict=False):
        assert doc_id in {o.item_doc_id for o in overlaps}
    assert len(found) == len(items) >= 20


@pytest.mark.slow
def test_false_positive_rate_on_untouched_shared_corpora(demo_ws_path: Path, tmp_path: Path) -> None:
    """Every non-benchmark corpus of the shared data against every benchmark (28,509 items).

    Measured: 4 of 30,418 documents (0.013 %) share a 13-gram with a benchmark item, all four inaugural
    addresses quoted verbatim in MMLU high-school history questions (Reagan 1981, the Declaration): genuine
    overlaps, not false positives. Against MMLU-Med: 0 documents."""
    import shutil

    target = tmp_path / "ws"
    shutil.copytree(demo_ws_path, target)
    with Workspace.open(target) as ws:
        result = run_decontam(ws, DecontamConfig())
        rows = ws.query("SELECT c.doc_id, d.corpus, c.benchmark, c.span_text, c.span_end - c.span_start "
                        "FROM contamination c JOIN documents d USING (doc_id) WHERE c.run_id = ?", [result.run_id])
        benchmark_corpora = {r[0] for r in ws.query("SELECT name FROM corpora WHERE role = 'benchmark'")}
    rate = result.documents_contaminated / result.documents_checked
    print(f"\nfalse positive rate: {result.documents_contaminated} / {result.documents_checked} = {rate:.5%}")
    assert result.documents_checked > 25_000
    assert rate <= 0.0005
    assert result.by_benchmark["mmlu_medical"]["documents"] == 0
    for _doc_id, corpus, bench, span, length in rows:
        assert corpus not in benchmark_corpora
        assert bench in benchmark_corpora
        assert len(span.split()) >= 13 and length >= 60  # a real passage, not a stock phrase


def test_decontam_step_records_drops_with_evidence_and_flags_items(ws_copy: Path, planted: dict,
                                                                  med_index: ContaminationIndex) -> None:
    with Workspace.open(ws_copy) as ws:
        (ws.artifacts / "planted.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for _, t in planted["reflowed"][:20]))
        ingest(ws, IngestConfig(sources=[str(ws.artifacts / "planted.jsonl")], corpus="planted", role="general"))
        result = run_decontam(ws, DecontamConfig(benchmarks=["mmlu_medical"], corpora=["planted", "wikipedia_en"]))
        assert result.documents_contaminated == 20 and result.documents_dropped == 20
        drops = ws.query("SELECT a.reason, a.details, d.corpus FROM active_drops a JOIN documents d USING (doc_id) "
                         "WHERE a.step = 'decontam'")
        assert len(drops) == 20 and {d[2] for d in drops} == {"planted"}
        details = json.loads(drops[0][1])
        assert details["benchmark"] == "mmlu_medical" and details["item"] and details["text"]
        assert "13-gram" in drops[0][0]
        flagged = {r[0] for r in ws.query("SELECT item_doc_id FROM flagged_benchmark_items WHERE flag = 'lexical'")}
        planted_items = {i for i, _ in planted["reflowed"][:20]}
        assert flagged >= planted_items
        # Items that share a 13-gram with a planted one (MMLU reuses reading passages) are found too, rightly.
        sharing = {o.item_doc_id for i in planted_items for o in med_index.find(med_index.item(i).text)}
        assert flagged - planted_items <= sharing
        clean = ws.query("SELECT count(*) FROM clean_benchmark_items WHERE corpus = 'mmlu_medical'")[0][0]
        assert clean == 1089 - len(flagged)
        # Re-running in cut mode supersedes the drops: the documents are back, their spans kept for export.
        again = run_decontam(ws, DecontamConfig(benchmarks=["mmlu_medical"], corpora=["planted"], mode="cut",
                                                min_piece_chars=50))
        assert again.documents_checked == 20  # the pool ignores the step's own earlier drops
        assert ws.query("SELECT count(*) FROM active_drops WHERE step = 'decontam'")[0][0] == again.documents_dropped
        assert again.documents_cut + again.documents_dropped == 20


def test_recall_page_reads_the_check_through_core(ws_copy: Path, planted: dict) -> None:
    """What the Recall page shows of a contamination check, read through the core functions it calls: the active
    run, the evidence (each span is the document's own text there), the item beside it with its answer, and the
    flagged items per benchmark."""
    from core.benchmarks import flagged_item_counts, item_with_answer
    from core.corpus import document_text
    from core.decontam import STEP, contamination_evidence
    from core.workspace import active_run

    with Workspace.open(ws_copy) as ws:
        (ws.artifacts / "planted.jsonl").write_text(
            "".join(json.dumps({"text": t}) + "\n" for _, t in planted["verbatim"][:5]))
        ingest(ws, IngestConfig(sources=[str(ws.artifacts / "planted.jsonl")], corpus="planted", role="general"))
        result = run_decontam(ws, DecontamConfig(benchmarks=["mmlu_medical"], corpora=["planted"]))
        run = active_run(ws, STEP)
        assert run is not None and run.run_id == result.run_id
        assert run.counts["documents_contaminated"] == result.documents_contaminated == 5
        evidence = contamination_evidence(ws, run.run_id)
        assert set(evidence["corpus"]) == {"planted"} and evidence["doc_id"].nunique() == 5
        assert len(evidence) == result.overlaps
        for row in evidence.itertuples():
            assert document_text(ws, row.doc_id)[row.span_start:row.span_end] == row.span_text
            item = item_with_answer(ws, row.item_doc_id)
            assert item is not None and "\nAnswer: " in item
        assert document_text(ws, "no-such-document") is None and item_with_answer(ws, "no-such-item") is None
        flags = flagged_item_counts(ws)
        lexical = flags[(flags["benchmark"] == "mmlu_medical") & (flags["flag"] == "lexical")]
        assert int(lexical["items"].sum()) == result.items_flagged >= 5


def test_cut_mode_removes_the_span_with_margin_and_drops_many_pieces(med_index: ContaminationIndex,
                                                                    planted: dict) -> None:
    item_doc_id, text = planted["verbatim"][0]
    cfg = DecontamConfig(benchmarks=["mmlu_medical"], mode="cut", margin_chars=200, min_piece_chars=0)
    index = ContaminationIndex(med_index.items, cfg)
    kept, overlaps = index.cut(text)
    assert overlaps and kept is not None
    assert not index.find(kept)  # nothing of the item is left
    start = max(overlaps[0].start - 200, 0)
    assert kept.startswith(text[:start].strip()[:50])
    assert len(kept) <= len(text) - (overlaps[0].end - overlaps[0].start)
    # Eleven copies far apart: more than 10 pieces -> dropped.
    filler = " ".join(["The committee met again on the following Tuesday to continue the discussion."] * 8)
    question = index.item(item_doc_id).text.replace("\n", " ")
    many = f" {filler} ".join([question] * 11) + f" {filler}"
    assert len(cut_pieces(many, index.find(many), 200)) == 11
    assert index.cut(many)[0] is None
    # Drop mode drops any overlap; a clean text passes unchanged.
    drop_index = ContaminationIndex(med_index.items, DecontamConfig(mode="drop"))
    assert drop_index.cut(text)[0] is None
    assert drop_index.cut(filler) == (filler, [])


def test_bench_import_reads_mmlu_csv_cmmlu_csv_jsonl_and_free_text(tmp_path: Path, data_dir: Path) -> None:
    with tarfile.open(data_dir / "mmlu/raw/mmlu_data_dev_test.tar.gz") as tar:
        tar.extract("data/mmlu/test/anatomy_test.csv", tmp_path, filter="data")
    with tarfile.open(data_dir / "cmmlu/raw/cmmlu_data_dev_test.tar.gz") as tar:
        tar.extract("data/test/anatomy.csv", tmp_path, filter="data")
    free = tmp_path / "free.csv"
    free.write_text('question,answer,subject\n"Which vitamin deficiency causes scurvy?","Vitamin C",nutrition\n'
                    '"What does HbA1c measure?","Average blood glucose over about three months",endocrinology\n')
    with Workspace.open(tmp_path / "ws") as ws:
        mmlu = import_benchmark(ws, BenchmarkImportConfig([str(tmp_path / "data/mmlu/test/anatomy_test.csv")],
                                                          "mmlu_anatomy_csv", "domain"))
        cmmlu = import_benchmark(ws, BenchmarkImportConfig([str(tmp_path / "data/test/anatomy.csv")],
                                                           "cmmlu_anatomy_csv", "domain"))
        jsonl = import_benchmark(ws, BenchmarkImportConfig([str(data_dir / "mmlu/mcq_mmlu_medical_test.jsonl")],
                                                           "mmlu_med", "domain"))
        qa = import_benchmark(ws, BenchmarkImportConfig([str(free)], "free_qa", "general", fmt="qa"))
        assert (mmlu.benchmark.items, cmmlu.benchmark.items, jsonl.benchmark.items, qa.benchmark.items) == \
            (135, 148, 1089, 2)
        assert mmlu.benchmark.subjects == {"anatomy": 135}  # from the file name
        assert jsonl.benchmark.subjects["professional_medicine"] == 272
        assert qa.benchmark.free_text_items == 2 and qa.benchmark.kind == "general"
        # The CSV's 0-based answer and CMMLU's letter both give the gold answer text.
        csv_row = ws.query("SELECT question, answer FROM benchmark_items WHERE corpus = 'mmlu_anatomy_csv' "
                           "ORDER BY question LIMIT 1")[0]
        json_row = ws.query("SELECT answer FROM benchmark_items WHERE corpus = 'mmlu_med' AND question = ?",
                            [csv_row[0]])
        assert json_row and json_row[0][0] == csv_row[1]
        assert ws.query("SELECT count(*) FROM benchmark_items WHERE corpus = 'cmmlu_anatomy_csv' "
                        "AND answer_index IS NULL")[0][0] == 0
        assert ws.query("SELECT kind FROM benchmarks WHERE corpus = 'free_qa'")[0][0] == "general"


def test_cli_decontam_json_and_file_check(ws_copy: Path, planted: dict, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    mix = tmp_path / "mix.jsonl"
    texts = [t for _, t in planted["case_punct"][:5]] + ["A clean sentence about the weather in spring."] * 3
    mix.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    code = main(["decontam", str(ws_copy), "--json", "--benchmarks", "mmlu_medical", "--file", str(mix)])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["contaminated"] == 5 and out["texts"] == 8
    assert {f["index"] for f in out["findings"]} == set(range(5))
    code = main(["decontam", str(ws_copy), "--json", "--benchmarks", "mmlu_medical", "--corpora", "wikipedia_en"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] and out["documents_checked"] > 1000 and out["documents_contaminated"] == 0
    code = main(["decontam", str(ws_copy), "--json", "--benchmarks", "no_such_benchmark"])
    assert code == 2 and "no_such_benchmark" in capsys.readouterr().out
