"""Sentence embeddings for semantic dedup and recall, cached in the workspace by model and text hash.

Embedding is the slowest step of curation on a CPU (plain sentence-transformers encode of all-MiniLM-L6-v2
manages ~30 paragraphs/s on 2 cores), so this module makes it fast in three ways and then avoids it:

- truncation to `max_tokens=128` word pieces: all-MiniLM-L6-v2 was trained on sequences of at most 128 tokens
  (its model card), so the default 256 costs twice the attention for text the model never learnt to read;
- the fastest inference path that keeps every vector of a calibration sample within cosine 0.99 of the fp32
  vector (`core.fastpath`): ONNX Runtime with int8 weights, ONNX Runtime fp32, bf16 autocast where the CPU has it
  natively, or torch fp32. The model is exported to ONNX locally (torch.onnx, cached under STUDIO_CACHE) and
  quantised with onnxruntime's dynamic int8 quantisation; nothing is fetched. On MedQuAD and Chinese paragraphs
  int8 everywhere fell to cosine 0.97 (Chinese) and 0.986 (English); keeping the first layer and the FFN output
  projections in fp32 (`onnx-int8-mixed`) keeps it above 0.99 on the samples measured;
- ONNX Runtime's offline BERT fusions (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization),
  which the session-time optimizer does not make: `onnx-fused-fp32` (exact), `onnx-fused-int8-mixed` (the same
  layers kept fp32, the fused Attentions of the other layers as QAttention) and `onnx-fused-int8-block`
  (MatMulNBits, 8-bit blocks, int8 compute: min cosine 0.9996, but on AVX2 barely faster than fp32). Measured
  interleaved on a 2-core AVX2 EPYC (MedQuAD + Chinese paragraphs, 128 tokens): onnx-fused-fp32 1.22x
  onnx-fp32, onnx-int8-mixed 1.36x (min cosine 0.991), onnx-fused-int8-mixed 1.68x (min cosine 0.991);
- SmoothQuant before dynamic int8 (`onnx-int8-smooth`, see `core.fastpath`): the activation outliers moved
  into the weights per input channel (strength 0.7), the attention output projection's smoothing folded into
  the value projection, the first two FFN output projections (the MatMuls smoothing leaves least accurate) as
  8-bit MatMulNBits. Its statistics are shipped for the bundled model (`data/smoothing/`) and come from the first
  calibration's texts (those outside the timed sample) for any other, once per model; the vectors' cache key
  names their digest. `bench/dedup.py --only embed`, 400 MedQuAD
  paragraphs on a 2-core AVX-512 EPYC: 4.35x plain sentence-transformers, min cosine 0.9973 (onnx-int8-mixed
  2.84x; plain onnx-int8 as fast, at 0.9903 here and 0.97 on Chinese); `bench/embed_smoothquant.py`: 0.9940 on
  Chinese and 0.9951 on English web and book paragraphs;
- length-sorted batches so little compute goes to padding.

Dynamic int8 quantisation in torch (torch.ao) was measured too and rejected: cosine to fp32 0.91 (0.97 per channel).

Vectors are stored in the workspace table `embeddings` keyed by (model_key, text_hash): the model key names
the model, `max_tokens` and the inference path (vectors from different paths never mix), the text hash is
`core.text.raw_hash`, so a re-run, a threshold change or another step (semantic dedup, recall) never embeds an
unchanged text twice.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections.abc import Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from core import fastpath
from core.config import REPO_ROOT
from core.fastpath import (
    ONNX_PATHS,
    TORCH_BF16,
    TORCH_FP32,
    PathChoice,
)
from core.models import BUNDLED_EMBEDDER, ModelUnavailable, minilm_path, offline_by_default
from core.progress import Progress, no_progress
from core.text import raw_hash
from core.workspace import Workspace

# Bump when the way vectors are computed changes in a way that changes them (pooling, precision policy).
EMBED_SCHEME = "v2"
AGREEMENT_BOUND = 0.99  # min cosine to the fp32 vector over the calibration sample
CALIBRATION_TEXTS = 48  # texts timed and compared per path at first use
MIN_CALIBRATION_TEXTS = 16  # fewer texts than this are embedded with the reference path, undecided
SMOOTHING_TEXTS = 64  # texts whose activations onnx-int8-smooth is made from (64 measured enough)
SMOOTHING_FILE = "model.smooth.json"  # beside the smoothed graph: the digest of its statistics
# onnx-int8-smooth keeps the first two FFN output projections as 8-bit blocks: with the first alone the min cosine
# on English web and book text was 0.990-0.992, with two 0.994 at the same speed (4.25x and 4.29x plain)
SMOOTH_BLOCK_DOWNS = 2
# Smoothing statistics shipped for the bundled model, so its onnx-int8-smooth (and its vectors' cache key) is the
# same on every install, whatever the first workspace holds: measured by `bench/embed_smoothquant.py
# --write-stats` on 192 paragraphs of the shared corpora (English medical, Chinese, English web and books). Other
# models are smoothed with statistics from their first calibration's texts.
SHIPPED_SMOOTHING = {BUNDLED_EMBEDDER: REPO_ROOT / "data" / "smoothing" / "all-MiniLM-L6-v2.npz"}
# What, besides the statistics, makes an onnx-int8-smooth variant: part of its digest, so a change remakes it.
SMOOTHING_RECIPE = f"alpha={fastpath.SMOOTH_ALPHA}|blocks={SMOOTH_BLOCK_DOWNS}x{fastpath.SMOOTH_BLOCK_SIZE}"
PATH_ENV = "STUDIO_EMBED_PATH"  # names a path to skip the calibration (benches, tests, a user overriding)
# The ONNX paths calibrated at first use. onnx-int8-block (MatMulNBits on the unfused graph) is left out: its
# fused twin was as accurate and faster wherever measured; it stays available by name.
CALIBRATED_ONNX_PATHS = (fastpath.ONNX_INT8_SMOOTH, fastpath.ONNX_FUSED_INT8_MIXED, fastpath.ONNX_FUSED_INT8_BLOCK, fastpath.ONNX_INT8,
                         fastpath.ONNX_INT8_MIXED, fastpath.ONNX_FUSED_FP32, fastpath.ONNX_FP32)
_load_lock = threading.Lock()
_export_lock = threading.Lock()


@dataclass
class EmbedConfig:
    model: str = BUNDLED_EMBEDDER  # the bundled all-MiniLM-L6-v2, or any sentence-transformers id or path
    max_tokens: int = 128  # truncation in word pieces; MiniLM was trained on <= 128 (see module docstring)
    # 16: interleaved on 400 MedQuAD paragraphs, onnx-int8-smooth ran 4.5-4.7x plain at 16 and 4.1-4.2x at 64
    # (activations stay in cache), torch fp32 54 against 45/s, torch bf16 the same at either
    batch_size: int = 16


def model_key(cfg: EmbedConfig, path: str) -> str:
    """The cache key of a configuration: a vector is reusable only for the same model, truncation and path (for
    `onnx-int8-smooth`, the same smoothing statistics)."""
    if path == fastpath.ONNX_INT8_SMOOTH:
        path = f"{path}@{smoothing_digest(cfg.model)}"
    return f"{cfg.model}|max_tokens={cfg.max_tokens}|{path}|{EMBED_SCHEME}"


def resolve_embedder(name: str) -> str:
    if name == BUNDLED_EMBEDDER:
        return str(minilm_path())
    offline_by_default()
    return name


@cache
def load_embedder(name: str):  # -> sentence_transformers.SentenceTransformer
    offline_by_default()
    from sentence_transformers import SentenceTransformer

    with _load_lock:
        try:
            return SentenceTransformer(resolve_embedder(name), device="cpu")
        except (OSError, ValueError) as exc:
            raise ModelUnavailable(
                f"embedding model {name!r} is neither a local sentence-transformers folder nor reachable on a hub "
                f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}): {exc}"
            ) from exc


def embedding_dimension(model: Any) -> int:
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter() or 0)


def bf16_is_native() -> bool:
    return fastpath.bf16_is_native()


# --- ONNX --------------------------------------------------------------------------------------------------------
def _pooling_mode(model: Any) -> str | None:
    """'mean' or 'cls' for a plain transformer + pooling (+ normalize) model, the shapes the export reproduces;
    None for anything else (those models keep the torch paths)."""
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    if len(modules) < 2 or names[0] != "Transformer" or names[1] != "Pooling" \
            or any(n != "Normalize" for n in names[2:]):
        return None
    mode = getattr(modules[1], "pooling_mode", None) or modules[1].get_pooling_mode_str()
    return mode if mode in ("mean", "cls") else None


def _onnx_source(name: str) -> Path | None:
    path = Path(resolve_embedder(name))
    return path if path.is_dir() else None


def onnx_file(name: str, path: str, calibration_texts: Sequence[str] = ()) -> Path | None:
    """The ONNX export of a local embedding model for `path` (any of `fastpath.ONNX_PATHS`), made on first need
    and cached under STUDIO_CACHE; None where the model is not a local transformer + mean/cls pooling model or
    onnxruntime is missing. `onnx-int8-smooth` is made once per model from the statistics shipped for it
    (SHIPPED_SMOOTHING), else from the activations of `calibration_texts` (the first calibration's; at least
    MIN_CALIBRATION_TEXTS distinct texts); its vectors' cache key names them (`smoothing_digest`)."""
    source = _onnx_source(name)
    model = load_embedder(name)
    mode = _pooling_mode(model)
    if source is None or mode is None or not fastpath.onnx_available():
        return None
    folder = fastpath.onnx_dir("embed-" + source.name, source)
    if path == fastpath.ONNX_INT8_SMOOTH and not _smoothing_is_current(name, folder):
        # left by an interrupted run, or made from other statistics or by another recipe: made again
        fastpath.remove_variant(folder, path)
        (folder / SMOOTHING_FILE).unlink(missing_ok=True)
    return fastpath.onnx_variant(folder, path, lambda tmp: _export(model, source, mode, tmp), sensitive_matmuls,
                                 fuse=lambda src, tmp: _fuse(model, src, tmp),
                                 smooth_maxima=lambda src: _smoothing_maxima(model, src, calibration_texts, folder,
                                                                             SHIPPED_SMOOTHING.get(name)),
                                 smooth_block=lambda src: sensitive_matmuls(src, SMOOTH_BLOCK_DOWNS))


def _smoothing_maxima(model: Any, source: Path, texts: Sequence[str], folder: Path,
                      shipped: Path | None = None) -> dict[str, np.ndarray]:
    """The activation maxima `onnx-int8-smooth` is made from, recorded in SMOOTHING_FILE with their digest: those
    `shipped` with the studio for this model where they name every activation of its export, else measured on
    SMOOTHING_TEXTS of `texts` (spread over their lengths, truncated like the default configuration)."""
    if shipped is not None and (maxima := _shipped_maxima(shipped, source)) is not None:
        origin = f"shipped: {shipped.name}"
    else:
        distinct = list(dict.fromkeys(texts))
        if len(distinct) < MIN_CALIBRATION_TEXTS:
            raise ValueError(f"{fastpath.ONNX_INT8_SMOOTH} is made from the activations of {MIN_CALIBRATION_TEXTS}+ "
                             f"calibration texts; {len(distinct)} given")
        sample = fastpath.calibration_sample(distinct, SMOOTHING_TEXTS)
        maxima = measure_smoothing_maxima(model, source, sample)
        origin = f"{len(sample)} calibration texts"
    record = {"digest": fastpath.smoothing_digest(maxima, SMOOTHING_RECIPE), "statistics": origin,
              "recipe": SMOOTHING_RECIPE}
    (folder / SMOOTHING_FILE).write_text(json.dumps(record), encoding="utf-8")
    return maxima


@cache
def _shipped_maxima(shipped: Path, source: Path) -> dict[str, np.ndarray] | None:
    """The statistics in `shipped` where the file exists and names every activation of the export `source`
    (another exporter may name them otherwise); None else. Read once per process."""
    if not shipped.exists():
        return None
    maxima = read_smoothing_maxima(shipped)
    return maxima if set(fastpath.matmul_activations(source)) <= set(maxima) else None


def _smoothing_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / SMOOTHING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("digest") else None


def _smoothing_is_current(name: str, folder: Path) -> bool:
    """Whether the onnx-int8-smooth variant in `folder` was made by this recipe and, where the shipped statistics
    fit the model's export, from them (where they do not fit, from calibration texts, once)."""
    record = _smoothing_record(folder)
    if record is None or record.get("recipe") != SMOOTHING_RECIPE:
        return False
    shipped, source = SHIPPED_SMOOTHING.get(name), folder / "model.onnx"
    expected = _shipped_maxima(shipped, source) if shipped is not None and source.exists() else None
    return expected is None or record["digest"] == fastpath.smoothing_digest(expected, SMOOTHING_RECIPE)


def measure_smoothing_maxima(model: Any, source: Path, texts: Sequence[str],
                             max_tokens: int = EmbedConfig.max_tokens) -> dict[str, np.ndarray]:
    """max |x_j| per channel of every weight MatMul's activation in the ONNX export `source` over `texts`."""
    wanted = list(model.tokenizer.model_input_names)

    def feeds() -> Any:
        for start in range(0, len(texts), 8):
            enc = model.tokenizer(list(texts[start:start + 8]), padding=True, truncation=True,
                                  max_length=max_tokens, return_tensors="np")
            yield {k: enc[k].astype(np.int64) for k in wanted}, enc["attention_mask"].astype(bool)

    return fastpath.activation_maxima(source, feeds())


def write_smoothing_maxima(maxima: dict[str, np.ndarray], target: Path, texts: int) -> Path:
    """Smoothing statistics as shipped in SHIPPED_SMOOTHING (names, sizes, values; `texts`: how many measured)."""
    names = sorted(maxima)
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(target, names=np.array(names), sizes=np.array([len(maxima[n]) for n in names]),
                        values=np.concatenate([maxima[n] for n in names]).astype(np.float32),
                        texts=np.array(texts))
    return target


def read_smoothing_maxima(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        bounds = np.cumsum(np.concatenate([[0], data["sizes"]]))
        return {str(name): data["values"][bounds[i]:bounds[i + 1]] for i, name in enumerate(data["names"])}


def smoothing_digest(name: str) -> str | None:
    """The digest of the statistics `onnx-int8-smooth` was made from for this model; None before it is made."""
    source = _onnx_source(name)
    if source is None:
        return None
    record = _smoothing_record(fastpath.onnx_dir("embed-" + source.name, source))
    return str(record["digest"]) if record else None


def onnx_supported(name: str) -> bool:
    return _onnx_source(name) is not None and _pooling_mode(load_embedder(name)) is not None \
        and fastpath.onnx_available()


def sensitive_matmuls(model_path: Path, first_downs: int = 0) -> list[str]:
    """The weight MatMuls int8 hurts most (measured on all-MiniLM-L6-v2): those of the first layer (everything
    before the first FFN output projection) and every FFN output projection (input wider than output: its
    input, after GELU, has the outliers that per-tensor activation quantisation handles worst). With
    `first_downs`, only the first that many FFN output projections: those smoothing leaves least accurate."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer}
    names = set(fastpath.weight_matmuls(model_path))
    out, first_layer = [], True
    for node in model.graph.node:
        if node.name not in names:
            continue
        k, n = (shapes[node.input[1]] + (0, 0))[:2]
        down = k > n
        if (down if first_downs else first_layer or down):
            out.append(node.name)
        first_layer = first_layer and not down
    return out[:first_downs] if first_downs else out


def _fuse(model: Any, source: Path, target: Path) -> None:
    """ONNX Runtime's offline BERT optimizer (python fusions only, opt_level 0: the session optimizes the rest on
    load, for the CPU it runs on): Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = model[0].auto_model.config
    options = FusionOptions("bert")
    fused = optimize_model(str(source), model_type="bert", num_heads=config.num_attention_heads,
                           hidden_size=config.hidden_size, optimization_options=options, opt_level=0)
    fused.save_model_to_file(str(target))


def _export(model: Any, source: Path, mode: str, target: Path) -> None:
    """torch.onnx (TorchScript exporter: the dynamo one needs onnxscript) of encoder + pooling + L2 norm."""
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()
    inputs = list(model.tokenizer.model_input_names)

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            kwargs = dict(zip(inputs, args, strict=True))
            hidden = self.encoder(**kwargs).last_hidden_state
            if mode == "cls":
                pooled = hidden[:, 0]
            else:
                mask = kwargs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    sample = model.tokenizer(["an example sentence", "two"], padding=True, return_tensors="pt")
    axes = {k: {0: "batch", 1: "tokens"} for k in inputs} | {"embedding": {0: "batch"}}
    with torch.inference_mode():
        torch.onnx.export(Pooled().eval(), tuple(sample[k] for k in inputs), str(target), dynamo=False,
                          input_names=inputs, output_names=["embedding"], dynamic_axes=axes, opset_version=17)


def encode_onnx_file(model: Any, file: Path, texts: list[str], cfg: EmbedConfig) -> np.ndarray:
    """One batch of `texts` through an ONNX export of the embedder (`file`: any of its paths' variants)."""
    session = fastpath.onnx_session(str(file))
    wanted = [i.name for i in session.get_inputs()]
    enc = model.tokenizer(texts, padding=True, truncation=True, max_length=cfg.max_tokens, return_tensors="np")
    return session.run(None, {k: enc[k].astype(np.int64) for k in wanted})[0]


# --- choosing and running a path ---------------------------------------------------------------------------------
def calibrate(cfg: EmbedConfig, texts: Sequence[str], paths: Sequence[str] | None = None,
              progress: Progress = no_progress) -> PathChoice:
    """Time every candidate path on a sample of `texts` and keep the fastest whose min cosine to fp32 is at
    least AGREEMENT_BOUND (not stored: see `choose_path`)."""
    sample = fastpath.calibration_sample(texts, CALIBRATION_TEXTS)
    paths = list(paths) if paths is not None else fastpath.candidate_paths(onnx_supported(cfg.model),
                                                                           CALIBRATED_ONNX_PATHS)
    if fastpath.ONNX_INT8_SMOOTH in paths:
        # smoothing statistics from texts outside the sample, so its agreement is measured on unseen text
        shown = set(sample)
        held_out = [t for t in dict.fromkeys(texts) if t not in shown]
        with suppress(ValueError):  # too few texts: its trial fails with the reason and it is not chosen
            onnx_file(cfg.model, fastpath.ONNX_INT8_SMOOTH,
                      held_out if len(held_out) >= MIN_CALIBRATION_TEXTS else sample)
    trials = fastpath.run_trials(
        paths, len(sample), lambda path, warm: encode_uncached(sample[-4:] if warm else sample, cfg, path=path),
        agreement=lambda ref, vec: float((ref * vec).sum(axis=1).min()),
        accept=lambda cosine: cosine >= AGREEMENT_BOUND, progress=lambda m: progress(-1.0, m))
    return PathChoice("embed", model_key(cfg, "*"), fastpath.select_path(trials),
                      f"min cosine >= {AGREEMENT_BOUND}", fastpath.cpu_feature_key(), trials)


def choose_path(cfg: EmbedConfig, texts: Sequence[str] = (), progress: Progress = no_progress) -> str:
    """The path this machine uses for `cfg`: forced by STUDIO_EMBED_PATH, else the cached choice for this model
    and CPU feature set, else a calibration on `texts` (stored); with too few texts to calibrate, the fp32
    reference (not stored, so a later, larger call decides)."""
    return fastpath.decide(PATH_ENV, "embed", model_key(cfg, "*"), texts, MIN_CALIBRATION_TEXTS,
                           lambda: calibrate(cfg, texts, progress=progress))


def cached_choice(cfg: EmbedConfig) -> PathChoice | None:
    return fastpath.cached_choice("embed", model_key(cfg, "*"))


def active_path(cfg: EmbedConfig) -> str:
    """The path the last `embed_texts` call for `cfg` used (and the next one will): what run params record."""
    return choose_path(cfg)


def describe_path(cfg: EmbedConfig) -> str:
    """One line for the UI: the path in use, why, and how fast it was at calibration."""
    forced = fastpath.forced_path(PATH_ENV)
    if forced:
        return f"{forced} (forced by {PATH_ENV})"
    known = cached_choice(cfg)
    if known:
        return known.describe()
    return (f"not calibrated yet on this CPU ({fastpath.cpu_feature_key()}): the first embedding of "
            f"{MIN_CALIBRATION_TEXTS}+ texts times each path and keeps the fastest with min cosine >= "
            f"{AGREEMENT_BOUND} to fp32")


def encode_uncached(texts: Sequence[str], cfg: EmbedConfig | None = None, progress: Progress = no_progress,
                    *, fast: bool = True, path: str | None = None) -> np.ndarray:
    """Embed `texts` without the workspace cache: (n, dim) float32, L2-normalised rows, in input order.

    `path` names the inference path; by default the one chosen for this machine (`choose_path`). `fast=False`
    is the plain torch fp32 encode at the same truncation (the reference paths are compared with)."""
    import torch

    cfg = cfg or EmbedConfig()
    texts = list(texts)
    model = load_embedder(cfg.model)
    dim = embedding_dimension(model)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    if path is None:
        path = choose_path(cfg, texts, progress) if fast else TORCH_FP32
    file = onnx_file(cfg.model, path, texts) if path in ONNX_PATHS else None
    if path in ONNX_PATHS and file is None:
        raise ValueError(f"path {path} needs a local transformer + mean/cls pooling model; {cfg.model!r} is not one")
    model.max_seq_length = cfg.max_tokens
    autocast: Any = torch.autocast("cpu", dtype=torch.bfloat16) if path == TORCH_BF16 else nullcontext()
    # Sort globally by length so each batch holds similar lengths (little padding); chunks of a few batches
    # keep progress moving.
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), dim), dtype=np.float32)
    chunk = cfg.batch_size * 8
    with torch.inference_mode(), autocast:
        for start in range(0, len(texts), chunk):
            idx = order[start:start + chunk]
            if file is not None:
                for b in range(0, len(idx), cfg.batch_size):
                    part = idx[b:b + cfg.batch_size]
                    out[part] = encode_onnx_file(model, file, [texts[i] for i in part], cfg)
            else:
                vectors = model.encode([texts[i] for i in idx], batch_size=cfg.batch_size, convert_to_tensor=True,
                                       normalize_embeddings=False, show_progress_bar=False)
                out[idx] = torch.nn.functional.normalize(vectors.float(), dim=-1).numpy()
            done = min(start + chunk, len(texts))
            progress(done / len(texts), f"embedded {done:,} / {len(texts):,} texts ({path})")
    return out


def register_arrow(ws: Workspace, name: str, table: pa.Table) -> None:
    """`con.register`, after finishing any result a caller left half-read (DuckDB 2 refuses to register while
    a `fetchone()` result is pending, e.g. after `Workspace.scalar`)."""
    ws.con.execute("SELECT 1").fetchall()
    ws.con.register(name, table)


def _cached_vectors(ws: Workspace, key: str, hashes: list[str]) -> dict[str, np.ndarray]:
    register_arrow(ws, "embed_lookup", pa.table({"text_hash": pa.array(sorted(set(hashes)), pa.string())}))
    try:
        table = ws.con.sql(
            "SELECT e.text_hash, e.vector FROM embeddings e JOIN embed_lookup l USING (text_hash) "
            "WHERE e.model_key = ?", params=[key]).to_arrow_table()
    finally:
        ws.con.unregister("embed_lookup")
    if table.num_rows == 0:
        return {}
    vectors = table.column("vector").combine_chunks()
    flat = vectors.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    matrix = flat.reshape(table.num_rows, -1)
    return dict(zip(table.column("text_hash").to_pylist(), matrix, strict=True))


def _store_vectors(ws: Workspace, key: str, hashes: list[str], vectors: np.ndarray) -> None:
    if ws.read_only or not hashes:
        return
    dim = vectors.shape[1]
    values = pa.array(vectors.reshape(-1), pa.float32())
    offsets = pa.array(np.arange(0, (len(hashes) + 1) * dim, dim, dtype=np.int32))
    table = pa.table({"text_hash": pa.array(hashes, pa.string()),
                      "vector": pa.ListArray.from_arrays(offsets, values)})
    register_arrow(ws, "embed_new", table)
    try:
        ws.con.execute(
            "INSERT INTO embeddings (model_key, text_hash, dim, vector) "
            "SELECT ?, n.text_hash, ?, n.vector FROM embed_new n "
            "WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model_key = ? AND e.text_hash = n.text_hash)",
            [key, dim, key])
    finally:
        ws.con.unregister("embed_new")


def embed_texts(ws: Workspace | None, texts: Sequence[str], cfg: EmbedConfig | None = None,
                progress: Progress = no_progress, *, path: str | None = None) -> np.ndarray:
    """(n, dim) float32 L2-normalised embeddings of `texts`, in input order, from `path` (default: the path
    chosen for this machine, see `choose_path`). With a workspace, vectors are
    read from and written to its `embeddings` table: only texts never embedded with this model, truncation and
    path are computed (each distinct text once)."""
    cfg = cfg or EmbedConfig()
    texts = list(texts)
    path = path or choose_path(cfg, texts, progress)
    if ws is None or not texts:
        return encode_uncached(texts, cfg, progress, path=path)
    if path == fastpath.ONNX_INT8_SMOOTH:
        onnx_file(cfg.model, path, texts)  # its cache key names its statistics: made (once) before the key
    key = model_key(cfg, path)
    hashes = [raw_hash(t) for t in texts]
    known = _cached_vectors(ws, key, hashes)
    missing: dict[str, str] = {}
    for h, t in zip(hashes, texts, strict=True):
        if h not in known and h not in missing:
            missing[h] = t
    if missing:
        progress(0.0, f"{len(known):,} cached, embedding {len(missing):,} texts")
        new_hashes = list(missing)
        # Store in slices so an interrupted long run keeps what it computed.
        slice_size = max(cfg.batch_size * 32, 1)
        for start in range(0, len(new_hashes), slice_size):
            part = new_hashes[start:start + slice_size]

            def sub(fraction: float, message: str, start: int = start, n: int = len(part)) -> None:
                progress((start + fraction * n) / len(new_hashes),
                         f"embedded {start + int(fraction * n):,} / {len(new_hashes):,} new texts")

            vectors = encode_uncached([missing[h] for h in part], cfg, sub, path=path)
            _store_vectors(ws, key, part, vectors)
            known.update(zip(part, vectors, strict=True))
    progress(1.0, f"{len(texts):,} embeddings ready ({len(missing):,} computed, {path})")
    return np.stack([known[h] for h in hashes]).astype(np.float32, copy=False)


def embed_documents(ws: Workspace, doc_ids: Sequence[str], cfg: EmbedConfig | None = None,
                    progress: Progress = no_progress, *, path: str | None = None) -> np.ndarray:
    """Embeddings of documents by id, in the order given (cached like `embed_texts`)."""
    doc_ids = list(doc_ids)
    register_arrow(ws, "embed_docs", pa.table({"doc_id": pa.array(doc_ids, pa.string()),
                                            "pos": pa.array(np.arange(len(doc_ids), dtype=np.int64))}))
    try:
        table = ws.con.sql(
            "SELECT q.pos, d.text FROM embed_docs q JOIN documents d USING (doc_id) ORDER BY q.pos"
        ).to_arrow_table()
    finally:
        ws.con.unregister("embed_docs")
    if table.num_rows != len(doc_ids):
        found = set(ws.con.execute("SELECT doc_id FROM documents WHERE doc_id IN (SELECT unnest(?))",
                                   [doc_ids]).fetchall())
        unknown = [d for d in doc_ids if (d,) not in found][:5]
        raise ValueError(f"unknown document ids: {', '.join(unknown)}")
    return embed_texts(ws, table.column("text").to_pylist(), cfg, progress, path=path)


# --- nearest neighbours ---------------------------------------------------------------------------------------
IndexKind = Literal["exact", "ivf", "hnsw"]


def build_index(vectors: np.ndarray, exact_limit: int = 100_000, nprobe: int = 32, seed: int = 0,
                approximate: Literal["ivf", "hnsw"] = "ivf", ef_search: int = 64) -> tuple[Any, IndexKind]:
    """(faiss index over `vectors` by inner product, its kind). The one switch-over rule: up to `exact_limit`
    vectors an exact flat index; above it an approximate one, IVF (recall: trained on a seeded sample, `nprobe`
    lists searched) or HNSW (semantic dedup: M=32, `ef_search`), since exact search grows as n²."""
    import faiss

    n, dim = vectors.shape
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if n <= exact_limit:
        index: Any = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, "exact"
    if approximate == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = ef_search
        index.add(vectors)
        return index, "hnsw"
    nlist = max(int(4 * math.sqrt(n)), 16)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = vectors[rng.choice(n, size=min(n, 64 * nlist), replace=False)]
    index.train(train)
    index.add(vectors)
    index.nprobe = nprobe
    return index, "ivf"


def search(index: Any, queries: np.ndarray, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices) of the top-k, in query batches (bounded memory)."""
    sims, ids = [], []
    for start in range(0, len(queries), batch):
        s, i = index.search(np.ascontiguousarray(queries[start:start + batch], dtype=np.float32), k)
        sims.append(s)
        ids.append(i)
    if not sims:
        return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
    return np.concatenate(sims), np.concatenate(ids)
