"""Terminology matching throughput: Aho-Corasick (core.terms) against a plain regex alternation, same run.

Lexicon: 1,000 terms, the first 500 of each bundled medical lexicon (English and Chinese), with the English
plurals the matcher adds. Documents: the shared domain and general corpora (English and Chinese paragraphs),
replicated to at least 200,000 documents. Both matchers find the same thing (leftmost-longest, whole words for
Latin terms, substrings for Chinese ones); the regex's total hits are checked against Aho-Corasick's on the same
documents.

The regex tries its alternatives at every position, so it is timed on an evenly spaced subset of the documents
(`regex_documents`, default 10,000) to keep the run short; throughputs are documents per second either way.

Run: `flock /tmp/studio-heavy.lock .venv/bin/python bench/terms.py [--documents N] [--regex-documents N]`.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import data_root  # noqa: E402
from core.terms import (  # noqa: E402
    Lexicon,
    TermMatcher,
    english_plurals,
    is_latin,
    load_lexicon,
    score_texts,
)
from core.text import detect_language  # noqa: E402

CORPUS_FILES = (
    "medquad/corpus_en_medquad_nih_paragraphs.jsonl",
    "pubmedqa/corpus_en_pubmed_abstracts_nontest.jsonl",
    "medicalgpt/corpus_zh_medical_textbook_fever.jsonl",
    "chinese_medical_dialogue/corpus_zh_medical_dialogue_answers.jsonl",
    "llamafactory/corpus_en_wikipedia_paragraphs.jsonl",
    "llamafactory/corpus_en_c4_web_paragraphs.jsonl",
    "nltk_inaugural/corpus_en_us_inaugural_addresses.jsonl",
    "medicalgpt/corpus_en_general_book_beard_history.jsonl",
)
# Not a word character for the boundary check: what core.terms._is_word_char says (letters/digits below CJK).
_BOUNDARY_CLASS = "[^\\W_\u2e80-\U0010ffff]"


def bench_lexicon(n_terms: int) -> Lexicon:
    """`n_terms` terms, half from each bundled lexicon, in file order."""
    en, zh = load_lexicon("medical_en"), load_lexicon("medical_zh")
    half = n_terms // 2
    keys = list(en.weights)[:half] + list(zh.weights)[: n_terms - half]
    if len(keys) < n_terms:
        raise ValueError(f"the bundled lexicons hold fewer than {n_terms} terms")
    spelling = {**en.spelling, **zh.spelling}
    return Lexicon(name=f"bench{n_terms}", weights=dict.fromkeys(keys, 1.0),
                   spelling={k: spelling[k] for k in keys}, sources=("medical_en", "medical_zh"))


def regex_alternation(lexicon: Lexicon) -> re.Pattern[str]:
    """One alternation of every term (and plural), longest first so that it is leftmost-longest too."""
    latin, other = set(), set()
    for key in lexicon.weights:
        if is_latin(key):
            latin.add(key)
            latin.update(p.lower() for p in english_plurals(lexicon.spelling[key]))
        else:
            other.add(key)

    def alternation(terms: set[str]) -> str:
        return "|".join(re.escape(t) for t in sorted(terms, key=lambda t: (-len(t), t)))

    pattern = f"(?<!{_BOUNDARY_CLASS})(?:{alternation(latin)})(?!{_BOUNDARY_CLASS})"
    if other:
        pattern += f"|(?:{alternation(other)})"
    return re.compile(pattern, re.IGNORECASE)


def load_documents(n_documents: int) -> tuple[list[str], list[str], int]:
    """(texts, languages, distinct texts): the shared corpora replicated to at least `n_documents`."""
    texts: list[str] = []
    root = data_root()
    for relative in CORPUS_FILES:
        with open(root / relative, encoding="utf-8") as fh:
            texts.extend(json.loads(line)["text"] for line in fh if line.strip())
    languages = [detect_language(t) for t in texts]
    distinct = len(texts)
    copies = -(-n_documents // distinct)
    return (texts * copies)[:n_documents], (languages * copies)[:n_documents], distinct


def run_terms_bench(documents: int = 200_000, regex_documents: int = 10_000, terms: int = 1_000,
                    verbose: bool = True) -> dict[str, Any]:
    """Measure and (with `verbose`) print documents/s of Aho-Corasick and of the regex alternation."""

    def say(line: str) -> None:
        if verbose:
            print(line, flush=True)

    lexicon = bench_lexicon(terms)
    texts, languages, distinct = load_documents(documents)
    chars = sum(map(len, texts))
    say(f"terms bench: {len(lexicon):,}-term lexicon, {len(texts):,} documents ({distinct:,} distinct, "
        f"replicated; {chars / len(texts):,.0f} characters on average)")

    started = time.perf_counter()
    matcher = TermMatcher(lexicon)
    build_ac = time.perf_counter() - started
    started = time.perf_counter()
    pattern = regex_alternation(lexicon)
    build_regex = time.perf_counter() - started

    # Aho-Corasick: matching and counting per document, over every document.
    started = time.perf_counter()
    ac_hits = 0
    for text in texts:
        ac_hits += sum(matcher.count(text).values())
    ac_seconds = time.perf_counter() - started
    ac_rate = len(texts) / ac_seconds
    say(f"  aho-corasick matching:  {ac_rate:>12,.0f} docs/s  ({len(texts):,} docs in {ac_seconds:.2f} s, "
        f"{ac_hits:,} hits; automaton built in {build_ac * 1000:.0f} ms)")

    # The full per-document scoring the step stores (units, density, terms JSON), for reference.
    started = time.perf_counter()
    score_texts(matcher, texts, languages)
    score_seconds = time.perf_counter() - started
    score_rate = len(texts) / score_seconds
    say(f"  full scoring (density): {score_rate:>12,.0f} docs/s  (matching + length units + terms JSON)")

    # The regex alternation on an evenly spaced subset; the same subset through Aho-Corasick for agreement.
    step = max(1, len(texts) // regex_documents)
    sample = texts[::step][:regex_documents]
    started = time.perf_counter()
    regex_hits = 0
    for text in sample:
        regex_hits += sum(1 for _ in pattern.finditer(text))
    regex_seconds = time.perf_counter() - started
    regex_rate = len(sample) / regex_seconds
    started = time.perf_counter()
    sample_ac_hits = sum(sum(matcher.count(t).values()) for t in sample)
    sample_ac_rate = len(sample) / (time.perf_counter() - started)
    say(f"  regex alternation:      {regex_rate:>12,.0f} docs/s  ({len(sample):,} docs in {regex_seconds:.2f} s, "
        f"{regex_hits:,} hits; Aho-Corasick finds {sample_ac_hits:,} on the same documents; "
        f"compiled in {build_regex * 1000:.0f} ms)")
    ratio = ac_rate / regex_rate
    same_docs_ratio = sample_ac_rate / regex_rate
    say(f"  aho-corasick on the regex's {len(sample):,} documents: {sample_ac_rate:,.0f} docs/s")
    say(f"  ratio aho-corasick / regex: {same_docs_ratio:,.1f}x on the same documents, "
        f"{ratio:,.1f}x with aho-corasick over all {len(texts):,}")
    return {
        "lexicon_terms": len(lexicon), "documents": len(texts), "distinct_documents": distinct,
        "mean_chars": round(chars / len(texts), 1),
        "aho_corasick_docs_per_s": round(ac_rate, 1), "aho_corasick_seconds": round(ac_seconds, 3),
        "aho_corasick_hits": ac_hits, "full_scoring_docs_per_s": round(score_rate, 1),
        "regex_documents": len(sample), "regex_docs_per_s": round(regex_rate, 1),
        "regex_seconds": round(regex_seconds, 3), "regex_hits": regex_hits,
        "aho_corasick_hits_on_regex_documents": sample_ac_hits, "aho_corasick_docs_per_s_on_regex_documents": round(sample_ac_rate, 1),
        "ratio": round(ratio, 2), "ratio_same_documents": round(same_docs_ratio, 2),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=200_000)
    parser.add_argument("--regex-documents", type=int, default=10_000)
    parser.add_argument("--terms", type=int, default=1_000)
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    args = parser.parse_args()
    result = run_terms_bench(args.documents, args.regex_documents, args.terms)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
