"""Reading a dedup run's results back, without recomputing anything: its stored pairs, what another threshold
would drop (the same comparison as the applied run, `core.minhash.reaches`), the pairs either side of a
threshold, the clusters and their members, and what the exact method's normalisation makes of a text."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from core.corpus import document_texts
from core.minhash import SIMILARITY_TOLERANCE, removal_count
from core.text import NormalisationConfig, normalise
from core.workspace import Workspace


def stored_pairs(ws: Workspace, run_id: str) -> pa.Table:
    return ws.con.sql(
        """SELECT p.doc_a, p.doc_b, p.similarity, da.corpus AS corpus_a, db.corpus AS corpus_b
           FROM dedup_pairs p JOIN documents da ON da.doc_id = p.doc_a JOIN documents db ON db.doc_id = p.doc_b
           WHERE p.run_id = ?""", params=[run_id]).to_arrow_table()


def what_if(ws: Workspace, run_id: str, threshold: float) -> int:
    """Documents a run's stored pairs would drop at another threshold (no recomputation)."""
    # DuckDB numbers the documents, so the pairs reach numpy as integers (not 2 x pairs Python strings to sort).
    table = ws.con.sql(
        """WITH p AS (SELECT doc_a, doc_b, similarity FROM dedup_pairs WHERE run_id = $run),
                ids AS (SELECT doc_id, row_number() OVER () AS k
                        FROM (SELECT doc_a AS doc_id FROM p UNION SELECT doc_b FROM p))
           SELECT ia.k AS a, ib.k AS b, p.similarity
           FROM p JOIN ids ia ON ia.doc_id = p.doc_a JOIN ids ib ON ib.doc_id = p.doc_b""",
        params={"run": run_id}).to_arrow_table()
    return removal_count(table.column("a").to_numpy(), table.column("b").to_numpy(),
                         table.column("similarity").to_numpy(), threshold)


def boundary_pairs(ws: Workspace, run_id: str, threshold: float, n: int = 3) -> dict[str, list[dict[str, Any]]]:
    """The `n` stored pairs just at/above and just below `threshold`, with their texts (read for the picked
    pairs only: joining every stored pair to its texts cost the Dedup page half a second on 1M documents)."""
    keys = ("doc_a", "doc_b", "similarity", "corpus_a", "corpus_b")
    sides: dict[str, list[dict[str, Any]]] = {}
    for side, cond, order in (("above", ">=", "ASC"), ("below", "<", "DESC")):
        rows = ws.query(
            f"""SELECT p.doc_a, p.doc_b, p.similarity, da.corpus, db.corpus
                FROM (SELECT * FROM dedup_pairs WHERE run_id = ? AND similarity {cond} ?
                      ORDER BY similarity {order}, doc_a LIMIT ?) p
                JOIN documents da ON da.doc_id = p.doc_a JOIN documents db ON db.doc_id = p.doc_b
                ORDER BY p.similarity {order}, p.doc_a""",
            [run_id, threshold - SIMILARITY_TOLERANCE, n])  # the sides `reaches` draws
        sides[side] = [dict(zip(keys, r, strict=True)) for r in rows]
    texts = document_texts(ws, [pair[k] for pairs in sides.values() for pair in pairs for k in ("doc_a", "doc_b")])
    return {side: [{**pair, "text_a": texts[pair["doc_a"]], "text_b": texts[pair["doc_b"]]} for pair in pairs]
            for side, pairs in sides.items()}


def clusters(ws: Workspace, run_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """Clusters of a run, largest first: kept document, size and corpora (and the kept document's text)."""
    rows = ws.query(
        """SELECT c.kept_doc, max(c.cluster_size) AS size, min(c.similarity_to_kept) AS min_similarity,
                  string_agg(DISTINCT d.corpus, ', ') AS corpora
           FROM dedup_clusters c JOIN documents d USING (doc_id)
           WHERE c.run_id = ? GROUP BY c.kept_doc ORDER BY size DESC, c.kept_doc LIMIT ?""", [run_id, limit])
    texts = document_texts(ws, [r[0] for r in rows])
    keys = ("kept_doc", "size", "min_similarity", "corpora")
    return [{**dict(zip(keys, r, strict=True)), "kept_text": texts.get(r[0])} for r in rows]


def cluster_members(ws: Workspace, run_id: str, kept_doc: str) -> list[dict[str, Any]]:
    rows = ws.query(
        """SELECT c.doc_id, c.is_kept, c.similarity_to_kept, d.corpus FROM dedup_clusters c
           JOIN documents d USING (doc_id) WHERE c.run_id = ? AND c.kept_doc = ?
           ORDER BY c.is_kept DESC, c.similarity_to_kept DESC""", [run_id, kept_doc])
    texts = document_texts(ws, [r[0] for r in rows])
    keys = ("doc_id", "is_kept", "similarity_to_kept", "corpus")
    return [{**dict(zip(keys, r, strict=True)), "text": texts[r[0]]} for r in rows]


def normalisation_preview(text: str, cfg: NormalisationConfig | None = None) -> str:
    return normalise(text, cfg or NormalisationConfig())
