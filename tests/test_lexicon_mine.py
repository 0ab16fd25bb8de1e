"""The lexicon miner: planted domain words come out on top (English and Chinese), the log-odds statistic, the
candidate rules, the command, and the bundled lexicons built with it."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pandas as pd
import pytest

from core.config import REPO_ROOT
from core.ingest import IngestConfig, ingest
from core.lexicon_mine import (
    LexiconMineConfig,
    han_candidates,
    load_candidates,
    log_odds_z,
    mine_texts,
    mining_runs,
    run,
    sample_documents,
    whole_words,
    word_candidates,
)
from core.terms import load_lexicon
from core.workspace import Workspace
from studio.cli import main as studio_main

FILLER_TEXT = ("the people of the town went to the market on a sunny morning and talked about the weather the harvest "
          "the river the old bridge the new school the price of bread the football match and the summer festival "
          "while children played near the church and the mayor gave a short speech about roads")
FILLER = FILLER_TEXT.split()
PLANTED_EN = ["nephrotoxicity", "glomerular filtration", "creatinine clearance"]
PLANTED_ZH = ["肾小球", "肌酐清除率", "蛋白尿"]
FILLER_ZH = "今天天气很好我们一起去公园散步看见许多孩子在草地上放风筝老人们在树下下棋大家都很开心晚上回家吃饭"


def english_docs(n: int, planted: bool, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        words = rng.sample(FILLER, 25)
        if planted:
            for term in rng.sample(PLANTED_EN, 2):
                words.insert(rng.randrange(len(words)), term)
        docs.append(" ".join(words) + ".")
    return docs


def chinese_docs(n: int, planted: bool, seed: int) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        start = rng.randrange(len(FILLER_ZH) - 30)
        text = FILLER_ZH[start:start + 30]
        if planted:
            for term in rng.sample(PLANTED_ZH, 2):
                cut = rng.randrange(len(text))
                text = text[:cut] + "，" + term + "，" + text[cut:]
        docs.append(text + "。")
    return docs


def test_planted_english_terms_rank_first() -> None:
    domain = [(t, "en") for t in english_docs(60, True, 1)]
    general = [(t, "en") for t in english_docs(60, False, 2)]
    candidates = mine_texts(domain, general, LexiconMineConfig(language="en", min_df=3))
    top = [c.term for c in candidates[:3]]
    assert set(top) == set(PLANTED_EN)
    # Filler words occur on both sides at the same rate: none passes the log-odds floor.
    assert not {c.term for c in candidates} & set(FILLER)
    assert all(0 < c.weight <= 1 for c in candidates)
    assert all(c.example and c.term in c.example.lower() for c in candidates[:3])
    # 'glomerular' alone is a fragment of 'glomerular filtration' (every occurrence is inside it).
    assert "glomerular" not in {c.term for c in candidates}


def test_planted_chinese_terms_rank_first() -> None:
    domain = [(t, "zh") for t in chinese_docs(60, True, 3)]
    general = [(t, "zh") for t in chinese_docs(60, False, 4)]
    candidates = mine_texts(domain, general, LexiconMineConfig(language="zh", min_df=3))
    top = [c.term for c in candidates[:3]]
    assert set(top) == set(PLANTED_ZH), top
    assert "肌酐" not in top and "球" not in top  # fragments of kept longer terms, and single characters


def test_log_odds_statistic_and_candidate_rules() -> None:
    # Same rates on both sides: no difference; a term only the domain uses: positive delta and z.
    delta, z = log_odds_z(10.0, 10.0, 1000.0, 1000.0, 0.01)
    assert delta == pytest.approx(0.0) and z == pytest.approx(0.0)
    delta, z = log_odds_z(50.0, 0.0, 1000.0, 1000.0, 0.01)
    assert delta > 3 and z > 2
    # More evidence, same rates: the same delta, a larger z.
    _, z_more = log_odds_z(500.0, 0.0, 10000.0, 10000.0, 0.01)
    assert z_more > 3 * z
    grams = word_candidates("The quality of life of patients with type 2 diabetes, measured in 2019.")
    assert {"quality of life", "type 2 diabetes", "patients", "diabetes"} <= set(grams)
    assert not {"the", "of", "2019", "the quality", "patients with type", "diabetes measured"} & set(grams)
    assert "糖尿病" in han_candidates("患者的糖尿病。") and "者的" not in han_candidates("患者的糖尿病。")
    assert whole_words("降压药物") and not whole_words("个心血管")


def write_jsonl(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    return str(path)


def planted_workspace(folder: Path) -> Path:
    """A workspace in `folder`/ws: corpus 'renal' (domain: 40 English and 40 Chinese documents with planted
    terms) and 'town' (general: the same filler without them)."""
    path = folder / "ws"
    with Workspace.open(path) as ws:
        ingest(ws, IngestConfig([write_jsonl(folder / "dom.jsonl", english_docs(40, True, 5)
                                             + chinese_docs(40, True, 6))], "renal", "domain"))
        ingest(ws, IngestConfig([write_jsonl(folder / "gen.jsonl", english_docs(40, False, 7)
                                             + chinese_docs(40, False, 8))], "town", "general"))
    return path


@pytest.fixture
def planted_ws(tmp_path: Path) -> Path:
    return planted_workspace(tmp_path)


def test_command_mines_both_languages_and_records_a_run(planted_ws: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "renal.csv"
    code = studio_main(["lexicon-mine", str(planted_ws), "--domain", "renal", "--general", "town", "--out", str(out),
                        "--min-df", "3", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["ok"]
    assert result["terms_by_language"]["en"] >= 3 and result["terms_by_language"]["zh"] >= 3
    lexicon = load_lexicon(out)  # the CSV format `studio terms` reads
    assert set(PLANTED_EN) | set(PLANTED_ZH) <= set(lexicon.weights)
    assert all(0 < w <= 1 for w in lexicon.weights.values())
    with Workspace.open(planted_ws, read_only=True) as ws:
        runs = mining_runs(ws)
        assert runs[0]["run_id"] == result["run_id"] and runs[0]["params"]["domain"] == ["renal"]
        sample = sample_documents(ws, ["renal", "town"], per_corpus=10)
    candidates = load_candidates(planted_ws, result["run_id"])
    assert isinstance(candidates, pd.DataFrame) and set(candidates["term"]) == set(lexicon.weights)
    assert len(sample) == 20 and set(sample["role"]) == {"domain", "general"}

    # The mined lexicon scores the workspace like any other.
    code = studio_main(["terms", str(planted_ws), "--lexicon", str(out), "--role", "domain", "--json"])
    scored = json.loads(capsys.readouterr().out)
    medians = {d["corpus"]: d["median_density"] for d in scored["density_by_corpus"]}
    assert code == 0 and medians["renal"] > 0.02 > medians["town"]

    code = studio_main(["lexicon-mine", str(planted_ws), "--domain", "nowhere", "--general", "town"])
    assert code == 2 and "unknown corpus nowhere" in capsys.readouterr().err
    with Workspace.open(planted_ws) as ws, pytest.raises(ValueError, match="both domain and general"):
        run(ws, LexiconMineConfig(domain=["renal"], general=["renal"]))


def test_bundled_lexicons_merge_mined_terms_with_the_hand_lists() -> None:
    for name in ("medical_en", "medical_zh"):
        merged, hand = load_lexicon(name), load_lexicon(f"{name}_hand")
        assert set(hand.weights) <= set(merged.weights)
        assert all(merged.weights[k] == 1.0 for k in hand.weights)  # hand terms keep full weight
        assert all(0 < w <= 1 for w in merged.weights.values())  # so density stays weighted hits per unit
        assert len(merged) > 2 * len(hand)
    en = load_lexicon("medical_en")
    assert {"pregnancy", "chemotherapy", "lymphoma"} <= set(en.weights)
    # The review kept the hand list's care about ordinary English words.
    assert not {"cell", "drug", "cold", "aids", "heart", "type", "check", "trial"} & set(en.weights)


def test_shipped_english_lexicon_is_what_the_recorded_build_makes_from_the_mining_half() -> None:
    """bench/lexicon.py is the record of how medical_en was built: mining its seeded mining half again, minus the
    review's rejections, plus the hand list, gives the shipped file; no text is on both sides of the split."""
    spec = importlib.util.spec_from_file_location("bench_lexicon", REPO_ROOT / "bench" / "lexicon.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_lexicon"] = bench  # its dataclass looks its module up
    spec.loader.exec_module(bench)
    mining, evaluation = bench.split_documents("en")
    assert not {d.text for d in mining} & {d.text for d in evaluation}
    assert 0.4 < len(mining) / (len(mining) + len(evaluation)) < 0.6
    weights, info = bench.build_lexicon("medical_en", "en", mining)
    shipped = load_lexicon("medical_en")
    assert {k.lower(): v for k, v in weights.items()} == shipped.weights
    assert info["rejected_on_review"] > 100 and not bench.review_rejections("medical_en") & set(shipped.weights)
