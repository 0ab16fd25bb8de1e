"""Recall and decontamination speed: FAISS search against a brute-force NumPy cosine baseline over 100,000
candidate documents and 5,000 benchmark items, and n-gram contamination throughput on the real shared corpora.

Vectors. Embedding 100,000 documents with all-MiniLM-L6-v2 takes about an hour on 2 cores, so the search part
embeds what is affordable for real (REAL_DOCS real paragraphs of the shared corpora, REAL_ITEMS real MMLU-Med and
MMLU items) and grows them into realistic clustered sets: every real document vector is the centre of a cluster of
documents (centre plus Gaussian noise, re-normalised; noise scaled so that siblings have a cosine of about 0.6-0.8
to each other, like paragraphs of one topic), and every real item vector seeds items the same way. The real
vectors are part of the sets. Uniform random vectors would make the approximate index look either perfect or
useless; clustered ones behave like real embedding sets.

Run: `flock /tmp/studio-heavy.lock .venv/bin/python bench/recall.py` (prints figures; nothing is written).
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.config import data_root  # noqa: E402
from core.decontam import BenchmarkItemRef, ContaminationIndex, DecontamConfig, fast_tokens  # noqa: E402
from core.embed import embed_texts  # noqa: E402
from core.readers import render_mcq  # noqa: E402
from core.recall import build_index, search  # noqa: E402

N_DOCS = 100_000
N_ITEMS = 5_000
K = 50
REAL_DOCS = int(os.environ.get("BENCH_REAL_DOCS", 1000))
REAL_ITEMS = int(os.environ.get("BENCH_REAL_ITEMS", 500))
CORPUS_FILES = ["medquad/corpus_en_medquad_nih_paragraphs.jsonl", "pubmedqa/corpus_en_pubmed_abstracts_nontest.jsonl",
                "llamafactory/corpus_en_wikipedia_paragraphs.jsonl", "llamafactory/corpus_en_c4_web_paragraphs.jsonl",
                "nltk_inaugural/corpus_en_us_inaugural_addresses.jsonl",
                "medicalgpt/corpus_en_general_book_beard_history.jsonl",
                "medicalgpt/corpus_zh_medical_textbook_fever.jsonl",
                "chinese_medical_dialogue/corpus_zh_medical_dialogue_answers.jsonl",
                "medicalgpt/corpus_zh_medical_rag_qa.jsonl"]
BENCH_FILES = ["mmlu/mcq_mmlu_medical_test.jsonl", "mmlu/mcq_mmlu_general_test.jsonl", "medmcqa/mcq_medmcqa_dev.jsonl",
               "cmmlu/mcq_cmmlu_medical_test.jsonl", "cmmlu/mcq_cmmlu_general_test.jsonl"]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def grow(seeds: np.ndarray, n: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """`n` unit vectors clustered around `seeds` (the seeds themselves first)."""
    dim = seeds.shape[1]
    owner = rng.integers(0, len(seeds), size=n - len(seeds))
    extra = seeds[owner] + rng.normal(0, noise / np.sqrt(dim), size=(len(owner), dim)).astype(np.float32)
    out = np.concatenate([seeds, extra]).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def numpy_topk(queries: np.ndarray, docs: np.ndarray, k: int, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The baseline: cosine by matrix product, top-k by argpartition, batch by batch."""
    sims_out = np.empty((len(queries), k), np.float32)
    ids_out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), batch):
        sims = queries[start:start + batch] @ docs.T
        part = np.argpartition(-sims, k, axis=1)[:, :k]
        top = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-top, axis=1)
        ids_out[start:start + batch] = np.take_along_axis(part, order, axis=1)
        sims_out[start:start + batch] = np.take_along_axis(top, order, axis=1)
    return sims_out, ids_out


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def search_bench(data: Path) -> None:
    rng = np.random.default_rng(0)
    docs = []
    for f in CORPUS_FILES[:6]:  # English prose: the MMLU items are English
        docs += [r["text"] for r in jsonl(data / f) if len(r["text"]) >= 200]
    docs = random.Random(0).sample(docs, REAL_DOCS)
    items = [render_mcq(r) for f in BENCH_FILES[:2] for r in jsonl(data / f)]
    items = random.Random(1).sample(items, REAL_ITEMS)
    (real_docs, t_docs) = timed(embed_texts, None, docs)
    (real_items, t_items) = timed(embed_texts, None, items)
    print(f"real embeddings: {REAL_DOCS:,} documents in {t_docs:.1f} s ({REAL_DOCS / t_docs:.1f}/s), "
          f"{REAL_ITEMS:,} items in {t_items:.1f} s ({REAL_ITEMS / t_items:.1f}/s)")
    real_cos = (real_items @ real_docs.T).max(axis=1)
    print(f"real item -> best real document cosine: median {np.median(real_cos):.3f}, p90 "
          f"{np.quantile(real_cos, 0.9):.3f}")
    doc_vecs = grow(real_docs, N_DOCS, noise=0.75, rng=rng)
    item_vecs = grow(real_items, N_ITEMS, noise=0.75, rng=rng)
    owner_check = doc_vecs[REAL_DOCS:REAL_DOCS + 2000] @ real_docs.T
    print(f"clustered set: {N_DOCS:,} documents around {REAL_DOCS:,} real ones, {N_ITEMS:,} items around "
          f"{REAL_ITEMS:,} real ones; cosine of a grown document to its centre: median "
          f"{np.median(owner_check.max(axis=1)):.3f}")

    (np_sims, np_ids), t_numpy = timed(numpy_topk, item_vecs, doc_vecs, K)
    print(f"NumPy brute force (matmul + argpartition), {N_ITEMS:,} x {N_DOCS:,}, top-{K}: {t_numpy:.2f} s "
          f"({N_ITEMS / t_numpy:,.0f} queries/s)")
    (flat, _), t_build = timed(build_index, doc_vecs, N_DOCS + 1)
    (fl_sims, fl_ids), t_flat = timed(search, flat, item_vecs, K)
    agree = float(np.mean(fl_ids[:, 0] == np_ids[:, 0]))
    print(f"FAISS IndexFlatIP (exact): build {t_build:.2f} s, search {t_flat:.2f} s ({N_ITEMS / t_flat:,.0f} "
          f"queries/s); {t_numpy / t_flat:.1f}x the NumPy baseline; top-1 agreement with NumPy {agree:.4f}")
    (ivf, kind), t_ivf_build = timed(build_index, doc_vecs, 0, 32)
    (iv_sims, iv_ids), t_ivf = timed(search, ivf, item_vecs, K)
    recall_at_k = np.mean([len(set(a) & set(b)) / K for a, b in zip(iv_ids.tolist(), fl_ids.tolist(), strict=True)])
    print(f"FAISS IVF ({kind}, nlist {ivf.nlist}, nprobe {ivf.nprobe}): build (train + add) {t_ivf_build:.2f} s, "
          f"search {t_ivf:.2f} s ({N_ITEMS / t_ivf:,.0f} queries/s); {t_numpy / t_ivf:.1f}x NumPy, "
          f"{t_flat / t_ivf:.1f}x exact FAISS; recall@{K} vs exact {recall_at_k:.4f}")
    for nprobe in (8, 64):
        ivf.nprobe = nprobe
        (_, ids), t = timed(search, ivf, item_vecs, K)
        r = np.mean([len(set(a) & set(b)) / K for a, b in zip(ids.tolist(), fl_ids.tolist(), strict=True)])
        print(f"  nprobe {nprobe}: search {t:.2f} s, recall@{K} {r:.4f}")
    (_, best), t_rev = timed(search, build_index(item_vecs, N_ITEMS + 1)[0], doc_vecs, 1)
    print(f"reverse search (every candidate's best item, exact, {N_DOCS:,} x {N_ITEMS:,}): {t_rev:.2f} s")


def ngram_bench(data: Path) -> None:
    items = []
    for f in BENCH_FILES:
        for r in jsonl(data / f):
            answer = r["choices"][r["answer_index"]] if r.get("answer_index") is not None else ""
            items.append(BenchmarkItemRef(r["id"], f, r["id"], r.get("subject") or "", f"{r['question']}\n{answer}"))
    real = [r["text"] for f in CORPUS_FILES for r in jsonl(data / f)]
    # The shared corpora hold ~16,000 paragraphs; repeated to N_DOCS so the scan runs at the recall bench's size.
    docs = (real * (N_DOCS // len(real) + 1))[:N_DOCS]
    print(f"n-gram scan set: {len(real):,} real paragraphs (English and Chinese), repeated to {len(docs):,}")
    mb = sum(len(d.encode()) for d in docs) / 1e6
    (index, t_index) = timed(ContaminationIndex, items, DecontamConfig())
    print(f"n-gram index: {len(items):,} items, {index.ngrams:,} distinct n-grams, built in {t_index:.2f} s")
    (found, t_find) = timed(index.find_many, docs)
    hits = sum(bool(f) for f in found)
    print(f"ContaminationIndex.find_many: {len(docs):,} real documents ({mb:.1f} MB) in {t_find:.2f} s = "
          f"{len(docs) / t_find:,.0f} documents/s, {mb / t_find:.2f} MB/s; {hits} contaminated")

    # Baseline in the same run: the textbook way, a Python set of item 13-gram tuples, every document window looked up.
    word = re.compile(r"\w+")

    def naive() -> int:
        grams: set[tuple[str, ...]] = set()
        for it in items:
            toks = fast_tokens(it.text)
            grams.update(tuple(toks[i:i + 13]) for i in range(len(toks) - 12))
        found = 0
        for d in docs:
            toks = word.findall(d.casefold())
            if any(tuple(toks[i:i + 13]) in grams for i in range(len(toks) - 12)):
                found += 1
        return found

    (naive_hits, t_naive) = timed(naive)
    print(f"baseline (Python set of 13-gram tuples, index + scan): {t_naive:.2f} s = {len(docs) / t_naive:,.0f} "
          f"documents/s; {naive_hits} contaminated (words only: no CJK character n-grams, no short items, no "
          f"offsets); time ratio baseline / ContaminationIndex: index + scan {t_naive / (t_index + t_find):.2f}, "
          f"scan alone {t_naive / t_find:.2f}")


def main() -> None:
    data = data_root()
    print(f"data: {data}; {os.cpu_count()} CPU cores")
    ngram_bench(data)
    search_bench(data)


if __name__ == "__main__":
    main()
