"""`bench/scale.py` keeps working: its corpus builder (deterministic, the planted copies counted) and, marked slow,
the whole bench at two tiny sizes with its figures present and sane."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import REPO_ROOT, data_root

SCALE = REPO_ROOT / "bench" / "scale.py"
# Small corpora of both languages and every scaled role (two so small that their documents are mostly recombined),
# and one benchmark of the two the recipe's recall step reads (MMLU general's 12,000 items cost every step time).
CORPORA = "fever_textbook_zh,medical_rag_qa_zh,history_book_en,alpaca_en,mmlu_medical"
pytestmark = pytest.mark.skipif(not (data_root() / "mmlu").is_dir(), reason="needs the shared data folder")


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_scale", SCALE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_args(work: Path, bench) -> argparse.Namespace:
    return argparse.Namespace(data=None, recipe=REPO_ROOT / "data" / "demo.toml", seed=3, corpora=CORPORA, set=[],
                              semantic_limit=10, perplexity_sample=1, pool_sample=50, recall_items=10, work=work)


def test_corpus_is_deterministic_and_counted(tmp_path: Path) -> None:
    bench = load_bench()
    first = bench.build_corpus(4000, tmp_path / "a" / "corpus-4000", build_args(tmp_path / "a", bench))
    second = bench.build_corpus(4000, tmp_path / "b" / "corpus-4000", build_args(tmp_path / "b", bench))
    files = sorted(p.name for p in (tmp_path / "a" / "corpus-4000").glob("*.jsonl"))
    assert files == sorted(p.name for p in (tmp_path / "b" / "corpus-4000").glob("*.jsonl"))
    for name in files:  # seeded: the same bytes twice
        assert (tmp_path / "a" / "corpus-4000" / name).read_bytes() == (tmp_path / "b" / "corpus-4000" / name).read_bytes()
    assert first["scaled"] == second["scaled"]
    assert first["exact"] + first["near"] + first["original"] + first["recombined"] == 4000
    assert 0.08 * 4000 < first["exact"] < 0.12 * 4000 and 0.1 * 4000 < first["near"] < 0.2 * 4000
    assert first["recombined"] > 0 and first["fixed"] == ["mmlu_medical"]
    lines = sum(len((tmp_path / "a" / "corpus-4000" / name).read_bytes().splitlines()) for name in files)
    assert lines == 4000
    # the recipe: the scaled files, the benchmarks as they are, the bounds applied, no training step
    import tomllib

    recipe = tomllib.loads((tmp_path / "a" / "recipe-4000.toml").read_text())
    assert {c["name"] for c in recipe["corpus"]} == set(CORPORA.split(","))
    steps = {s["name"]: s for s in recipe["step"]}
    assert "train" not in steps and "evaluate" not in steps and "mix" in steps
    assert steps["dedup"]["semantic"] == {"corpora": ["fever_textbook_zh"], "limit": 10}
    assert steps["recall"]["pool_sample"] == 50 and steps["recall"]["pool"] == ["alpaca_en"]
    assert steps["recall"]["benchmarks"] == ["mmlu_medical"]


def test_near_duplicate_stays_near() -> None:
    """A near-duplicate edits 2% of the tokens: most of its 5-word shingles are the original's."""
    bench = load_bench()
    corpus = bench.ScaledCorpus("t", "text", [{"text": " ".join(f"w{i}" for i in range(200))}], seed=0)
    import random

    near = corpus.near({"text": corpus.records[0]["text"]}, random.Random(1))["text"].split()
    original = corpus.records[0]["text"].split()

    def shingles(words: list[str]) -> set[tuple[str, ...]]:
        return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}

    a, b = shingles(original), shingles(near)
    assert near != original and len(a & b) / len(a | b) > 0.75
    assert corpus.near({"text": "too short to edit"}, random.Random(1)) is None


@pytest.mark.slow
def test_scale_bench_tiny(tmp_path: Path) -> None:
    """The whole bench at 1,500 and 3,000 documents (model-bound parts tiny): every step measured, the documents
    built all ingested, the planted exact copies dropped, the growth exponents computed."""
    out = tmp_path / "scale.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    cmd = [sys.executable, str(SCALE), "--work", str(tmp_path / "work"), "--sizes", "1500,3000",
           "--corpora", CORPORA, "--semantic-limit", "20", "--perplexity-sample", "1", "--pool-sample", "100",
           "--recall-items", "10", "--set", "recall.floor=0.2", "--set", "mix.total_tokens=20000",
           "--set", "mix.validation={tokens = 2000}", "--json", str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [run["documents"] for run in result["runs"]] == [1500, 3000]
    expected = ["ingest", "tokens", "dedup exact", "dedup minhash", "dedup semantic", "quality", "terms", "decontam",
                "recall", "mix demo-mip", "mix demo-control"]
    for run in result["runs"]:
        steps = {s["step"]: s for s in run["steps"]}
        assert list(steps) == expected
        for step in run["steps"]:
            assert "error" not in step, step
            assert step["wall_s"] > 0 and step["cpu_s"] > 0 and step["peak_rss_mb"] > 50 and step["workspace_mb"] > 0
        manifest = run["corpus"]
        assert steps["ingest"]["counts"]["scaled_added"] == run["documents"]
        assert steps["ingest"]["counts"]["errors"] == 0
        # every planted copy (and any copy the sources held; the benchmark is no dedup's)
        assert steps["dedup exact"]["counts"]["exact"]["dropped"] >= manifest["exact"] > 0
        assert steps["dedup minhash"]["counts"]["minhash"]["dropped"] > 0.3 * manifest["near"]
        assert run["totals"]["wall_s"] == pytest.approx(sum(s["wall_s"] for s in run["steps"]), abs=0.2)
        assert run["totals"]["peak_rss_mb"] == max(s["peak_rss_mb"] for s in run["steps"])
    growth = result["growth"][0]
    assert (growth["from"], growth["to"]) == (1500, 3000)
    assert set(growth["steps"]) == {*expected, "total"}
    assert all(isinstance(growth["steps"][s]["cpu_s"], float) for s in expected)
    assert result["extrapolated"]["steps"]["total"]["wall_s"] > result["runs"][-1]["totals"]["wall_s"]
    assert "growth exponent 1,500 -> 3,000" in proc.stdout and "moonshot" in proc.stdout
