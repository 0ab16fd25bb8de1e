"""Terminology density on the real shared corpora: matching rules, hand-checked documents, the separation of
medical from general text, Chinese per-character density, and the filter's audit trail."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
from conftest import shared_text

from core.config import REPO_ROOT
from core.terms import (
    TermFilterConfig,
    TermMatcher,
    TermScoreConfig,
    apply_term_filter,
    bundled_lexicons,
    combine_lexicons,
    corpus_density_summary,
    documents_near_threshold,
    filter_preview,
    length_units,
    load_lexicon,
    load_lexicons,
    parse_lexicon,
    score_terms,
)
from core.workspace import Workspace
from studio.cli import main as studio_main

MEDICAL_DOMAIN = ("medquad_nih", "pubmed_abstracts", "fever_textbook_zh", "medical_dialogue_zh")
GENERAL = ("wikipedia_en", "c4_web_en", "inaugural_addresses_en", "history_book_en")


@pytest.fixture(scope="module")
def matcher() -> TermMatcher:
    """The hand-written lists: the documents below were read by hand against them."""
    return TermMatcher(load_lexicons(["medical_en_hand", "medical_zh_hand"]))


@pytest.fixture(scope="module")
def bundled_matcher() -> TermMatcher:
    """The bundled lexicons (hand lists merged with mined terms), as the scoring step uses them by default."""
    return TermMatcher(load_lexicons(["medical_en", "medical_zh"]))


@pytest.fixture(scope="module")
def scored_ws(demo_ws_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ingested demo workspace, copied once for this module and scored with the bundled lexicons."""
    path = tmp_path_factory.mktemp("terms") / "ws"
    shutil.copytree(demo_ws_path, path)
    with Workspace.open(path) as ws:
        score_terms(ws, TermScoreConfig(lexicons=["medical_en", "medical_zh"]))
    return path



# --- lexicons ------------------------------------------------------------------------------------------------
def test_bundled_lexicons_are_large_and_have_multi_word_terms() -> None:
    assert {"medical_en", "medical_zh", "medical_en_hand", "medical_zh_hand"} <= set(bundled_lexicons())
    hand_en, hand_zh = load_lexicon("medical_en_hand"), load_lexicon("medical_zh_hand")
    assert len(hand_en) == 732 and len(hand_zh) == 808
    en, zh = load_lexicon("medical_en"), load_lexicon("medical_zh")
    assert len(en) >= 2_000 and len(zh) >= 2_000
    assert sum(" " in term for term in en.weights) >= 200  # multi-word English terms
    assert sum(len(term) >= 4 for term in zh.weights) >= 150  # long Chinese compounds
    assert not [t for t in zh.weights if len(t) < 2], "single characters match inside ordinary words"
    assert {"myocardial infarction", "magnetic resonance imaging", "type 2 diabetes"} <= set(en.weights)
    assert {"糖尿病", "心肌梗死", "血常规"} <= set(zh.weights)


def test_csv_lexicon_with_header_weights_and_combination(tmp_path: Path) -> None:
    csv_file = tmp_path / "cardio.csv"
    csv_file.write_text("weight,term\n# comment row\n2,myocardial infarction\n0.5,Patient\n,troponin\n",
                        encoding="utf-8")
    cardio = load_lexicon(csv_file)
    assert cardio.weights == {"myocardial infarction": 2.0, "patient": 0.5, "troponin": 1.0}
    combined = combine_lexicons([load_lexicon("medical_en"), cardio])
    assert combined.name == "medical_en+cardio"
    assert combined.weights["myocardial infarction"] == 2.0  # highest weight wins
    assert combined.weights["patient"] == 1.0
    with pytest.raises(ValueError, match="not a number"):
        parse_lexicon("term,weight\nfever,high\n", "bad", "csv")
    with pytest.raises(ValueError, match="positive"):
        parse_lexicon("fever,-1\n", "bad", "csv")
    with pytest.raises(FileNotFoundError):
        load_lexicon("no_such_lexicon")


# --- matching rules --------------------------------------------------------------------------------------------
def test_english_matching_rules(matcher: TermMatcher) -> None:
    text = ("Patients with Breast Cancer had tumors; hearing was normal. Painless lumps. "
            "Blood pressures and arteries. The ear, the MRI.")
    found = [(m.term, text[m.start:m.end]) for m in matcher.matches(text)]
    assert found == [("patient", "Patients"), ("breast cancer", "Breast Cancer"), ("tumor", "tumors"),
                     ("lump", "lumps"), ("blood pressure", "Blood pressures"), ("artery", "arteries"),
                     ("MRI", "MRI")]
    # 'ear' is not a term, 'hearing' holds none; 'Painless' is not 'pain'; 'breast cancer' is not also 'cancer'.


def test_chinese_matching_is_substring_and_longest_first(matcher: TermMatcher) -> None:
    text = "患者有糖尿病肾病，发热、咳嗽，做了CT检查和血常规。"
    assert [m.term for m in matcher.matches(text)] == ["患者", "糖尿病肾病", "发热", "咳嗽", "CT检查", "血常规"]
    # 患者有糖尿病肾病 8 + 发热 2 + 咳嗽 2 + 做了 2 + 检查和血常规 6 = 20 Han characters, 'CT' one unit,
    # punctuation none.
    assert length_units(text, "zh") == (21, "char")


# --- hand-checked documents of the shared data ----------------------------------------------------------------
def test_hand_checked_english_document(matcher: TermMatcher, bundled_matcher: TermMatcher, data_dir: Path,
                                       scored_ws: Path) -> None:
    text = shared_text(data_dir, "medquad/corpus_en_medquad_nih_paragraphs.jsonl",
                         "medquad/1_CancerGov_QA/0000001_1/0000001_1-2/0")
    # Read by hand: 'symptoms' x3, 'fever'/'Fever' x2, 'diseases', 'night sweats', 'Shortness of breath',
    # 'Weight loss', 'Pain' x2 ('Painless' is not a hit), 'lumps', 'infections', 'acute lymphoblastic leukemia'.
    expected = {"symptom": 3, "fever": 2, "pain": 2, "disease": 1, "night sweats": 1, "shortness of breath": 1,
                "weight loss": 1, "lump": 1, "infection": 1, "acute lymphoblastic leukemia": 1}
    counts = {matcher.lexicon.spelling[k]: c for k, c in matcher.count(text).items()}
    assert counts == expected
    assert length_units(text, "en") == (127, "word")
    # The bundled lexicon adds mined terms; read by hand, its 35 hits are: 'symptoms of adult', 'include fever',
    # 'feeling tired' x2, 'easy bruising' x2, 'bleeding' x3, 'early signs', 'symptoms' x2, 'flu', 'diseases',
    # 'doctor', 'Fever', 'night sweats', 'skin' (weight 0.93), 'Shortness of breath', 'Weight loss',
    # 'loss of appetite', 'Pain' x2, 'bones', 'stomach' x2, 'ribs', 'lumps', 'neck', 'underarm', 'groin',
    # 'infections', and 'adult acute' + 'lymphoblastic' + 'leukemia' (leftmost-longest: 'adult acute' starts first).
    bundled = {bundled_matcher.lexicon.spelling[k]: c for k, c in bundled_matcher.count(text).items()}
    assert sum(bundled.values()) == 35 and len(bundled) == 28
    assert bundled["bleeding"] == 3 and bundled["symptom"] == 2 and bundled["adult acute"] == 1
    with Workspace.open(scored_ws, read_only=True) as ws:
        row = ws.con.execute(
            "SELECT h.hits, h.units, h.unit, h.weighted_hits, h.density, h.terms FROM current_term_hits h "
            "JOIN documents d USING (doc_id) WHERE d.corpus = 'medquad_nih' AND d.text = ?", [text]).fetchone()
    assert row[:3] == (35, 127, "word")
    assert row[3] == pytest.approx(34 + 0.93)
    assert row[4] == pytest.approx((34 + 0.93) / 127)
    assert json.loads(row[5]) == bundled


def test_hand_checked_chinese_document_density_per_character(matcher: TermMatcher, bundled_matcher: TermMatcher,
                                                             data_dir: Path, scored_ws: Path) -> None:
    text = shared_text(data_dir, "medicalgpt/corpus_zh_medical_textbook_fever.jsonl", "medicalgpt/fever/1")
    # Read by hand: 传染病 x2, 感染性疾病 x2 (not also 感染), 感染 x2 (医学昆虫感染人体, 感染所致), and once each
    # 病原微生物 朊粒 病毒 衣原体 立克次体 支原体 细菌 真菌 螺旋体 寄生虫 原虫 病原体. 传染性 and 疾病 are not terms.
    expected = {"传染病": 2, "感染性疾病": 2, "感染": 2, "病原微生物": 1, "朊粒": 1, "病毒": 1, "衣原体": 1,
                "立克次体": 1, "支原体": 1, "细菌": 1, "真菌": 1, "螺旋体": 1, "寄生虫": 1, "原虫": 1, "病原体": 1}
    assert dict(matcher.count(text)) == expected
    han = sum(1 for c in text if "\u4e00" <= c <= "\u9fff")
    assert length_units(text, "zh") == (han + 1, "char")  # + the Latin word 'mycoplasma'
    # The bundled lexicon, read by hand: the same, except 感染所致 (mined) is one hit where the hand list had
    # 感染, and it adds 传染性 x2 and 人体 (weight 0.983): 21 hits, 20.983 weighted.
    bundled = dict(bundled_matcher.count(text))
    assert bundled == {**expected, "感染": 1, "感染所致": 1, "传染性": 2, "人体": 1}
    with Workspace.open(scored_ws, read_only=True) as ws:
        hits, units, unit, density = ws.con.execute(
            "SELECT h.hits, h.units, h.unit, h.density FROM current_term_hits h JOIN documents d USING (doc_id) "
            "WHERE d.corpus = 'fever_textbook_zh' AND d.text = ?", [text]).fetchone()
    assert (hits, units, unit) == (21, han + 1, "char")
    assert density == pytest.approx(20.983 / (han + 1))


# --- separation on the real corpora ----------------------------------------------------------------------------
def test_medical_corpora_have_clearly_higher_density_than_general(scored_ws: Path) -> None:
    with Workspace.open(scored_ws, read_only=True) as ws:
        summary = {row["corpus"]: row for row in corpus_density_summary(ws)}
        n_docs = ws.scalar("SELECT count(*) FROM documents")
        view_columns = [r[0] for r in ws.query("DESCRIBE current_term_density")]
        view_rows = ws.scalar("SELECT count(*) FROM current_term_density")
    domain_medians = [summary[c]["median_density"] for c in MEDICAL_DOMAIN]
    general_medians = [summary[c]["median_density"] for c in GENERAL]
    # Measured on the shared data with the bundled (hand + mined) lexicons: domain medians 0.12 (PubMed) to 0.19
    # (MedQuAD), 0.12-0.16 in Chinese; every general corpus has median 0 and mean at most 0.0083 (8-20 % of its
    # paragraphs contain some term: the mined lexicons are 3x larger than the hand lists, which had 2-9 %).
    assert min(domain_medians) >= 0.04
    assert max(general_medians) <= 0.005
    assert min(domain_medians) >= 10 * max(max(general_medians), 0.004)
    assert min(summary[c]["mean_density"] for c in MEDICAL_DOMAIN) >= \
        10 * max(summary[c]["mean_density"] for c in GENERAL)
    assert min(summary[c]["share_with_hits"] for c in MEDICAL_DOMAIN) >= 0.75
    assert max(summary[c]["share_with_hits"] for c in GENERAL) <= 0.25
    # Chinese corpora are measured per character, English per word.
    assert summary["fever_textbook_zh"]["unit"] == "char" and summary["medquad_nih"]["unit"] == "word"
    # Medical MCQ benchmarks sit between: the lexicon tells medical from general questions in both languages.
    assert summary["mmlu_medical"]["median_density"] > 0.02 > summary["mmlu_general"]["median_density"]
    assert summary["cmmlu_medical"]["median_density"] > 0.02 > summary["cmmlu_general"]["median_density"]
    # Every document is scored and the view B-side readers rely on has exactly its two columns.
    assert view_columns == ["doc_id", "density"] and view_rows == n_docs


# --- the filter ------------------------------------------------------------------------------------------------
def test_filter_writes_an_explained_drop_for_every_failing_document(scored_ws: Path) -> None:
    with Workspace.open(scored_ws) as ws:
        preview = {c["corpus"]: c for c in filter_preview(ws).per_corpus}
        assert set(preview) == {r[0] for r in ws.query("SELECT name FROM corpora WHERE role = 'domain'")}
        result = apply_term_filter(ws, TermFilterConfig())
        assert result.dropped == sum(c["documents"] - c["kept"] for c in preview.values())
        assert result.dropped > 0 and result.kept > result.dropped
        drops = ws.df("SELECT d.reason, d.score, d.threshold, d.details, h.units, h.unit, h.density "
                      "FROM decisions d JOIN current_term_hits h USING (doc_id) WHERE d.run_id = ?",
                      [result.run_id])
        assert len(drops) == result.dropped
        assert set(drops["reason"]) <= {"too_short", "too_long", "low_term_density"}
        low = drops[drops["reason"] == "low_term_density"]
        assert (low["score"] < 0.02).all() and (low["threshold"] == 0.02).all()
        assert (low["score"] == low["density"]).all()
        short = drops[drops["reason"] == "too_short"]
        assert ((short["unit"] == "word") & (short["score"] < 50) | (short["unit"] == "char")
                & (short["score"] < 75)).all()
        assert all(json.loads(d)["rule"] == r for d, r in zip(drops["details"], drops["reason"], strict=True))
        # General corpora are scored but not filtered by default.
        assert ws.scalar("SELECT count(*) FROM active_drops x JOIN documents d USING (doc_id) "
                         "WHERE d.corpus = 'wikipedia_en'") == 0
        current_before = ws.scalar("SELECT count(*) FROM current_documents")

        # A stricter threshold supersedes the earlier run: more drops, and the old ones no longer count.
        stricter = apply_term_filter(ws, TermFilterConfig(min_density=0.05))
        assert stricter.dropped_by_rule["low_term_density"] > result.dropped_by_rule["low_term_density"]
        assert ws.scalar("SELECT count(*) FROM active_drops WHERE step = 'terms'") == stricter.dropped
        assert ws.scalar("SELECT count(*) FROM current_documents") == current_before - (
            stricter.dropped - result.dropped)

        near = documents_near_threshold(ws, "medquad_nih", 0.05, n=2)
        assert len(near["below"]) == 2 and len(near["above"]) == 2
        assert all(d["density"] < 0.05 for d in near["below"]) and all(d["density"] >= 0.05 for d in near["above"])


def test_same_lexicon_reuses_scores_and_cli_combines_lexicons(scored_ws: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    with Workspace.open(scored_ws) as ws:
        assert score_terms(ws, TermScoreConfig(lexicons=["medical_zh", "medical_en"])).reused
    extra = tmp_path / "extra.txt"
    extra.write_text("# extra terms\nhookworm\nlarva migrans\n", encoding="utf-8")
    code = studio_main(["terms", str(scored_ws), "--lexicon", "medical_en", "--lexicon", str(extra),
                        "--min-density", "0.03", "--corpus", "medquad_nih", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"] and not out["applied"] and not out["reused_scores"]
    assert "hookworm" in load_lexicon("medical_en").weights  # mined; 'larva migrans' is not in the lexicon
    assert out["lexicon"] == "medical_en+extra" and out["terms"] == len(load_lexicon("medical_en")) + 1
    assert [c["corpus"] for c in out["per_corpus"]] == ["medquad_nih"]
    assert out["dropped"] == out["dropped_by_rule"]["too_short"] + out["dropped_by_rule"]["too_long"] + \
        out["dropped_by_rule"]["low_term_density"]
    code = studio_main(["terms", str(scored_ws), "--lexicon", "missing_lexicon"])
    assert code == 2
    assert "no lexicon 'missing_lexicon'" in capsys.readouterr().err


def test_bench_regex_alternation_finds_what_aho_corasick_finds() -> None:
    """The bench compares like with like: on the same documents both matchers count the same hits."""
    spec = importlib.util.spec_from_file_location("bench_terms", REPO_ROOT / "bench" / "terms.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.run_terms_bench(documents=3_000, regex_documents=150, verbose=False)
    assert result["lexicon_terms"] == 1_000 and result["documents"] == 3_000
    assert result["regex_hits"] == result["aho_corasick_hits_on_regex_documents"] > 0
    assert result["ratio_same_documents"] > 3  # measured 30-60x; a wide margin for a busy machine
