"""Sentence embeddings for semantic dedup and recall, cached in the workspace by model and text hash.

Embedding is the slowest step of curation on a CPU (plain sentence-transformers encode of all-MiniLM-L6-v2
manages ~30 paragraphs/s on 2 cores), so this module makes it fast in three ways and then avoids it:

- truncation to `max_tokens=128` word pieces: all-MiniLM-L6-v2 was trained on sequences of at most 128 tokens
  (its model card), so the default 256 costs twice the attention for text the model never learnt to read;
- bf16 autocast where the CPU computes bf16 natively (AVX512-BF16 / AMX, checked through oneDNN): ~2.5x faster,
  cosine to the fp32 vectors > 0.9999 (tested); fp32 elsewhere, where bf16 would be emulated and slower;
- length-sorted batches (sentence-transformers sorts by length) so little compute goes to padding.

Dynamic int8 quantisation (torch.ao) was measured too and rejected: ~2.3x faster than fp32 but the cosine to
fp32 fell to 0.91 on MedQuAD paragraphs (0.97 per-channel). ONNX export needs the `onnx` package, not installed.

Vectors are stored in the workspace table `embeddings` keyed by (model_key, text_hash) where the model key
includes `max_tokens` and the text hash is `core.text.raw_hash`, so a re-run, a threshold change or another step
(semantic dedup, recall) never embeds an unchanged text twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa

from core.models import BUNDLED_EMBEDDER, ModelUnavailable, minilm_path, offline_by_default
from core.progress import Progress, no_progress
from core.text import raw_hash
from core.workspace import Workspace

# Bump when the way vectors are computed changes in a way that changes them (pooling, precision policy).
EMBED_SCHEME = "v1"
_load_lock = threading.Lock()


@dataclass
class EmbedConfig:
    model: str = BUNDLED_EMBEDDER  # the bundled all-MiniLM-L6-v2, or any sentence-transformers id or path
    max_tokens: int = 128  # truncation in word pieces; MiniLM was trained on <= 128 (see module docstring)
    batch_size: int = 64


def model_key(cfg: EmbedConfig) -> str:
    """The cache key of a configuration: a vector is reusable only for the same model and truncation."""
    return f"{cfg.model}|max_tokens={cfg.max_tokens}|{EMBED_SCHEME}"


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


@cache
def bf16_is_native() -> bool:
    """True where oneDNN runs bf16 matmuls in hardware; elsewhere bf16 is emulated and slower than fp32."""
    import torch

    if os.environ.get("STUDIO_EMBED_FP32") == "1":
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def encode_uncached(texts: Sequence[str], cfg: EmbedConfig | None = None, progress: Progress = no_progress,
                    *, fast: bool = True) -> np.ndarray:
    """Embed `texts` without the workspace cache: (n, dim) float32, L2-normalised rows, in input order.

    `fast=False` is the plain fp32 encode at the same truncation (the reference the fast path is tested and
    benchmarked against)."""
    import torch

    cfg = cfg or EmbedConfig()
    model = load_embedder(cfg.model)
    dim = embedding_dimension(model)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    model.max_seq_length = cfg.max_tokens
    autocast: Any = torch.autocast("cpu", dtype=torch.bfloat16) if fast and bf16_is_native() else nullcontext()
    # sentence-transformers sorts by length inside one encode call; chunks of a few batches keep progress
    # moving while still sorting within each chunk. Sort globally first so chunks hold similar lengths.
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), dim), dtype=np.float32)
    chunk = cfg.batch_size * 8
    with torch.inference_mode(), autocast:
        for start in range(0, len(texts), chunk):
            idx = order[start:start + chunk]
            vectors = model.encode([texts[i] for i in idx], batch_size=cfg.batch_size, convert_to_tensor=True,
                                   normalize_embeddings=False, show_progress_bar=False)
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
            out[idx] = vectors.numpy()
            done = min(start + chunk, len(texts))
            progress(done / len(texts), f"embedded {done:,} / {len(texts):,} texts")
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
                progress: Progress = no_progress) -> np.ndarray:
    """(n, dim) float32 L2-normalised embeddings of `texts`, in input order. With a workspace, vectors are
    read from and written to its `embeddings` table: only texts never embedded with this model and truncation
    are computed (each distinct text once)."""
    cfg = cfg or EmbedConfig()
    texts = list(texts)
    if ws is None or not texts:
        return encode_uncached(texts, cfg, progress)
    key = model_key(cfg)
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

            vectors = encode_uncached([missing[h] for h in part], cfg, sub)
            _store_vectors(ws, key, part, vectors)
            known.update(zip(part, vectors, strict=True))
    progress(1.0, f"{len(texts):,} embeddings ready ({len(missing):,} computed)")
    return np.stack([known[h] for h in hashes]).astype(np.float32, copy=False)


def embed_documents(ws: Workspace, doc_ids: Sequence[str], cfg: EmbedConfig | None = None,
                    progress: Progress = no_progress) -> np.ndarray:
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
    return embed_texts(ws, table.column("text").to_pylist(), cfg, progress)
