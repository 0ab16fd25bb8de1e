"""Quality benchmark: heuristic scoring throughput on >= 200,000 documents, threshold moves from stored values,
language-model perplexity on CPU (every inference path against torch fp32, with its agreement), then the terminology bench (`bench/terms.py`:
Aho-Corasick against a regex alternation with a 1,000-term lexicon). Baselines are measured in the same run, so
the ratios hold on a noisy shared machine.

    flock /tmp/studio-heavy.lock .venv/bin/python bench/quality.py [--docs 200000] [--ppl-docs 48]

Corpus: every `corpus_*.jsonl` of the shared data (16k paragraphs, English and Chinese), replicated in order up to
`--docs` documents, ingested into a temporary workspace as one domain corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.config import data_root  # noqa: E402
from core.ingest import IngestConfig, ingest  # noqa: E402
from core.models import BUNDLED_LM  # noqa: E402
from core.quality import (  # noqa: E402
    QualityFilterConfig,
    QualityScoreConfig,
    apply_filters,
    filter_preview,
    score_quality,
)
from core.quality_signals import compute_batch, language_group  # noqa: E402
from core.text import detect_language  # noqa: E402
from core.workspace import Workspace  # noqa: E402


def shared_paragraphs() -> list[str]:
    texts = []
    for path in sorted(data_root().glob("*/corpus_*.jsonl")):
        with open(path, encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in fh]
    return [t for t in texts if t.strip()]


def bench_heuristics(texts: list[str], n_docs: int, baseline_docs: int, workdir: Path) -> dict[str, float]:
    corpus_file = workdir / "replicated.jsonl"
    with open(corpus_file, "w", encoding="utf-8") as fh:
        for i in range(n_docs):
            fh.write(json.dumps({"id": str(i), "text": texts[i % len(texts)]}, ensure_ascii=False) + "\n")
    groups = [language_group(detect_language(t)) for t in texts]
    zh_share = sum(g == "zh" for g in groups) / len(groups)
    print(f"heuristics: {n_docs:,} documents ({len(texts):,} distinct shared paragraphs replicated, "
          f"{zh_share:.0%} Chinese, {statistics.mean(map(len, texts)):,.0f} characters on average); "
          f"{os.cpu_count()} cores", flush=True)

    # baseline: the same rules in one process, no workspace
    sample = [texts[i % len(texts)] for i in range(baseline_docs)]
    sample_groups = [groups[i % len(texts)] for i in range(baseline_docs)]
    started = time.perf_counter()
    compute_batch(sample, sample_groups)
    single = baseline_docs / (time.perf_counter() - started)
    per_group = {}
    for group in ("latin", "zh"):
        part = [t for t, g in zip(sample, sample_groups, strict=True) if g == group][:5_000]
        started = time.perf_counter()
        compute_batch(part, [group] * len(part))
        per_group[group] = len(part) / (time.perf_counter() - started)
    print(f"  one process, no storage:  {single:>9,.0f} docs/s on {baseline_docs:,} docs "
          f"(English/Latin {per_group['latin']:,.0f} docs/s, Chinese with jieba {per_group['zh']:,.0f} docs/s)",
          flush=True)

    with Workspace.open(workdir / "ws") as ws:
        started = time.perf_counter()
        ingest(ws, IngestConfig(sources=[str(corpus_file)], corpus="bench", role="domain"))
        ingest_s = time.perf_counter() - started
        result = score_quality(ws, QualityScoreConfig())
        rate = result.docs_per_second
        rows = ws.query("SELECT count(*) FROM quality_signals")[0][0]
        print(f"  studio score (workers, stored): {rate:>9,.0f} docs/s ({result.documents_scored:,} docs in "
              f"{result.signals_seconds:.1f} s, {rows:,} stored values; ingest took {ingest_s:.1f} s)", flush=True)
        print(f"  ratio studio score / one process: {rate / single:.2f}x", flush=True)

        started = time.perf_counter()
        preview = filter_preview(ws, QualityFilterConfig())
        preview_s = time.perf_counter() - started
        started = time.perf_counter()
        applied = apply_filters(ws, QualityFilterConfig(thresholds={"word_count:min": 20}))
        apply_s = time.perf_counter() - started
        print(f"  threshold move from stored values: preview {preview_s:.2f} s ({preview.dropped:,} would drop), "
              f"apply with decisions {apply_s:.2f} s ({applied.dropped:,} dropped); "
              f"recomputing instead would take {result.signals_seconds:.0f} s "
              f"({result.signals_seconds / apply_s:.0f}x longer)", flush=True)
    return {"single_docs_per_s": single, "studio_docs_per_s": rate, "apply_s": apply_s}


def bench_perplexity(n_docs: int, max_tokens: int, chunk: int = 8,
                     paths: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Every inference path against torch fp32, interleaved batch by batch (each path sees the same load on a
    shared machine): tokens/s, ratio to fp32, and the worst relative perplexity deviation of any document."""
    from core import fastpath
    from core.fastpath import TORCH_BF16, TORCH_FP32, PathTrial
    from core.perplexity import (
        AGREEMENT_BOUND,
        ONNX_VARIANTS,
        PerplexityConfig,
        load_lm,
        onnx_supported,
        relative_deviation,
        score_texts,
    )

    with open(data_root() / "medquad" / "corpus_en_medquad_nih_paragraphs.jsonl", encoding="utf-8") as fh:
        texts = [json.loads(line)["text"] for line in fh]
    texts = [t for t in texts if len(t.split()) >= 80][:n_docs]
    started = time.perf_counter()
    load_lm()
    cpu = fastpath.cpu_features()
    print(f"perplexity: SmolLM2-135M loaded in {time.perf_counter() - started:.1f} s; {len(texts)} MedQuAD "
          f"paragraphs truncated to {max_tokens} tokens, batch 8, interleaved in chunks of {chunk}; CPU {cpu['cpu']} "
          f"({cpu['capability']}, flags {' '.join(cpu['flags']) or '-'}, native bf16 {cpu['bf16_hardware']})",
          flush=True)
    if paths is None:
        paths = [p for p in (*ONNX_VARIANTS, TORCH_BF16, TORCH_FP32) if p != TORCH_BF16 or fastpath._bf16_hardware()]
        if not onnx_supported(BUNDLED_LM):
            paths = [p for p in paths if p not in fastpath.ONNX_PATHS]
    paths = [TORCH_FP32] + [p for p in paths if p != TORCH_FP32]
    for path in paths:  # warm up: ONNX export / quantisation on the first run only, sessions, allocation
        started = time.perf_counter()
        score_texts(texts[:2], PerplexityConfig(max_tokens=max_tokens, dtype=path, device="cpu"))
        print(f"  {path}: ready in {time.perf_counter() - started:.1f} s", flush=True)
    seconds = dict.fromkeys(paths, 0.0)
    scores: dict[str, list] = {p: [] for p in paths}
    for start in range(0, len(texts), chunk):
        part = texts[start:start + chunk]
        for path in paths:
            started = time.perf_counter()
            scores[path] += score_texts(part, PerplexityConfig(max_tokens=max_tokens, batch_size=8, dtype=path,
                                                               device="cpu"))
            seconds[path] += time.perf_counter() - started
    tokens = sum(n for _, n in scores[TORCH_FP32])
    ref = [p for p, _ in scores[TORCH_FP32]]
    trials = []
    out = {}
    for path in paths:
        worst = None if path == TORCH_FP32 else relative_deviation(ref, [p for p, _ in scores[path]])
        accepted = worst is None or worst <= AGREEMENT_BOUND
        trials.append(PathTrial(path, len(texts), seconds[path], worst, accepted))
        out[path] = {"tokens_per_s": tokens / seconds[path], "vs_fp32": seconds[TORCH_FP32] / seconds[path],
                     "max_deviation": worst, "accepted": accepted}
        agreement = "reference" if worst is None else (
            f"worst document perplexity deviation {worst:.2%} ({'within' if accepted else 'OUTSIDE'} the 2% bound)")
        print(f"  {path:16s}: {out[path]['tokens_per_s']:>7,.0f} tokens/s, {out[path]['vs_fp32']:.2f}x torch fp32; "
              f"median perplexity {statistics.median(p for p, _ in scores[path] if p):.2f}; {agreement}", flush=True)
    chosen = fastpath.select_path(trials, higher_agrees_more=False)
    no_bf16 = fastpath.select_path([t for t in trials if t.path != TORCH_BF16], higher_agrees_more=False)
    print(f"  RATIO chosen path {chosen} / torch fp32: {out[chosen]['vs_fp32']:.2f}x; with bf16 forced off "
          f"(STUDIO_NO_BF16=1, as on an AVX2-only CPU): {no_bf16}, {out[no_bf16]['vs_fp32']:.2f}x", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--baseline-docs", type=int, default=20_000)
    parser.add_argument("--ppl-docs", type=int, default=48)
    parser.add_argument("--ppl-paths", default="", help="comma-separated inference paths (default: every one)")
    parser.add_argument("--only-perplexity", action="store_true", help="skip the heuristics and terms benches")
    parser.add_argument("--ppl-tokens", type=int, default=128)
    parser.add_argument("--skip-terms", action="store_true", help="leave out the terminology bench")
    args = parser.parse_args()
    if not args.only_perplexity:
        texts = shared_paragraphs()
        with tempfile.TemporaryDirectory(prefix="quality-bench-") as tmp:
            bench_heuristics(texts, args.docs, args.baseline_docs, Path(tmp))
    bench_perplexity(args.ppl_docs, args.ppl_tokens, paths=[p for p in args.ppl_paths.split(",") if p] or None)
    if not args.skip_terms and not args.only_perplexity:
        from bench.terms import run_terms_bench

        run_terms_bench()


if __name__ == "__main__":
    main()
