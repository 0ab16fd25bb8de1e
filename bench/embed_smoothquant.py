"""SmoothQuant for the int8 embedding path (issue 17): how close per-channel smoothing brings dynamic int8 to fp32.

Dynamic int8 (`onnx-int8`: every weight MatMul int8, activations quantised per tensor at run time) is the fastest
embedding path on CPUs without native bf16, but a few activation channels with large values (after GELU, in the FFN
output projections) coarsen every other channel, and its vectors fall below the 0.99 cosine bound. SmoothQuant
(Xiao et al. 2023, arXiv:2211.10438) moves that range into the weights: for each weight MatMul `x @ W`, with
per-input-channel `s_j = max|x_j|^a / max|W_j|^(1-a)` measured on calibration text, it computes
`(x / s) @ (diag(s) W)`, the same product, whose activation is flat enough for per-tensor int8. Here the division is
a Mul node before the MatMuls that read an activation (one for Q, K and V) and the statistics come from `--calibration` paragraphs.

For each smoothing strength `a` and each set of MatMuls kept in fp32, the bench prints per text set (MedQuAD
English, Chinese, English web and books) the min cosine to the studio's torch fp32 vectors at 128 tokens and the
speed, interleaved chunk by chunk with plain sentence-transformers (256 tokens, fp32), which the ratios divide by.

    .venv/bin/python bench/embed_smoothquant.py [--alphas 0.5,0.7] [--texts 200]
"""

from __future__ import annotations

import argparse
import json
import os
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
from core.embed import EmbedConfig, encode_onnx_file, encode_uncached, load_embedder, onnx_file  # noqa: E402

LAYER0_FFN_OUT = "/encoder/encoder/layer.0/output/dense/MatMul"  # the most sensitive MatMul (measured)


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


def channel_maxima(model, source: Path, matmuls: list, texts: list[str], cfg: EmbedConfig) -> dict[str, np.ndarray]:
    """max |x_j| per input channel of each MatMul's activation (by tensor name) over the real (unpadded) tokens of
    `texts`."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    graph = onnx.load(str(source))
    for name in dict.fromkeys(node.input[0] for node in matmuls):
        graph.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    probe = Path(tempfile.mkdtemp()) / "probe.onnx"
    onnx.save(graph, str(probe))
    session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()][1:]
    inputs = [i.name for i in session.get_inputs()]
    maxima: dict[str, np.ndarray] = {}
    for start in range(0, len(texts), 8):
        enc = model.tokenizer(texts[start:start + 8], padding=True, truncation=True, max_length=cfg.max_tokens,
                              return_tensors="np")
        mask = enc["attention_mask"].astype(bool)
        for name, value in zip(names, session.run(names, {k: enc[k].astype(np.int64) for k in inputs}), strict=True):
            found = np.abs(value[mask]).max(axis=0)
            maxima[name] = np.maximum(maxima[name], found) if name in maxima else found
    return maxima


def smoothed_graph(source: Path, matmuls: list, maxima: dict[str, np.ndarray], alpha: float, target: Path,
                   alphas: dict[str, float] | None = None) -> Path:
    """The fp32 graph with each MatMul's weight rows scaled by s and a Mul by 1/s on its input: the same function.
    MatMuls that read the same activation (Q, K and V) share one s (from their weights' joint row maxima) and one
    Mul, so their int8 inputs stay one quantisation, as without smoothing. `alphas` sets another strength for the
    MatMuls it names."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(source))
    weights = {t.name: t for t in graph.graph.initializer}
    wanted = {node.name for node in matmuls}
    readers: dict[str, list] = {}
    for node in graph.graph.node:
        if node.name in wanted:
            readers.setdefault(node.input[0], []).append(node)
    muls = {}
    for k, (activation, nodes) in enumerate(readers.items()):
        w_max = np.max([np.abs(numpy_helper.to_array(weights[n.input[1]])).max(axis=1) for n in nodes], axis=0)
        a = next(((alphas or {})[n.name] for n in nodes if n.name in (alphas or {})), alpha)
        s = np.maximum(maxima[activation], 1e-5) ** a / np.maximum(w_max, 1e-5) ** (1 - a)
        for node in nodes:
            w = numpy_helper.to_array(weights[node.input[1]])
            weights[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32),
                                                                    node.input[1]))
        scale, smoothed = f"smooth/{k}/scale", f"smooth/{k}/output"
        graph.graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), scale))
        muls[smoothed] = helper.make_node("Mul", [activation, scale], [smoothed], name=f"smooth/{k}/mul")
        for node in nodes:
            node.input[0] = smoothed
    nodes = list(graph.graph.node)
    del graph.graph.node[:]
    for node in nodes:  # each Mul just before its first reader keeps the graph in topological order
        graph.graph.node.extend(muls.pop(name) for name in list(node.input) if name in muls)
        graph.graph.node.append(node)
    onnx.save(graph, str(target))
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", default="0.5,0.7")
    parser.add_argument("--texts", type=int, default=200, help="texts per set")
    parser.add_argument("--calibration", type=int, default=64, help="paragraphs the channel maxima come from")
    parser.add_argument("--layer0-alphas", default="", help="also: layer 0's FFN output smoothed at these strengths")
    args = parser.parse_args()
    import onnx

    cfg = EmbedConfig(batch_size=16)
    model = load_embedder(cfg.model)
    sets = text_sets(args.texts)
    refs = {name: encode_uncached(texts, cfg, path=fastpath.TORCH_FP32) for name, texts in sets.items()}
    source = onnx_file(cfg.model, fastpath.ONNX_FP32)
    names = set(fastpath.weight_matmuls(source))
    matmuls = [node for node in onnx.load(str(source)).graph.node if node.name in names]
    # calibration text from the far end of each set, not the texts measured
    calibration = [t for texts in sets.values() for t in texts[-(args.calibration // len(sets)):]]
    maxima = channel_maxima(model, source, matmuls, calibration, cfg)
    work = Path(tempfile.mkdtemp(prefix="smoothquant-"))
    variants: dict[str, Path] = {"onnx-int8 (no smoothing)": fastpath.quantize_int8(source, work / "int8.onnx")}
    for alpha in (float(a) for a in args.alphas.split(",")):
        smooth = smoothed_graph(source, matmuls, maxima, alpha, work / f"smooth-{alpha}.onnx")
        variants[f"smooth a={alpha}"] = fastpath.quantize_int8(smooth, work / f"smooth-{alpha}.int8.onnx")
        variants[f"smooth a={alpha}, layer 0 FFN out fp32"] = fastpath.quantize_int8(
            smooth, work / f"smooth-{alpha}-l0.int8.onnx", [LAYER0_FFN_OUT])
        for a0 in (float(a) for a in args.layer0_alphas.split(",") if a):
            file = smoothed_graph(source, matmuls, maxima, alpha, work / f"smooth-{alpha}-{a0}.onnx",
                                  {LAYER0_FFN_OUT: a0})
            variants[f"smooth a={alpha}, layer 0 FFN out a={a0}"] = fastpath.quantize_int8(
                file, work / f"smooth-{alpha}-{a0}.int8.onnx")

    def plain(texts: list[str]) -> np.ndarray:
        model.max_seq_length = 256
        return model.encode(texts, batch_size=32, normalize_embeddings=True)

    def onnx_encode(file: Path, texts: list[str]) -> np.ndarray:
        model.max_seq_length = cfg.max_tokens
        return np.concatenate([encode_onnx_file(model, file, texts[b:b + 16], cfg) for b in range(0, len(texts), 16)])

    print(f"{len(sets)} sets of {args.texts} texts, 128 tokens, batch 16; calibration {len(calibration)} paragraphs")
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


if __name__ == "__main__":
    main()
