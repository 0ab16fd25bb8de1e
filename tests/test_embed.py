"""The shared embedding module: the fast path agrees with the plain encode, the cache never re-embeds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core import embed
from core.embed import EmbedConfig, embed_documents, embed_texts, encode_uncached, model_key
from core.workspace import Workspace

pytestmark = pytest.mark.slow  # loads the bundled all-MiniLM-L6-v2


def _paragraphs(data_dir: Path, name: str, n: int) -> list[str]:
    with open(data_dir / name, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh, strict=False)]


def test_fast_path_agrees_with_plain_sentence_transformers(data_dir: Path) -> None:
    texts = (_paragraphs(data_dir, "medquad/corpus_en_medquad_nih_paragraphs.jsonl", 48)
             + _paragraphs(data_dir, "chinese_medical_dialogue/corpus_zh_medical_dialogue_answers.jsonl", 16))
    cfg = EmbedConfig()
    fast = encode_uncached(texts, cfg, fast=True)
    # The reference: sentence-transformers' own encode, fp32, at the same truncation.
    model = embed.load_embedder(cfg.model)
    model.max_seq_length = cfg.max_tokens
    plain = model.encode(texts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    assert fast.shape == plain.shape == (64, 384)
    assert fast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    cosine = (fast * plain).sum(axis=1)
    # Row by row, so this also checks that the length-sorted batches come back in input order.
    assert cosine.min() > 0.99, f"fast path drifted: min cosine {cosine.min():.4f}"


def test_cache_computes_only_misses(data_dir: Path, empty_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = _paragraphs(data_dir, "medicalgpt/corpus_zh_medical_textbook_fever.jsonl", 40)
    cfg = EmbedConfig(batch_size=16)
    first = embed_texts(empty_ws, texts, cfg)
    distinct = len(set(texts))
    assert empty_ws.scalar("SELECT count(*) FROM embeddings WHERE model_key = ?",
                           [model_key(cfg, embed.active_path(cfg))]) == distinct

    computed: list[int] = []
    real = embed.encode_uncached

    def counting(batch, *args, **kwargs):
        computed.append(len(batch))
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(embed, "encode_uncached", counting)
    extra = _paragraphs(data_dir, "medicalgpt/corpus_zh_medical_textbook_fever.jsonl", 45)[40:]
    again = embed_texts(empty_ws, list(reversed(texts)) + extra, cfg)
    assert sum(computed) == len(set(extra) - set(texts))
    np.testing.assert_allclose(again[: len(texts)], first[::-1], atol=1e-6)
    # Another truncation is another model key: nothing is reused across it.
    short = embed_texts(empty_ws, texts[:3], EmbedConfig(max_tokens=32))
    assert short.shape == (3, 384) and sum(computed) > len(set(extra) - set(texts))


def test_embed_documents_in_order(ws_copy: Path) -> None:
    with Workspace.open(ws_copy) as ws:
        ids = [r[0] for r in ws.query("SELECT doc_id FROM documents WHERE corpus = 'medical_rag_qa_zh' "
                                      "ORDER BY doc_id LIMIT 12")]
        texts = [ws.scalar("SELECT text FROM documents WHERE doc_id = ?", [i]) for i in ids]
        by_id = embed_documents(ws, list(reversed(ids)))
        by_text = embed_texts(None, texts)
        np.testing.assert_allclose(by_id[::-1], by_text, atol=1e-5)
        with pytest.raises(ValueError, match="unknown document ids"):
            embed_documents(ws, ["no-such-doc"])
