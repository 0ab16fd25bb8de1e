"""Deduplication: exact (normalised hash), MinHash near-duplicates (LSH over stored signatures) and semantic
duplicates (cached embeddings, FAISS neighbours).

Every method works the same way: find pairs of documents with a similarity, keep the pairs at or above a *floor*
(lower than the threshold) in `dedup_pairs`, cluster the pairs at or above the *threshold* with union-find
(connected components), keep one representative per cluster by a policy, and record every other member as a
'drop' decision naming the method, the kept document and the similarity. The stored pairs let the page move the
threshold and count what would go without recomputing anything.

MinHash signatures live in `dedup_signatures` keyed by a scheme (library, permutations, n-gram size, seed) and the
document, and band hashes in `dedup_bands`: a later run (a new corpus against an already curated one, or another
threshold) computes signatures only for documents that lack them, and candidates come from a DuckDB self-join on
band hashes, so clustering does not need every signature in memory at once.

Signatures are computed with `rensa` (Rust, R-MinHash): measured in `bench/dedup.py` against datasketch's fastest
path (`MinHash.bulk`) on the same shingles with the same number of permutations; its estimates have the same error
as classic MinHash (std sqrt(J(1-J)/num_perm)), which the tests check against exact Jaccard.

Three modules: `core.minhash` holds the algorithms (shingles, signatures, LSH shape, clustering, the threshold
comparison), this one the workspace side (selecting documents, stored signatures and bands, recording the run),
`core.dedup_review` the queries that read a run back for the page. This module re-exports the other two's names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from core.dedup_review import (
    boundary_pairs,
    cluster_members,
    clusters,
    normalisation_preview,
    stored_pairs,
    what_if,
)
from core.embed import EmbedConfig, active_path, build_index, embed_documents, register_arrow, search
from core.flow import scope_sql
from core.minhash import (
    FALSE_POSITIVE_WEIGHT,
    MINHASH_SEED,
    RECALL_MARGIN,
    RECALL_TARGET,
    SIMILARITY_TOLERANCE,
    candidate_probability,
    connected_components,
    jaccard_estimate,
    minhash_scheme,
    optimal_bands_rows,
    reaches,
    removal_count,
    shingle_hashes,
    shingles,
    signatures,
    signatures_from_hashes,
    signatures_from_shingles,
    tokens_for,
)
from core.progress import Progress, no_progress
from core.steps import Step, config_from_recipe, param, validate_fields
from core.text import NormalisationConfig, content_hash
from core.workspace import ROLES, Workspace, WorkspaceError

# Public names: this module's own, and (re-exported, so `core.dedup` keeps them) the algorithms of `core.minhash`
# and the review queries of `core.dedup_review`.
__all__ = [
    "DEFAULT_ROLES",
    "DEMO_METHODS",
    "DEFAULT_THRESHOLDS",
    "DedupConfig",
    "DedupResult",
    "EXACT_INDEX_MAX",
    "FALSE_POSITIVE_WEIGHT",
    "METHODS",
    "MINHASH_SEED",
    "POLICIES",
    "POLICY_ALIASES",
    "REGISTERED_STEP",
    "RECALL_MARGIN",
    "RECALL_TARGET",
    "SCOPES",
    "SIMILARITY_TOLERANCE",
    "boundary_pairs",
    "candidate_probability",
    "cluster_members",
    "clusters",
    "connected_components",
    "deduplicate",
    "recipe_configs",
    "ensure_bands",
    "ensure_signatures",
    "jaccard_estimate",
    "minhash_scheme",
    "normalisation_preview",
    "optimal_bands_rows",
    "reaches",
    "removal_count",
    "shingle_hashes",
    "shingles",
    "signatures",
    "signatures_from_hashes",
    "signatures_from_shingles",
    "step_name",
    "stored_pairs",
    "tokens_for",
    "what_if",
]

Method = Literal["exact", "minhash", "semantic"]
METHODS: tuple[str, ...] = ("exact", "minhash", "semantic")
DEMO_METHODS: tuple[str, ...] = ("exact", "minhash")  # a recipe's dedup step without `methods`
# The similarity at or above which two documents are duplicates, when the config names none.
DEFAULT_THRESHOLDS = {"exact": 1.0, "minhash": 0.8, "semantic": 0.95}
SCOPES = ("all", "role", "corpus")  # which documents may be duplicates of each other
# Which member of a cluster is kept (of those the steps before this one left): the first ingested, the longest,
# or the best by the stored quality composite (DataTrove and NeMo Curator offer the same choices).
POLICIES = ("first", "longest", "best_quality")
POLICY_ALIASES = {"quality": "best_quality"}  # the name runs recorded before `best_quality`
DEFAULT_ROLES = ("domain", "general", "instruction")  # benchmarks are decontamination's business, not dedup's
# Above this many documents semantic dedup uses an approximate FAISS index (HNSW) instead of the exact flat one:
# exact inner-product search is O(n^2) and at 50k × 384 takes ~40 s on 2 cores; HNSW stays near-linear.
EXACT_INDEX_MAX = 50_000

def step_name(method: str) -> str:
    return f"dedup_{method}"


@dataclass
class DedupConfig:
    method: Method = param("minhash", help="which duplicates: exact, near (minhash) or semantic", choices=METHODS,
                           required=True)
    threshold: float | None = param(
        None, minimum=0.0, maximum=1.0,
        help="minhash: Jaccard similarity (default {minhash:g}); semantic: cosine (default {semantic:g})".format(
            **DEFAULT_THRESHOLDS))
    floor: float | None = param(
        None, minimum=0.0, maximum=1.0,
        help="store pairs down to this similarity for the review page's movable threshold "
             "(default threshold − 0.2 for minhash, − 0.1 for semantic)")
    scope: str = param("all", choices=SCOPES,
                       help="which documents may duplicate each other: all (across roles), within a role, "
                            "within a corpus")
    policy: str = param("first", flag="--keep", aliases=("--policy",), choices=(*POLICIES, *POLICY_ALIASES),
                        help="which member of a cluster is kept, of those the steps before this one in the flow "
                             "left: first ingested, longest, or best_quality (the stored quality composite; needs "
                             "`studio score` first)")
    keep: str | None = param(None, help="the same choice as policy under its recipe / `--keep` name; wins over "
                                        "`policy` when given", cli=False)
    roles: Sequence[str] = param(DEFAULT_ROLES, choices=ROLES,
                                 help=f"comma-separated roles to include (of {', '.join(ROLES)})")
    corpora: Sequence[str] = param((), help="comma-separated corpora to include (default: all of the roles)")
    limit: int | None = param(None, minimum=1, help="at most this many documents, in ingest order")
    # exact
    normalisation: NormalisationConfig = field(default_factory=NormalisationConfig)
    # minhash
    num_perm: int = param(128, minimum=8, group="minhash", help="permutations per signature")
    ngram: int = param(5, minimum=1, group="minhash",
                       help="shingle size: words, or characters for Chinese/Japanese documents")
    bands: int | None = param(None, minimum=1, group="minhash",
                              help="LSH bands (with --rows; default: solved for the threshold)")
    rows: int | None = param(None, minimum=1, group="minhash", help="LSH rows per band")
    # semantic
    embed_model: str = param(EmbedConfig().model, flag="--model", group="semantic", show_default=False,
                             help="sentence-transformers model id or path (default: the bundled all-MiniLM-L6-v2)")
    max_tokens: int = param(EmbedConfig().max_tokens, minimum=1, group="semantic",
                            help="truncation in word pieces")
    neighbours: int = param(10, minimum=1, group="semantic", help="nearest neighbours examined per document",
                            show_default=False)

    def __post_init__(self) -> None:
        if isinstance(self.normalisation, dict):  # from a recipe or JSON
            self.normalisation = NormalisationConfig(**self.normalisation)
        self.roles = tuple(self.roles)
        self.corpora = tuple(self.corpora)
        if self.keep is not None:
            self.policy = self.keep
        self.policy = POLICY_ALIASES.get(self.policy, self.policy)
        self.keep = self.policy

    def resolved_threshold(self) -> float:
        if self.threshold is not None:
            return float(self.threshold)
        return DEFAULT_THRESHOLDS[self.method]

    def resolved_floor(self) -> float:
        t = self.resolved_threshold()
        if self.floor is not None:
            return min(float(self.floor), t)
        return {"exact": 1.0, "minhash": max(t - 0.2, 0.3), "semantic": max(t - 0.1, 0.5)}[self.method]

    def validate(self) -> None:
        validate_fields(self)  # choices and bounds of every field
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        t = self.resolved_threshold()
        if not 0 < t <= 1:
            raise ValueError(f"threshold must be in (0, 1], not {t}")
        if (self.bands is None) != (self.rows is None):
            raise ValueError("give both bands and rows, or neither")
        if self.bands is not None and self.rows is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands × rows = {self.bands * self.rows} exceeds num_perm {self.num_perm}")

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "threshold": self.resolved_threshold(),
                               "floor": self.resolved_floor(), "scope": self.scope, "policy": self.policy,
                               "roles": list(self.roles), "corpora": list(self.corpora), "limit": self.limit}
        if self.method == "exact":
            out["normalisation"] = asdict(self.normalisation)
            out["normalisation_described"] = self.normalisation.describe()
        elif self.method == "minhash":
            bands, rows = self.lsh_shape()
            out |= {"num_perm": self.num_perm, "ngram": self.ngram, "bands": bands, "rows": rows,
                    "scheme": minhash_scheme(self.num_perm, self.ngram)}
        else:
            out |= {"embed_model": self.embed_model, "max_tokens": self.max_tokens, "neighbours": self.neighbours}
        return out

    def lsh_shape(self) -> tuple[int, int]:
        if self.bands is not None and self.rows is not None:
            return self.bands, self.rows
        return optimal_bands_rows(self.resolved_threshold(), self.num_perm)


@dataclass
class DedupResult:
    run_id: str
    method: str
    threshold: float
    documents: int
    clusters: int  # clusters with more than one member
    dropped: int
    pairs_stored: int
    by_corpus: dict[str, int]
    by_role: dict[str, int]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- selecting documents ------------------------------------------------------------------------------------
def _scope_expr(scope: str) -> str:
    return {"all": "'all'", "role": "d.role", "corpus": "d.corpus"}[scope]


def _select_documents(ws: Workspace, cfg: DedupConfig) -> pa.Table:
    """The documents this run looks at: of the chosen roles/corpora, those the steps before this method in the
    flow left (`core.flow.scope_sql`), in ingest order. So the member a cluster keeps is always one that
    survived the steps before it, and a re-run of any method gives the same result."""
    if cfg.corpora:
        known = {r[0] for r in ws.query("SELECT name FROM corpora")}
        unknown = [c for c in cfg.corpora if c not in known]
        if unknown:
            raise WorkspaceError(f"unknown corpora: {', '.join(unknown)}")
    scope, params = scope_sql(ws, step_name(cfg.method), cfg.roles or ROLES, cfg.corpora)
    limit = f"LIMIT {int(cfg.limit)}" if cfg.limit else ""
    return ws.con.sql(
        f"""
        SELECT * FROM (
            SELECT d.doc_id, d.corpus, d.role, {_scope_expr(cfg.scope)} AS grp,
                   -- ingest order: the ingest run, then the file and line (rowid order is not insertion order
                   -- once DuckDB inserts in parallel)
                   row_number() OVER (ORDER BY r.started_at NULLS LAST, d.source_file, d.source_line, d.byte_offset, d.doc_id)
                       AS ord,
                   d.char_count, d.language, d.content_hash
            FROM ({scope}) d LEFT JOIN runs r ON r.run_id = d.run_id)
        ORDER BY ord {limit}
        """, params=params).to_arrow_table()


def _priority(ws: Workspace, docs: pa.Table, policy: str) -> np.ndarray:
    """A rank per document (lower is kept first) for the representative policy."""
    n = docs.num_rows
    order = docs.column("ord").to_numpy()
    if policy == "first":
        return np.argsort(np.argsort(order, kind="stable"), kind="stable")
    if policy == "longest":
        keys = np.lexsort((order, -docs.column("char_count").to_numpy().astype(np.int64)))
        rank = np.empty(n, dtype=np.int64)
        rank[keys] = np.arange(n)
        return rank
    exists = ws.scalar("SELECT count(*) FROM duckdb_views() WHERE view_name = 'quality_composite'") or \
        ws.scalar("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'quality_composite'")
    if not exists:
        raise WorkspaceError("keeping the best quality member needs quality scores: run `studio score` "
                             "on this workspace first (or choose --keep first or longest)")
    register_arrow(ws, "dedup_docs_q", pa.table({"doc_id": docs.column("doc_id")}))
    try:
        scores = dict(ws.query("SELECT q.doc_id, q.score FROM quality_composite q "
                               "JOIN dedup_docs_q USING (doc_id)"))
    finally:
        ws.con.unregister("dedup_docs_q")
    if n and not any(v is not None for v in scores.values()):
        raise WorkspaceError("keeping the best quality member needs quality scores, and none of these "
                             "documents has one: run `studio score` on this workspace first")
    # Unscored documents rank after scored ones (then in ingest order).
    score = np.array([s if (s := scores.get(d)) is not None else float("-inf")
                      for d in docs.column("doc_id").to_pylist()], dtype=np.float64)
    keys = np.lexsort((order, -score))
    rank = np.empty(n, dtype=np.int64)
    rank[keys] = np.arange(n)
    return rank


# --- clustering ---------------------------------------------------------------------------------------------
@dataclass
class _Pairs:
    a: np.ndarray  # row indices into the selected documents
    b: np.ndarray
    similarity: np.ndarray


def _cluster_and_record(ws: Workspace, run: Any, cfg: DedupConfig, docs: pa.Table, pairs: _Pairs,
                        similarity_to: Any, progress: Progress) -> DedupResult:
    """Store pairs >= floor, cluster pairs >= threshold, keep one per cluster, record drops."""
    threshold, floor = cfg.resolved_threshold(), cfg.resolved_floor()
    doc_ids = np.asarray(docs.column("doc_id").to_pylist(), dtype=object)
    stored = reaches(pairs.similarity, floor)
    pair_table = pa.table({
        "run_id": pa.array([run.run_id] * int(stored.sum()), pa.string()),
        "method": pa.array([cfg.method] * int(stored.sum()), pa.string()),
        "doc_a": pa.array(doc_ids[pairs.a[stored]].tolist(), pa.string()),
        "doc_b": pa.array(doc_ids[pairs.b[stored]].tolist(), pa.string()),
        "similarity": pa.array(pairs.similarity[stored].astype(np.float64)),
    })
    register_arrow(ws, "dedup_new_pairs", pair_table)
    ws.con.execute("INSERT INTO dedup_pairs SELECT * FROM dedup_new_pairs")
    ws.con.unregister("dedup_new_pairs")

    linked = reaches(pairs.similarity, threshold)
    labels = connected_components(docs.num_rows, pairs.a[linked], pairs.b[linked])
    rank = _priority(ws, docs, cfg.policy)
    # The representative of each component is its member of lowest rank.
    order = np.lexsort((rank, labels))
    first_of_label = np.r_[True, labels[order][1:] != labels[order][:-1]]
    rep_of_label = {int(labels[i]): int(i) for i in order[first_of_label]}
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] > 1)
    reps = np.array([rep_of_label[int(labels[i])] for i in members], dtype=np.int64)
    dropped = members[members != reps]
    kept_for_dropped = reps[members != reps]
    sim_to_kept = similarity_to(dropped, kept_for_dropped) if len(dropped) else np.zeros(0)

    # The strongest direct link of each dropped document, to explain transitive clusters.
    best_link: dict[int, tuple[int, float]] = {}
    for x, y, s in zip(pairs.a[linked], pairs.b[linked], pairs.similarity[linked], strict=True):
        for u, v in ((int(x), int(y)), (int(y), int(x))):
            if u not in best_link or s > best_link[u][1]:
                best_link[u] = (v, float(s))

    corpora = docs.column("corpus").to_pylist()
    roles = docs.column("role").to_pylist()
    details = []
    for d, k, s in zip(dropped, kept_for_dropped, sim_to_kept, strict=True):
        link_doc, link_sim = best_link.get(int(d), (int(k), float(s)))
        details.append(json.dumps({
            "method": cfg.method, "kept": doc_ids[k], "kept_corpus": corpora[k], "similarity_to_kept": round(float(s), 4),
            "linked_to": doc_ids[link_doc], "link_similarity": round(link_sim, 4), "cluster_size": int(sizes[labels[d]]),
            "policy": cfg.policy}))
    label = {"exact": "exact duplicate", "minhash": "near-duplicate (MinHash Jaccard)",
             "semantic": "semantic duplicate (cosine)"}[cfg.method]
    decisions = pa.table({
        "doc_id": pa.array(doc_ids[dropped].tolist(), pa.string()),
        "verdict": pa.array(["drop"] * len(dropped), pa.string()),
        "reason": pa.array([f"{label} of {doc_ids[k]}" for k in kept_for_dropped], pa.string()),
        "score": pa.array(np.asarray(sim_to_kept, dtype=np.float64)),
        "threshold": pa.array([threshold] * len(dropped), pa.float64()),
        "details": pa.array(details, pa.string()),
    })
    ws.record_decisions(run, decisions)

    clusters = pa.table({
        "run_id": pa.array([run.run_id] * len(members), pa.string()),
        "method": pa.array([cfg.method] * len(members), pa.string()),
        "doc_id": pa.array(doc_ids[members].tolist(), pa.string()),
        "kept_doc": pa.array(doc_ids[reps].tolist(), pa.string()),
        "cluster_size": pa.array(sizes[labels[members]].astype(np.int32)),
        "is_kept": pa.array((members == reps).tolist(), pa.bool_()),
        "similarity_to_kept": pa.array(np.where(members == reps, 1.0,
                                                similarity_to(members, reps) if len(members) else 0.0)
                                       .astype(np.float64)),
    })
    register_arrow(ws, "dedup_new_clusters", clusters)
    ws.con.execute("INSERT INTO dedup_clusters SELECT * FROM dedup_new_clusters")
    ws.con.unregister("dedup_new_clusters")

    by_corpus: dict[str, int] = {}
    by_role: dict[str, int] = {}
    for d in dropped:
        by_corpus[corpora[d]] = by_corpus.get(corpora[d], 0) + 1
        by_role[roles[d]] = by_role.get(roles[d], 0) + 1
    n_clusters = int((sizes > 1).sum())
    run.counts = {"documents": docs.num_rows, "clusters": n_clusters, "dropped": len(dropped),
                  "pairs_stored": int(stored.sum()), "dropped_by_corpus": by_corpus, "dropped_by_role": by_role}
    progress(1.0, f"{len(dropped):,} of {docs.num_rows:,} documents dropped in {n_clusters:,} clusters")
    return DedupResult(run.run_id, cfg.method, threshold, docs.num_rows, n_clusters, len(dropped),
                       int(stored.sum()), by_corpus, by_role)


# --- exact --------------------------------------------------------------------------------------------------
def _exact_pairs(ws: Workspace, cfg: DedupConfig, docs: pa.Table, progress: Progress) -> _Pairs:
    if cfg.normalisation == NormalisationConfig():
        hashes = docs.column("content_hash").to_pylist()  # computed at ingest with the default folding
    else:
        texts = _texts(ws, docs)
        hashes = [content_hash(t, cfg.normalisation) for t in texts]
    groups = docs.column("grp").to_pylist()
    progress(0.5, "grouping equal normalised texts")
    first: dict[tuple[str, str], int] = {}
    a: list[int] = []
    b: list[int] = []
    for i, key in enumerate(zip(groups, hashes, strict=True)):
        j = first.setdefault(key, i)
        if j != i:  # a star around the first member: linear in the cluster size
            a.append(j)
            b.append(i)
    return _Pairs(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64), np.ones(len(a)))


def _texts(ws: Workspace, docs: pa.Table) -> list[str]:
    register_arrow(ws, "dedup_sel", pa.table({"doc_id": docs.column("doc_id"),
                                               "pos": pa.array(np.arange(docs.num_rows))}))
    try:
        return ws.con.sql("SELECT d.text FROM dedup_sel s JOIN documents d USING (doc_id) ORDER BY s.pos"
                          ).to_arrow_table().column("text").to_pylist()
    finally:
        ws.con.unregister("dedup_sel")


# --- minhash ------------------------------------------------------------------------------------------------
def ensure_signatures(ws: Workspace, doc_ids: Sequence[str] | None, num_perm: int, ngram: int,
                      progress: Progress = no_progress, batch: int = 20_000) -> int:
    """Compute and store signatures for the documents (all when `doc_ids` is None) that lack them under this
    scheme; returns how many were computed."""
    scheme = minhash_scheme(num_perm, ngram)
    if doc_ids is None:
        source = "SELECT doc_id FROM documents"
        register = None
    else:
        register = pa.table({"doc_id": pa.array(list(doc_ids), pa.string())})
        source = "SELECT doc_id FROM dedup_want"
    if register is not None:
        register_arrow(ws, "dedup_want", register)
    try:
        todo = ws.con.sql(
            f"""SELECT d.doc_id, d.text, d.language FROM documents d
                WHERE d.doc_id IN ({source})
                  AND NOT EXISTS (SELECT 1 FROM dedup_signatures s WHERE s.scheme = ? AND s.doc_id = d.doc_id)
                ORDER BY d.rowid""", params=[scheme]).to_arrow_table()
    finally:
        if register is not None:
            ws.con.unregister("dedup_want")
    total = todo.num_rows
    for start in range(0, total, batch):
        part = todo.slice(start, batch)
        texts = part.column("text").to_pylist()
        hashes, shingle_offsets = shingle_hashes(texts, ngram, part.column("language").to_pylist())
        sigs = signatures_from_hashes(hashes, shingle_offsets, num_perm)
        offsets = pa.array(np.arange(0, (len(texts) + 1) * num_perm, num_perm, dtype=np.int32))
        table = pa.table({"doc_id": part.column("doc_id"),
                          "shingles": pa.array(np.diff(shingle_offsets).astype(np.int32)),
                          "signature": pa.ListArray.from_arrays(offsets, pa.array(sigs.reshape(-1), pa.uint32()))})
        register_arrow(ws, "dedup_new_sigs", table)
        ws.con.execute("INSERT INTO dedup_signatures SELECT ?, doc_id, shingles, signature FROM dedup_new_sigs",
                       [scheme])
        ws.con.unregister("dedup_new_sigs")
        progress(min(start + batch, total) / max(total, 1),
                 f"MinHash signatures: {min(start + batch, total):,} / {total:,} new documents")
    return total


def ensure_bands(ws: Workspace, num_perm: int, ngram: int, bands: int, rows: int) -> str:
    """Band hashes (one per band per document) for every stored signature of the scheme that lacks them."""
    scheme = minhash_scheme(num_perm, ngram)
    lsh_key = f"{scheme}|bands={bands}|rows={rows}"
    ws.con.execute(
        f"""
        INSERT INTO dedup_bands
        SELECT ?, b.band::SMALLINT, hash(s.signature[b.band * {rows} + 1 : (b.band + 1) * {rows}]), s.doc_id
        FROM dedup_signatures s, range({bands}) b(band)
        WHERE s.scheme = ?
          AND NOT EXISTS (SELECT 1 FROM dedup_bands x WHERE x.lsh_key = ? AND x.doc_id = s.doc_id)
        """, [lsh_key, scheme, lsh_key])
    return lsh_key


def _signature_matrix(ws: Workspace, doc_ids: Sequence[str], scheme: str, num_perm: int) -> np.ndarray:
    register_arrow(ws, "dedup_sel_sig", pa.table({"doc_id": pa.array(list(doc_ids), pa.string()),
                                                  "pos": pa.array(np.arange(len(doc_ids)))}))
    try:
        table = ws.con.sql("SELECT s.signature FROM dedup_sel_sig q JOIN dedup_signatures s "
                           "ON s.doc_id = q.doc_id AND s.scheme = ? ORDER BY q.pos", params=[scheme]
                           ).to_arrow_table()
    finally:
        ws.con.unregister("dedup_sel_sig")
    flat = table.column("signature").combine_chunks().values.to_numpy(zero_copy_only=False)
    return flat.astype(np.uint32, copy=False).reshape(len(doc_ids), num_perm)


def _minhash_pairs(ws: Workspace, cfg: DedupConfig, docs: pa.Table,
                   progress: Progress) -> tuple[_Pairs, Any, dict[str, Any]]:
    doc_ids = docs.column("doc_id").to_pylist()
    computed = ensure_signatures(ws, doc_ids, cfg.num_perm, cfg.ngram,
                                 lambda f, m: progress(0.6 * f, m))
    bands, rows = cfg.lsh_shape()
    progress(0.6, f"band hashes ({bands} bands × {rows} rows)")
    lsh_key = ensure_bands(ws, cfg.num_perm, cfg.ngram, bands, rows)
    progress(0.7, "candidate pairs from shared band hashes")
    register_arrow(ws, "dedup_sel_docs", pa.table({"doc_id": docs.column("doc_id"), "grp": docs.column("grp"),
                                                   "pos": pa.array(np.arange(docs.num_rows))}))
    try:
        # Each bucket (band, hash, scope group) links its members to its first member: linear in bucket size
        # even for boilerplate shared by thousands of documents, and transitive clusters still form.
        cand = ws.con.sql(
            """
            WITH b AS (
                SELECT x.band, x.band_hash, q.grp, q.pos FROM dedup_bands x JOIN dedup_sel_docs q USING (doc_id)
                WHERE x.lsh_key = ?
            ), centre AS (
                SELECT band, band_hash, grp, min(pos) AS c FROM b GROUP BY ALL HAVING count(*) > 1
            )
            SELECT DISTINCT centre.c AS a, b.pos AS b
            FROM b JOIN centre USING (band, band_hash, grp) WHERE b.pos <> centre.c
            """, params=[lsh_key]).to_arrow_table()
    finally:
        ws.con.unregister("dedup_sel_docs")
    a = cand.column("a").to_numpy().astype(np.int64)
    b = cand.column("b").to_numpy().astype(np.int64)
    progress(0.8, f"verifying {len(a):,} candidate pairs with the signature estimate")
    scheme = minhash_scheme(cfg.num_perm, cfg.ngram)
    sigs = _signature_matrix(ws, doc_ids, scheme, cfg.num_perm)

    def similarity_to(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.empty(len(x), dtype=np.float64)
        for s in range(0, len(x), 100_000):
            out[s:s + 100_000] = jaccard_estimate(sigs[x[s:s + 100_000]], sigs[y[s:s + 100_000]])
        return out

    sim = similarity_to(a, b)
    floor = cfg.resolved_floor()
    keep = reaches(sim, floor)  # a band collision alone never links documents
    progress(0.9, f"{int(keep.sum()):,} of {len(a):,} candidates verified >= {floor:.2f}")
    return _Pairs(a[keep], b[keep], sim[keep]), similarity_to, {"signatures_computed": computed,
                                                               "candidates": len(a), "bands": bands, "rows": rows}


# --- semantic -----------------------------------------------------------------------------------------------
def _semantic_pairs(ws: Workspace, cfg: DedupConfig, docs: pa.Table,
                    progress: Progress) -> tuple[_Pairs, Any, dict[str, Any]]:
    doc_ids = docs.column("doc_id").to_pylist()
    embed_cfg = EmbedConfig(model=cfg.embed_model, max_tokens=cfg.max_tokens)
    vectors = embed_documents(ws, doc_ids, embed_cfg, lambda f, m: progress(0.8 * f, m))
    n = len(vectors)
    k = min(cfg.neighbours + 1, n)
    groups = np.asarray(docs.column("grp").to_pylist(), dtype=object)
    progress(0.8, f"nearest neighbours of {n:,} documents")
    index, index_kind = build_index(vectors, EXACT_INDEX_MAX, approximate="hnsw", ef_search=max(64, 2 * k))
    kind = "exact (IndexFlatIP)" if index_kind == "exact" else "approximate (HNSW, M=32, efSearch>=64)"
    a_parts, b_parts, s_parts = [], [], []
    for start in range(0, n, 8_192):
        sims, nbrs = search(index, vectors[start:start + 8_192], k)
        rows = np.repeat(np.arange(start, start + len(sims)), k)
        cols, vals = nbrs.reshape(-1), sims.reshape(-1)
        ok = (cols >= 0) & (cols != rows) & (vals >= cfg.resolved_floor() - 1e-6)
        a_parts.append(np.minimum(rows[ok], cols[ok]))
        b_parts.append(np.maximum(rows[ok], cols[ok]))
        s_parts.append(vals[ok])
    a, b, s = (np.concatenate(p) if p else np.zeros(0) for p in (a_parts, b_parts, s_parts))
    a, b = a.astype(np.int64), b.astype(np.int64)
    same_group = groups[a] == groups[b] if len(a) else np.zeros(0, dtype=bool)
    a, b, s = a[same_group], b[same_group], s[same_group]
    if len(a):  # each pair once (found from both ends)
        _, unique = np.unique(a * n + b, return_index=True)
        a, b, s = a[unique], b[unique], s[unique]

    def similarity_to(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.clip((vectors[x] * vectors[y]).sum(axis=1).astype(np.float64), -1.0, 1.0)

    return _Pairs(a, b, np.clip(s.astype(np.float64), -1.0, 1.0)), similarity_to, {"index": kind,
                                                                                "embed_path": active_path(embed_cfg)}


# --- the step -----------------------------------------------------------------------------------------------
def deduplicate(ws: Workspace, cfg: DedupConfig | None = None, progress: Progress = no_progress) -> DedupResult:
    """Run one dedup method over the workspace and record its drops (superseding its earlier run)."""
    cfg = cfg or DedupConfig()
    cfg.validate()
    with ws.run(step_name(cfg.method), cfg.params()) as run:
        docs = _select_documents(ws, cfg)
        progress(0.0, f"{docs.num_rows:,} documents to deduplicate ({cfg.method})")
        if cfg.policy == "best_quality":
            _priority(ws, docs, "best_quality")  # fail early, before any work, with the clear message
        extra: dict[str, Any] = {}
        if cfg.method == "exact":
            pairs = _exact_pairs(ws, cfg, docs, progress)

            def similarity_to(x: np.ndarray, y: np.ndarray) -> np.ndarray:
                return np.ones(len(x))
        elif cfg.method == "minhash":
            pairs, similarity_to, extra = _minhash_pairs(ws, cfg, docs, progress)
        else:
            pairs, similarity_to, extra = _semantic_pairs(ws, cfg, docs, progress)
        result = _cluster_and_record(ws, run, cfg, docs, pairs, similarity_to, progress)
        run.counts |= extra
        if "embed_path" in extra:  # the inference path the vectors came from (core.fastpath)
            run.params["embed_path"] = extra["embed_path"]
        result.details = extra
    return result


# --- the demo -----------------------------------------------------------------------------------------------
def recipe_configs(table: dict[str, Any]) -> dict[str, DedupConfig]:
    """A recipe's dedup table: `methods` (default exact and minhash) and a table of DedupConfig fields per method."""
    table = {k: v for k, v in table.items() if k != "name"}
    methods = table.pop("methods", DEMO_METHODS)
    unknown = sorted(set(table) - set(METHODS))
    if unknown:
        raise ValueError(f"step dedup: unknown keys {unknown} (known: methods, {', '.join(METHODS)})")
    return {m: config_from_recipe(DedupConfig, {**table.get(m, {}), "method": m}, step=f"dedup.{m}") for m in methods}


def _summary(result: DedupResult) -> dict[str, Any]:
    return {"run_id": result.run_id, "documents": result.documents, "dropped": result.dropped,
            "clusters": result.clusters}


REGISTERED_STEP = Step("dedup", DedupConfig, lambda ws, cfg, progress: deduplicate(ws, cfg, progress), command="dedup",
            recipe_configs=recipe_configs, summary=_summary)
