"""Bundled medical lexicons: how they are built, and how well they tell medical from general text on held-out data.

The split: every domain and general document of the shared corpora below (identical texts counted once, so a
duplicate never sits on both sides) goes to the mining half or the evaluation half by a seeded hash of its text
(seed 0). The miner (core.lexicon_mine) runs on the mining half only; the terms rejected on review
(data/lexicons/review/*_rejected.txt) are removed; the hand-written list (data/lexicons/*_hand.txt, weight 1) is
merged in. That is exactly the lexicon shipped as `medical_en` / `medical_zh`, so the figures printed for the
evaluation half are held-out figures of the shipped lexicon. (The review lists were written by reading the
candidates mined from the mining half.)

The figures: the share of documents the terminology filter keeps at the default minimum density 0.02 (weighted
hits per word; per character for Chinese), among documents whose length the filter accepts (the demo recipe's
bounds, 20-2,000 words and 30-3,000 characters; a second table uses the `studio terms` defaults 50-2,000 words
and 75-3,000 characters): domain corpora should be kept (>= 95 %), general ones dropped (<= 10 % kept). The old
hand-written lexicons are measured on the same documents beside the new ones.

Also printed: the mining rate on 100,000 English documents (the mining half replicated), with one counting process
(the baseline) and with one per core, and the ratio of the two.

Run: `nice -n 10 .venv/bin/python bench/lexicon.py` (prints the tables and the rate, 2-4 minutes on 2 cores), add
`--write` to rewrite data/lexicons/medical_en.csv and medical_zh.csv from the mining half, `--rate-documents 0` to
skip the rate, `--json` for one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import data_root  # noqa: E402
from core.lexicon_mine import LexiconMineConfig, lexicon_csv, mine_texts  # noqa: E402
from core.readers import ReadOptions, SourceInfo, read_source  # noqa: E402
from core.terms import LEXICON_DIR, Lexicon, TermMatcher, load_lexicon, score_texts  # noqa: E402
from core.text import clean_text, detect_language  # noqa: E402

SEED = 0
MIN_DENSITY = 0.02
# (corpus name as in data/demo.toml where it is there, file under the shared data folder)
CORPORA: dict[str, dict[str, list[tuple[str, str]]]] = {
    "en": {
        "domain": [("medquad_nih", "medquad/corpus_en_medquad_nih_paragraphs.jsonl"),
                   ("pubmed_abstracts", "pubmedqa/corpus_en_pubmed_abstracts_nontest.jsonl")],
        "general": [("wikipedia_en", "llamafactory/corpus_en_wikipedia_paragraphs.jsonl"),
                    ("c4_web_en", "llamafactory/corpus_en_c4_web_paragraphs.jsonl"),
                    ("inaugural_addresses_en", "nltk_inaugural/corpus_en_us_inaugural_addresses.jsonl"),
                    ("history_book_en", "medicalgpt/corpus_en_general_book_beard_history.jsonl")],
    },
    "zh": {
        "domain": [("fever_textbook_zh", "medicalgpt/corpus_zh_medical_textbook_fever.jsonl"),
                   ("medical_dialogue_zh", "chinese_medical_dialogue/corpus_zh_medical_dialogue_answers.jsonl"),
                   ("medical_rag_qa_zh", "medicalgpt/corpus_zh_medical_rag_qa.jsonl"),
                   ("medical_sharegpt_zh", "medicalgpt/sft_zh_medical_sharegpt_1k.jsonl")],
        "general": [("alpaca_zh", "llamafactory/sft_zh_general_alpaca_zh_demo.json"),
                    ("general_sharegpt_zh", "medicalgpt/sft_zh_general_sharegpt_1k.jsonl")],
    },
}
LENGTH_BOUNDS = {"demo": {"word": (20, 2_000), "char": (30, 3_000)},
                 "default": {"word": (50, 2_000), "char": (75, 3_000)}}
REVIEW_DIR = LEXICON_DIR / "review"
# The miner's settings for the bundled lexicons (the defaults of `studio lexicon-mine`, written out).
MINE_CONFIG = {"en": LexiconMineConfig(language="en"), "zh": LexiconMineConfig(language="zh")}


@dataclass
class Doc:
    corpus: str
    role: str
    text: str
    language: str


def read_corpus(relative: str) -> list[str]:
    """Texts as ingest stores them (the same readers and cleaning), empty ones left out."""
    texts = []
    for record in read_source(data_root() / relative, ReadOptions(), SourceInfo()):
        if record.text:
            text = clean_text(record.text).text
            if text:
                texts.append(text)
    return texts


def in_mining_half(text: str, seed: int = SEED) -> bool:
    return hashlib.blake2b(f"{seed}\0{text}".encode(), digest_size=8).digest()[0] < 128


def split_documents(language: str, seed: int = SEED) -> tuple[list[Doc], list[Doc]]:
    """(mining half, evaluation half) of a language's domain and general documents, identical texts once."""
    mining, evaluation, seen = [], [], set()
    for role, corpora in CORPORA[language].items():
        for name, relative in corpora:
            for text in read_corpus(relative):
                if text in seen:
                    continue
                seen.add(text)
                doc = Doc(name, role, text, detect_language(text))
                (mining if in_mining_half(text, seed) else evaluation).append(doc)
    return mining, evaluation


def review_rejections(name: str) -> set[str]:
    """Terms rejected on review: one a line, '#' comments (the reasons)."""
    path = REVIEW_DIR / f"{name}_rejected.txt"
    if not path.is_file():
        return set()
    return {line.split("#")[0].strip().lower() for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#")[0].strip()}


def build_lexicon(name: str, language: str, mining: list[Doc]) -> tuple[dict[str, float], dict[str, Any]]:
    """The bundled lexicon `name`: mined on `mining`, minus the review's rejections, plus the hand list."""
    cfg = MINE_CONFIG[language]
    started = time.perf_counter()
    candidates = mine_texts([(d.text, d.language) for d in mining if d.role == "domain"],
                            [(d.text, d.language) for d in mining if d.role == "general"], cfg, examples=False)
    seconds = time.perf_counter() - started
    rejected = review_rejections(name)
    hand = load_lexicon(f"{name}_hand")
    weights = {hand.spelling[k]: 1.0 for k in hand.weights}
    mined_kept = 0
    for cand in candidates:
        if cand.term in rejected or cand.term in hand.weights:
            continue
        weights[cand.term] = cand.weight
        mined_kept += 1
    info = {"mined_candidates": len(candidates), "rejected_on_review": sum(c.term in rejected for c in candidates),
            "hand_terms": len(hand), "mined_terms_added": mined_kept, "terms": len(weights),
            "mining_seconds": round(seconds, 2), "mining_documents": len(mining),
            "mining_docs_per_s": round(len(mining) / seconds, 1)}
    return weights, info


def kept_shares(lexicon: Lexicon, docs: list[Doc], bounds: dict[str, tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """Per corpus: documents within the length bounds, and the share with density >= MIN_DENSITY."""
    scores = score_texts(TermMatcher(lexicon), [d.text for d in docs], [d.language for d in docs])
    out: dict[str, dict[str, Any]] = {}
    for doc, unit, units, density in zip(docs, scores.unit, scores.units, scores.density, strict=True):
        low, high = bounds[unit]
        if not low <= units <= high:
            continue
        row = out.setdefault(doc.corpus, {"role": doc.role, "documents": 0, "kept": 0})
        row["documents"] += 1
        row["kept"] += density >= MIN_DENSITY
    for row in out.values():
        row["share_kept"] = row["kept"] / row["documents"] if row["documents"] else 0.0
    return out


def pooled(rows: dict[str, dict[str, Any]], role: str) -> float:
    docs = sum(r["documents"] for r in rows.values() if r["role"] == role)
    return sum(r["kept"] for r in rows.values() if r["role"] == role) / docs if docs else 0.0


def run_lexicon_bench(write: bool = False, verbose: bool = True, seed: int = SEED) -> dict[str, Any]:
    def say(line: str = "") -> None:
        if verbose:
            print(line, flush=True)

    result: dict[str, Any] = {"seed": seed, "min_density": MIN_DENSITY}
    for language in ("en", "zh"):
        name = f"medical_{language}"
        mining, evaluation = split_documents(language, seed)
        weights, info = build_lexicon(name, language, mining)
        new = Lexicon(name, {k.lower(): v for k, v in weights.items()}, {k.lower(): k for k in weights})
        old = load_lexicon(f"{name}_hand")
        say(f"{name}: mined {info['mined_candidates']:,} candidates from {len(mining):,} documents (mining half) "
            f"in {info['mining_seconds']:.1f} s = {info['mining_docs_per_s']:,.0f} docs/s; "
            f"{info['rejected_on_review']} rejected on review; {info['mined_terms_added']:,} added to the "
            f"{info['hand_terms']:,} hand-written terms = {info['terms']:,} terms")
        tables = {}
        for label, bounds in LENGTH_BOUNDS.items():
            old_rows, new_rows = kept_shares(old, evaluation, bounds), kept_shares(new, evaluation, bounds)
            w, c = bounds["word"], bounds["char"]
            say(f"  held-out half, kept at density >= {MIN_DENSITY} ({label} length bounds {w[0]}-{w[1]:,} words, "
                f"{c[0]}-{c[1]:,} characters):")
            say(f"    {'corpus':26} {'role':8} {'documents':>9} {'old lexicon':>12} {'new lexicon':>12}")
            for corpus, row in new_rows.items():
                say(f"    {corpus:26} {row['role']:8} {row['documents']:>9,} "
                    f"{old_rows[corpus]['share_kept']:>12.1%} {row['share_kept']:>12.1%}")
            summary = {role: {"old": pooled(old_rows, role), "new": pooled(new_rows, role)}
                       for role in ("domain", "general")}
            say(f"    {'all domain (kept)':45} {summary['domain']['old']:>12.1%} {summary['domain']['new']:>12.1%}")
            say(f"    {'all general (dropped)':45} {1 - summary['general']['old']:>12.1%} "
                f"{1 - summary['general']['new']:>12.1%}")
            tables[label] = {"old": old_rows, "new": new_rows, "summary": summary}
        result[language] = {**info, "evaluation_documents": len(evaluation), "tables": tables}
        if write:
            path = LEXICON_DIR / f"{name}.csv"
            header = [f"{name}: the hand-written list ({name}_hand.txt, weight 1) merged with terms mined by "
                      "core.lexicon_mine (log-odds ratio with informative Dirichlet prior)",
                      f"mined on the mining half (seed {seed}) of the corpora listed in bench/lexicon.py, minus "
                      f"review/{name}_rejected.txt; rebuild: nice -n 10 .venv/bin/python bench/lexicon.py --write"]
            path.write_text(lexicon_csv(weights, header), encoding="utf-8")
            say(f"  wrote {path.relative_to(LEXICON_DIR.parents[1])} ({len(weights):,} terms)")
        say()
    return result


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the counting workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_rate_bench(documents: int = 100_000, workers: tuple[int, ...] = (1, 0), verbose: bool = True,
                   seed: int = SEED) -> dict[str, Any]:
    """Mining rate on `documents` English documents (the mining half's domain and general paragraphs, replicated
    to that many; about 1/4 domain) with 1 counting process (the baseline) and with one per core (workers=0)."""
    mining, _ = split_documents("en", seed)
    copies = -(-documents // len(mining))
    docs = (mining * copies)[:documents]
    domain = [(d.text, d.language) for d in docs if d.role == "domain"]
    general = [(d.text, d.language) for d in docs if d.role == "general"]
    out: dict[str, Any] = {"documents": len(docs), "distinct_documents": len(mining),
                           "mean_chars": round(sum(len(d.text) for d in docs) / len(docs), 1)}
    for count in workers:
        cfg = LexiconMineConfig(language="en", workers=count)
        cpu_before = cpu_seconds()
        started = time.perf_counter()
        candidates = mine_texts(domain, general, cfg, examples=False)
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_before
        label = f"workers_{count or 'per_core'}"
        out[label] = {"seconds": round(seconds, 2), "docs_per_s": round(len(docs) / seconds, 1),
                      "cpu_seconds": round(cpu, 2), "candidates": len(candidates)}
        if verbose:
            print(f"mining {len(docs):,} English documents ({len(mining):,} distinct, replicated; "
                  f"{out['mean_chars']:,.0f} characters on average), {label}: {seconds:.1f} s wall = "
                  f"{len(docs) / seconds:,.0f} docs/s ({cpu:.1f} CPU seconds, all processes; load average "
                  f"{os.getloadavg()[0]:.1f}), {len(candidates):,} candidates", flush=True)
    base, fast = out.get("workers_1"), out.get("workers_per_core")
    if base and fast:
        out["speedup"] = round(base["seconds"] / fast["seconds"], 2)
        if verbose:
            print(f"  one process per core / one process: {out['speedup']:.2f}x", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the bundled medical_en/medical_zh CSVs")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--rate-documents", type=int, default=100_000,
                        help="documents for the mining-rate measurement (0: skip it)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    args = parser.parse_args()
    result = run_lexicon_bench(write=args.write, seed=args.seed)
    if args.rate_documents:
        result["rate"] = run_rate_bench(args.rate_documents, seed=args.seed)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
