"""SmoothQuant for the int8 embedding path (issue 17): how close per-channel smoothing brings dynamic int8 to fp32,
and what the studio's `onnx-int8-smooth` path (`core.fastpath.smooth_graph`) gains over its parts.

Dynamic int8 (`onnx-int8`: every weight MatMul int8, activations quantised per tensor at run time) is the fastest
embedding path on CPUs without native bf16, but a few activation channels with large values (after GELU, in the FFN
output projections) coarsen every other channel, and its vectors fall below the 0.99 cosine bound. SmoothQuant
(Xiao et al. 2023, arXiv:2211.10438) moves that range into the weights: for each weight MatMul `x @ W`, with
per-input-channel `s_j = max|x_j|^a / max|W_j|^(1-a)` measured on calibration text, it computes
`(x / s) @ (diag(s) W)`, the same product, whose activation is flat enough for per-tensor int8. The division is a
Mul node before the MatMuls that read an activation (one for Q, K and V), folded into the value projection for the
attention output projection; the statistics come from `--calibration` paragraphs not measured.

For each smoothing strength `a` and each set of MatMuls kept in fp32, the bench prints per text set (MedQuAD
English, Chinese, English web and books) the min cosine to the studio's torch fp32 vectors at 128 tokens and the
speed, interleaved chunk by chunk with plain sentence-transformers (256 tokens, fp32), which the ratios divide by.

    .venv/bin/python bench/embed_smoothquant.py [--alphas 0.5,0.7] [--texts 200] [--write-stats]

`--write-stats` writes the maxima (64 paragraphs of each set after the measured ones: 192) as the statistics the
studio ships for its bundled model, `data/smoothing/all-MiniLM-L6-v2.npz`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core import fastpath  # noqa: E402
from core.config import data_root  # noqa: E402
from core.embed import (  # noqa: E402
    SHIPPED_SMOOTHING,
    SMOOTH_BLOCK_DOWNS,
    EmbedConfig,
    embedding_dimension,
    encode_onnx_file,
    encode_uncached,
    load_embedder,
    measure_smoothing_maxima,
    onnx_file,
    sensitive_matmuls,
    write_smoothing_maxima,
)


def text_sets(n: int) -> dict[str, list[str]]:
    def lines(pattern: str, per_file: int, skip: str = "") -> list[str]:
        out: list[str] = []
        for path in sorted(data_root().glob(pattern)):
            if skip and skip in path.name:
                continue
            with open(path, encoding="utf-8") as fh:
                out += [json.loads(line)["text"] for _, line in zip(range(per_file), fh, strict=False)]
        return out

    medquad = list(dict.fromkeys(lines("medquad/corpus_en_medquad_nih_paragraphs.jsonl", 10 * n)))[:n]
    web = lines("*/corpus_en*.jsonl", n // 4, skip="medquad")[:n]
    return {"medquad": medquad, "chinese": lines("*/corpus_zh*.jsonl", n)[:n], "web+books": web}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", default="0.5,0.7")
    parser.add_argument("--texts", type=int, default=200, help="texts per set")
    parser.add_argument("--calibration", type=int, default=64,
                        help="paragraphs per set the channel maxima come from (after the measured ones)")
    parser.add_argument("--write-stats", action="store_true",
                        help="write the maxima as the statistics shipped for the bundled model (data/smoothing/)")
    args = parser.parse_args()
    cfg = EmbedConfig()
    model = load_embedder(cfg.model)
    both = text_sets(args.texts + args.calibration)
    sets = {name: texts[:args.texts] for name, texts in both.items()}
    calibration = [t for texts in both.values() for t in texts[args.texts:]]  # never among the texts measured
    refs = {name: encode_uncached(texts, cfg, path=fastpath.TORCH_FP32) for name, texts in sets.items()}
    source = onnx_file(cfg.model, fastpath.ONNX_FP32)
    maxima = measure_smoothing_maxima(model, source, calibration, cfg.max_tokens)
    if args.write_stats:
        written = write_smoothing_maxima(maxima, SHIPPED_SMOOTHING[cfg.model], len(calibration))
        print(f"statistics of {len(calibration)} paragraphs written to {written.relative_to(REPO)}")
    work = Path(tempfile.mkdtemp(prefix="smoothquant-"))  # removed at the end: each variant is ~30-90 MB
    studio_blocks = sensitive_matmuls(source, SMOOTH_BLOCK_DOWNS)
    variants: dict[str, Path] = {"onnx-int8 (no smoothing)": fastpath.quantize_int8(source, work / "int8.onnx")}
    for alpha in (float(a) for a in args.alphas.split(",")):
        smooth = fastpath.smooth_graph(source, work / f"smooth-{alpha}.onnx", maxima, alpha)
        variants[f"smooth a={alpha}"] = fastpath.quantize_int8(smooth, work / f"smooth-{alpha}.int8.onnx")
        variants[f"smooth a={alpha}, layer 0 FFN out fp32"] = fastpath.quantize_int8(
            smooth, work / f"smooth-{alpha}-l0.int8.onnx", studio_blocks[:1])  # the most sensitive MatMul
        for blocks in range(1, SMOOTH_BLOCK_DOWNS + 1):  # the studio's onnx-int8-smooth: a = 0.7, the last one
            block = fastpath.quantize_int8_blockwise(
                smooth, work / f"smooth-{alpha}-{blocks}.block.onnx",
                [n for n in fastpath.weight_matmuls(smooth) if n not in studio_blocks[:blocks]],
                block_size=fastpath.SMOOTH_BLOCK_SIZE)
            variants[f"smooth a={alpha}, first {blocks} FFN out as 8-bit blocks"] = fastpath.quantize_int8(
                block, work / f"smooth-{alpha}-{blocks}.block.int8.onnx")

    def plain(texts: list[str]) -> np.ndarray:
        model.max_seq_length = 256
        return model.encode(texts, batch_size=32, normalize_embeddings=True)

    def onnx_encode(file: Path, texts: list[str]) -> np.ndarray:
        """Batches of similar lengths, as `encode_uncached` makes them (per-tensor int8 depends on the batch)."""
        model.max_seq_length = cfg.max_tokens
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), embedding_dimension(model)), dtype=np.float32)
        for b in range(0, len(texts), cfg.batch_size):
            batch = order[b:b + cfg.batch_size]
            out[batch] = encode_onnx_file(model, file, [texts[i] for i in batch], cfg)
        return out

    print(f"{len(sets)} sets of {args.texts} texts, 128 tokens, length-sorted batches of {cfg.batch_size}; calibration {len(calibration)} paragraphs")
    seconds = {"plain": 0.0} | {name: 0.0 for name in variants}
    cosine: dict[str, dict[str, float]] = {name: {} for name in variants}
    for set_name, texts in sets.items():
        for file in variants.values():
            onnx_encode(file, texts[:8])  # warm the session
        vectors: dict[str, list[np.ndarray]] = {name: [] for name in variants}
        for start in range(0, len(texts), 50):
            part = texts[start:start + 50]
            t0 = time.perf_counter()
            plain(part)
            seconds["plain"] += time.perf_counter() - t0
            for name, file in variants.items():
                t0 = time.perf_counter()
                vectors[name].append(onnx_encode(file, part))
                seconds[name] += time.perf_counter() - t0
        for name in variants:
            cosine[name][set_name] = float((np.concatenate(vectors[name]) * refs[set_name]).sum(axis=1).min())
    total = sum(len(t) for t in sets.values())
    print(f"plain sentence-transformers (256 tokens, fp32): {total / seconds['plain']:.1f}/s")
    for name in variants:
        mins = ", ".join(f"{k} {v:.4f}" for k, v in cosine[name].items())
        ok = "within" if min(cosine[name].values()) >= 0.99 else "OUTSIDE"
        print(f"  {name:40} {total / seconds[name]:6.1f}/s {seconds['plain'] / seconds[name]:.2f}x plain; "
              f"min cosine to fp32: {mins} ({ok} the 0.99 bound)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
