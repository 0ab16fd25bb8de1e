"""Dedup benchmark: MinHash signatures (studio/rensa vs datasketch's fastest path), estimate error, LSH clustering
in a workspace, peak memory, and embedding throughput (plain sentence-transformers vs every inference path of
the studio, with its agreement to fp32, vs the cache). Every baseline is measured in the same run, so the ratios hold on a noisy shared machine.

    flock /tmp/studio-heavy.lock .venv/bin/python bench/dedup.py [--docs 200000] [--baseline-docs 20000]

Corpus: every `corpus_*.jsonl` of the shared data (16k paragraphs, English and Chinese) plus near-duplicate
variants made by deleting, inserting and replacing 0-30% of their tokens, up to `--docs` documents.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.config import data_root  # noqa: E402
from core.dedup import jaccard_estimate, shingle_hashes  # noqa: E402
from core.text import detect_language  # noqa: E402

NUM_PERM = 128


def base_texts() -> list[str]:
    texts = []
    for path in sorted(data_root().glob("*/corpus_*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in fh]
    return texts


def make_corpus(n: int, seed: int = 0) -> tuple[list[str], list[tuple[int, int]]]:
    """Base paragraphs then edited variants; returns texts and (variant, base) index pairs."""
    rng = random.Random(seed)
    bases = base_texts()
    texts = list(bases)
    pairs = []
    langs = [detect_language(t) for t in bases]
    vocab = [w for t in bases[:3000] for w in t.split()]
    while len(texts) < n:
        i = rng.randrange(len(bases))
        cjk = langs[i] in ("zh", "ja")
        toks = list(bases[i]) if cjk else bases[i].split()
        if len(toks) < 5:
            continue
        fraction = rng.uniform(0.0, 0.3)
        for k in range(max(1, int(fraction * len(toks)))):
            pos = rng.randrange(len(toks))
            op = k % 3
            if op == 0 and len(toks) > 3:
                del toks[pos]
            elif op == 1:
                toks.insert(pos, rng.choice(toks) if cjk else rng.choice(vocab))
            else:
                toks[pos] = rng.choice(toks) if cjk else rng.choice(vocab)
        pairs.append((len(texts), i))
        texts.append(("" if cjk else " ").join(toks))
    return texts, pairs


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it is not inherited across exec)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_signatures(texts: list[str], pairs: list[tuple[int, int]], baseline_docs: int) -> dict:
    import rensa
    from datasketch import MinHash

    langs = [detect_language(t) for t in texts]
    t0 = time.perf_counter()
    hashes, offsets = shingle_hashes(texts, 5, langs)
    shingle_s = time.perf_counter() - t0

    # The studio's signatures: rensa R-MinHash over the flat n-gram hashes, then exported to a NumPy matrix.
    t0 = time.perf_counter()
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, NUM_PERM, 1337)
    compute_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sigs = np.asarray(matrix.to_rows(), dtype=np.uint32)
    export_s = time.perf_counter() - t0
    studio_s = compute_s + export_s

    # datasketch's fastest path, MinHash.bulk (update_batch inside), 128 permutations, on a subset (it is slow),
    # with the same n-grams in each of its two usual inputs; prepared outside the timing, to its benefit.
    rng = random.Random(1)
    subset = sorted(rng.sample(range(len(texts)), min(baseline_docs, len(texts))))
    as_bytes = [[h.tobytes() for h in hashes[offsets[i]:offsets[i + 1]]] for i in subset]
    t0 = time.perf_counter()
    MinHash.bulk(as_bytes, num_perm=NUM_PERM)
    ds_bytes_s = time.perf_counter() - t0
    # ... and with the n-gram hashes themselves as its 32-bit hash values (no SHA-1 per n-gram).
    as_ints = [[int(h) & 0xFFFFFFFF for h in hashes[offsets[i]:offsets[i + 1]]] for i in subset]
    t0 = time.perf_counter()
    MinHash.bulk(as_ints, num_perm=NUM_PERM, hashfunc=int)
    ds_ints_s = time.perf_counter() - t0
    ds_s = min(ds_bytes_s, ds_ints_s)
    sub_h = [hashes[offsets[i]:offsets[i + 1]] for i in subset]
    sub_offsets = np.concatenate([[0], np.cumsum([len(x) for x in sub_h])]).astype(np.uint64)
    sub_flat = np.concatenate(sub_h)
    t0 = time.perf_counter()
    m = rensa.RMinHash.digest_matrix_from_flat_token_hashes(sub_flat, sub_offsets, NUM_PERM, 1337)
    sub_compute_s = time.perf_counter() - t0
    np.asarray(m.to_rows(), dtype=np.uint32)
    sub_total_s = time.perf_counter() - t0

    # Estimate error against exact Jaccard of the n-gram sets, same pairs for both libraries.
    sample = pairs[:3000]
    docs = sorted({d for pair in sample for d in pair})
    ds_sig = dict(zip(docs, MinHash.bulk([[h.tobytes() for h in hashes[offsets[d]:offsets[d + 1]]] for d in docs],
                                         num_perm=NUM_PERM), strict=True))
    sets = {d: set(hashes[offsets[d]:offsets[d + 1]].tolist()) for d in docs}
    exact = np.array([len(sets[v] & sets[b]) / len(sets[v] | sets[b]) for v, b in sample])
    studio_est = jaccard_estimate(sigs[[v for v, _ in sample]], sigs[[b for _, b in sample]])
    ds_est = np.array([ds_sig[v].jaccard(ds_sig[b]) for v, b in sample])
    theory = np.sqrt(2 / np.pi) * np.sqrt(exact * (1 - exact) / NUM_PERM).mean()
    return {
        "documents": len(texts), "shingle_s": shingle_s, "shingle_docs_per_s": len(texts) / shingle_s,
        "ngrams_per_doc": len(hashes) / len(texts),
        "studio_compute_docs_per_s": len(texts) / compute_s, "studio_docs_per_s": len(texts) / studio_s,
        "studio_sig_s": studio_s, "export_s": export_s,
        "subset_docs": len(subset), "datasketch_bytes_docs_per_s": len(subset) / ds_bytes_s,
        "datasketch_ints_docs_per_s": len(subset) / ds_ints_s,
        "studio_subset_compute_docs_per_s": len(subset) / sub_compute_s,
        "studio_subset_docs_per_s": len(subset) / sub_total_s,
        "ratio_compute": ds_s / sub_compute_s, "ratio_with_export": ds_s / sub_total_s,
        "end_to_end_docs_per_s": len(texts) / (shingle_s + studio_s),
        "error_pairs": len(sample), "mean_exact_jaccard": float(exact.mean()),
        "studio_mean_abs_error": float(np.abs(studio_est - exact).mean()),
        "datasketch_mean_abs_error": float(np.abs(ds_est - exact).mean()), "theory_mean_abs_error": float(theory),
        "studio_max_abs_error": float(np.abs(studio_est - exact).max()),
        "datasketch_max_abs_error": float(np.abs(ds_est - exact).max()),
    }


def _phases(marks: list[tuple[float, str]], start: float, end: float) -> dict[str, float]:
    """Seconds per MinHash phase, from the progress messages of one run."""
    def at(prefix: str, default: float) -> float:
        return next((t for t, m in marks if m.startswith(prefix)), default)

    bands, join, verify = at("band hashes", start), at("candidate pairs", start), at("verifying", start)
    verified = next((t for t, m in marks if "candidates verified" in m), end)
    return {"signatures_s": bands - start, "bands_s": join - bands, "join_s": verify - join,
            "verify_s": verified - verify, "cluster_s": end - verified}


def cluster_phase(ws_path: str) -> None:
    """Child process: MinHash dedup of the whole workspace; prints timing and peak RSS as JSON. The LSH shape
    solved for recall (after issue 10) is compared with the 9 x 13 one solved before, on stored signatures."""
    from core.dedup import DedupConfig, deduplicate
    from core.workspace import Workspace

    marks: list[tuple[float, str]] = []

    def progress(fraction: float, message: str) -> None:
        marks.append((time.perf_counter(), message))

    with Workspace.open(ws_path) as ws:
        t0 = time.perf_counter()
        result = deduplicate(ws, DedupConfig(method="minhash", roles=("domain",)), progress)
        total = time.perf_counter() - t0
        phases = _phases(marks, t0, t0 + total)
        marks.clear()
        t1 = time.perf_counter()
        before = deduplicate(ws, DedupConfig(method="minhash", roles=("domain",), bands=9, rows=13), progress)
        before_phases = _phases(marks, t1, time.perf_counter())
        # A second run: all signatures stored, only bands/join/verify/cluster (e.g. another threshold).
        t1 = time.perf_counter()
        again = deduplicate(ws, DedupConfig(method="minhash", threshold=0.7, roles=("domain",)))
        rerun = time.perf_counter() - t1
    print(json.dumps({"total_s": total, "signatures_s": phases["signatures_s"],
                      "lsh_cluster_s": total - phases["signatures_s"], "phases": phases,
                      "rerun_other_threshold_s": rerun, "documents": result.documents, "dropped": result.dropped,
                      "candidates": result.details.get("candidates"), "bands": result.details.get("bands"),
                      "rows": result.details.get("rows"), "dropped_at_0.7": again.dropped,
                      "before": {"bands": 9, "rows": 13, "candidates": before.details.get("candidates"),
                                 "dropped": before.dropped, "phases": before_phases},
                      "peak_rss_mb": peak_rss_mb()}))


def bench_clustering(texts: list[str]) -> dict:
    """Load the corpus straight into a workspace's documents table (bulk Arrow insert: ingest is not what is
    measured here), then time MinHash dedup in a child process so its peak RSS is its own."""
    import pyarrow as pa

    from core.text import content_hash
    from core.workspace import Workspace

    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as tmp:
        ws_path = Path(tmp) / "ws"
        t0 = time.perf_counter()
        with Workspace.open(ws_path) as ws:
            ws.ensure_corpus("bench", "domain")
            table = pa.table({
                "doc_id": [f"b{i:07d}" for i in range(len(texts))], "text": texts,
                "char_count": pa.array([len(t) for t in texts], pa.int32()),
                "language": [detect_language(t) for t in texts],
                "content_hash": [content_hash(t) for t in texts]})
            ws.con.register("bench_docs", table)
            ws.con.execute("INSERT INTO documents (doc_id, corpus, text, char_count, language, content_hash) "
                           "SELECT doc_id, 'bench', text, char_count, language, content_hash FROM bench_docs")
            ws.con.unregister("bench_docs")
        load_s = time.perf_counter() - t0
        out = subprocess.run([sys.executable, __file__, "--cluster-phase", str(ws_path)], capture_output=True,
                             text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["ingest_s"] = load_s
        return result


def bench_embeddings(n: int, chunk: int = 50) -> dict:
    """Plain sentence-transformers (256 tokens, fp32) against every inference path of the studio, interleaved
    chunk by chunk (each method sees the same load on a shared machine), then the studio's cache."""
    import torch

    from core import fastpath
    from core.embed import (
        AGREEMENT_BOUND,
        EmbedConfig,
        embed_texts,
        encode_uncached,
        load_embedder,
        onnx_file,
        onnx_supported,
        smoothing_digest,
    )
    from core.fastpath import TORCH_BF16, TORCH_FP32, PathTrial
    from core.workspace import Workspace

    with open(data_root() / "medquad/corpus_en_medquad_nih_paragraphs.jsonl", encoding="utf-8") as fh:
        every = list(dict.fromkeys(json.loads(line)["text"] for line in fh))
    texts, held_out = every[:n], every[n:n + 200]
    words = float(np.mean([len(t.split()) for t in texts]))
    cfg = EmbedConfig()
    model = load_embedder(cfg.model)
    paths = [p for p in fastpath.PATHS if p != TORCH_BF16 or fastpath._bf16_hardware()]
    if not onnx_supported(cfg.model):
        paths = [p for p in paths if p not in fastpath.ONNX_PATHS]
    if fastpath.ONNX_INT8_SMOOTH in paths:  # made once per model; here (if not yet) from paragraphs not measured
        onnx_file(cfg.model, fastpath.ONNX_INT8_SMOOTH, held_out)
    for path in paths:  # warm up: ONNX export and quantisation (first run only), sessions, allocation
        encode_uncached(texts[:8], cfg, path=path)
    model.encode(texts[:8])

    def plain(part: list[str]) -> np.ndarray:
        model.max_seq_length = 256  # the model's own default: what a plain encode does
        return model.encode(part, batch_size=32, normalize_embeddings=True)

    seconds = {"plain": 0.0} | {p: 0.0 for p in paths}
    vectors: dict[str, list[np.ndarray]] = {k: [] for k in seconds}
    for start in range(0, len(texts), chunk):
        part = texts[start:start + chunk]
        for method in seconds:
            t0 = time.perf_counter()
            vectors[method].append(plain(part) if method == "plain" else encode_uncached(part, cfg, path=method))
            seconds[method] += time.perf_counter() - t0
    stacked = {k: np.concatenate(v) for k, v in vectors.items()}
    ref = stacked[TORCH_FP32]
    trials = [PathTrial(p, len(texts), seconds[p], None if p == TORCH_FP32 else float((stacked[p] * ref).sum(1).min()),
                        p == TORCH_FP32 or float((stacked[p] * ref).sum(1).min()) >= AGREEMENT_BOUND) for p in paths]
    chosen = fastpath.select_path(trials)
    chosen_no_bf16 = fastpath.select_path([t for t in trials if t.path != TORCH_BF16])
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp, Workspace.open(Path(tmp) / "ws") as ws:
        t0 = time.perf_counter()
        embed_texts(ws, texts, cfg, path=chosen)
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = embed_texts(ws, texts, cfg, path=chosen)
        cached_s = time.perf_counter() - t0
    return {
        "paragraphs": len(texts), "mean_words": words, "threads": torch.get_num_threads(),
        "cpu": fastpath.cpu_features(), "plain_256_fp32_per_s": len(texts) / seconds["plain"],
        "paths": {t.path: {"per_s": t.per_second, "vs_plain": seconds["plain"] / t.seconds,
                           "min_cos": t.agreement, "mean_cos": float((stacked[t.path] * ref).sum(1).mean()),
                           "accepted": t.accepted} for t in trials},
        "chosen": chosen, "chosen_no_bf16": chosen_no_bf16, "smoothing_digest": smoothing_digest(cfg.model),
        "fast_with_cache_write_per_s": len(texts) / first_s, "cached_per_s": len(texts) / cached_s,
        "cos_cached_vs_chosen_min": float((cached * stacked[chosen]).sum(1).min()),
        "cos_fp32_128_vs_plain256_mean": float((ref * stacked["plain"]).sum(1).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--baseline-docs", type=int, default=20_000)
    parser.add_argument("--embed-paragraphs", type=int, default=400)
    parser.add_argument("--only", choices=("minhash", "cluster", "embed"), help="run one part of the bench")
    parser.add_argument("--cluster-phase", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cluster_phase:
        cluster_phase(args.cluster_phase)
        return

    if args.only != "embed":
        texts, pairs = make_corpus(args.docs)
        print(f"corpus: {len(texts):,} documents ({len(texts) - len(pairs):,} real paragraphs + {len(pairs):,} edited "
              f"variants), {NUM_PERM} permutations, 5-word / 5-character shingles")
    if args.only in (None, "minhash"):
        s = bench_signatures(texts, pairs, args.baseline_docs)
        print(f"shingling (tokens by script, n-gram hashes): {s['shingle_docs_per_s']:,.0f} docs/s ({s['shingle_s']:.1f} s, "
              f"{s['ngrams_per_doc']:.0f} n-grams/doc)")
        print(f"signatures, studio (rensa R-MinHash), all {s['documents']:,} docs: {s['studio_compute_docs_per_s']:,.0f} "
              f"docs/s computed, {s['studio_docs_per_s']:,.0f} docs/s including export to a NumPy matrix "
              f"({s['studio_sig_s']:.2f} s, of which export {s['export_s']:.2f} s)")
        print(f"same {s['subset_docs']:,}-doc subset, same n-grams: datasketch MinHash.bulk {s['datasketch_bytes_docs_per_s']:,.0f} "
              f"docs/s (bytes, SHA-1), {s['datasketch_ints_docs_per_s']:,.0f} docs/s (pre-hashed ints); studio "
              f"{s['studio_subset_compute_docs_per_s']:,.0f} docs/s computed, {s['studio_subset_docs_per_s']:,.0f} with export")
        print(f"RATIO studio / datasketch (fastest of its two): {s['ratio_compute']:.1f}x signature computation, "
              f"{s['ratio_with_export']:.1f}x including export to NumPy")
        print(f"end to end from text (shingling + signatures + export), studio: {s['end_to_end_docs_per_s']:,.0f} docs/s")
        print(f"estimate error vs exact Jaccard on {s['error_pairs']:,} variant/base pairs (mean J "
              f"{s['mean_exact_jaccard']:.2f}), mean |error|: studio {s['studio_mean_abs_error']:.4f}, datasketch "
              f"{s['datasketch_mean_abs_error']:.4f}, theory {s['theory_mean_abs_error']:.4f}; max: studio "
              f"{s['studio_max_abs_error']:.3f}, datasketch {s['datasketch_max_abs_error']:.3f}")
    if args.only in (None, "cluster"):
        c = bench_clustering(texts)
        print(f"workspace: bulk load {c['ingest_s']:.1f} s; MinHash dedup of {c['documents']:,} docs: {c['total_s']:.1f} s "
              f"(signatures incl. shingling and storing {c['signatures_s']:.1f} s, LSH bands + self-join + verify + "
              f"union-find + decisions {c['lsh_cluster_s']:.1f} s; {c['bands']}x{c['rows']} bands, "
              f"{c['candidates']:,} candidate pairs, {c['dropped']:,} dropped)")
        b, n = c["before"], c["documents"]
        for label, cand, dropped, ph in (
                ("before (9 x 13, S-curve midpoint ~0.845)", b["candidates"], b["dropped"], b["phases"]),
                (f"after ({c['bands']} x {c['rows']}, chosen for recall)", c["candidates"], c["dropped"],
                 c["phases"])):
            print(f"LSH {label}: {cand:,} candidate pairs = {cand / n:.3f} per document; band hashes "
                  f"{ph['bands_s']:.2f} s, candidate join {ph['join_s']:.2f} s, verification {ph['verify_s']:.3f} s, "
                  f"clustering + decisions {ph['cluster_s']:.2f} s; {dropped:,} dropped")
        print(f"RATIO after / before: candidates {c['candidates'] / max(b['candidates'], 1):.2f}x, verification time "
              f"{c['phases']['verify_s'] / max(b['phases']['verify_s'], 1e-9):.2f}x, band hashes + join + verify "
              f"{sum(c['phases'][k] for k in ('bands_s', 'join_s', 'verify_s')) / max(sum(b['phases'][k] for k in ('bands_s', 'join_s', 'verify_s')), 1e-9):.2f}x")
        print(f"re-run at threshold 0.7 with stored signatures: {c['rerun_other_threshold_s']:.1f} s "
              f"({c['dropped_at_0.7']:,} dropped); peak RSS of the dedup process {c['peak_rss_mb']:,.0f} MB")
    if args.only in (None, "embed"):
        e = bench_embeddings(args.embed_paragraphs)
        cpu = e["cpu"]
        print(f"embeddings, {e['paragraphs']} MedQuAD paragraphs ({e['mean_words']:.0f} words avg, {e['threads']} "
              f"threads), interleaved in chunks; CPU {cpu['cpu']} ({cpu['capability']}, flags "
              f"{' '.join(cpu['flags']) or '-'}, native bf16 {cpu['bf16_hardware']})")
        print(f"  plain sentence-transformers (256 tokens, fp32): {e['plain_256_fp32_per_s']:.1f}/s; onnx-int8-smooth's "
              f"statistics {e['smoothing_digest']}")
        for path, r in e["paths"].items():
            agreement = "reference" if r["min_cos"] is None else f"cosine to torch-fp32 min {r['min_cos']:.4f} " \
                f"mean {r['mean_cos']:.5f} ({'within' if r['accepted'] else 'OUTSIDE'} the 0.99 bound)"
            print(f"  {path:16s} (128 tokens): {r['per_s']:6.1f}/s, {r['vs_plain']:.2f}x plain; {agreement}")
        chosen = e["paths"][e["chosen"]]
        print(f"RATIO chosen path {e['chosen']} / plain (256, fp32): {chosen['vs_plain']:.2f}x; with bf16 forced off "
              f"(STUDIO_NO_BF16=1, as on an AVX2-only CPU): {e['chosen_no_bf16']}, "
              f"{e['paths'][e['chosen_no_bf16']]['vs_plain']:.2f}x")
        print(f"  with cache write {e['fast_with_cache_write_per_s']:.1f}/s; cached {e['cached_per_s']:,.0f}/s "
              f"({e['cached_per_s'] / e['plain_256_fp32_per_s']:,.0f}x plain); cached vs computed min cosine "
              f"{e['cos_cached_vs_chosen_min']:.6f}; fp32 at 128 vs plain 256 tokens mean cosine "
              f"{e['cos_fp32_128_vs_plain256_mean']:.4f}")
    print(f"peak RSS of the bench process: {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
