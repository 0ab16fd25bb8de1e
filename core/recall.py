"""Eval-driven recall: training documents close to what the model will be judged on, with a leakage cap.

Each benchmark item (by default its question with the lettered choices) and each document of the candidate pool
(the current documents of the chosen corpora, instruction data included) is embedded with the workspace's cached
embedder (`core.embed`). For every item the top-k nearest candidates (default 50) with cosine at or above the
floor (0.75) and below the **leakage cap** (0.95) are recalled; the recalled set is their union, with each
document's best-matching item and similarity. The cap is a hard exclusion: a candidate whose cosine to any item
reaches it gets a `decisions` drop row naming the item and the similarity, and the item is flagged 'near' (so a
report can give scores on the clean subset).

Two searches are run, both with FAISS inner product on L2-normalised vectors (= cosine):
- items -> pool, top-(2k): the recall itself. Pools up to `exact_limit` documents (default 100,000) use an exact
  flat index; larger pools an IVF index (nlist = 4·sqrt(n), nprobe 32). Measured by `bench/recall.py` on 2 cores
  at 100,000 documents x 5,000 items, top-50: exact FAISS 0.2 s build + 2.0 s search (NumPy matmul baseline
  3.5 s); IVF 4.8 s build + 0.5 s search at recall@50 0.974. At this size exact is cheaper overall and loses
  nothing; the IVF search time grows with sqrt(n) instead of n, so it pays off above it.
- pool -> items, top-1 (exact; benchmarks are small): each candidate's best similarity, which drives the cap
  exclusion and the page's histogram with its movable floor and cap.
Every item's search results are stored (`recall_hits`), so the page recounts what other floors and caps would do
without embedding anything again.

The random control set has the recalled set's size and length profile: for each length bucket (half a power of
two of tokens) as many documents are drawn at random (seeded) from the pool as the recalled set has in it, so the
token counts match closely and the report can show whether eval-driven selection beat random selection.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from core.benchmarks import arrow_query, benchmark_names, ensure_registered
from core.decontam import pool_corpora
from core.embed import EmbedConfig, active_path, build_index, embed_documents, embed_texts, search
from core.flow import scope_sql
from core.models import BUNDLED_EMBEDDER
from core.progress import Progress, no_progress
from core.steps import Step, param, validate_fields
from core.workspace import Workspace, WorkspaceError

STEP = "recall"  # as recorded in `runs.step`
ITEM_TEXTS = ("question", "question_choices", "question_answer")


@dataclass
class RecallConfig:
    benchmarks: list[str] | None = param(None, help="comma-separated benchmark names (default: all)")
    pool: list[str] | None = param(None, help="comma-separated corpora to recall from (default: all but benchmarks)")
    k: int = param(50, flag="-k", aliases=("--k",), minimum=1, help="neighbours per item")
    floor: float = param(0.75, minimum=-1.0, maximum=1.0, help="lowest cosine recalled")
    cap: float = param(0.95, minimum=-1.0, maximum=1.0,
                       help="leakage cap: documents at or above this cosine to any item are dropped")
    item_text: str = param("question_choices", choices=ITEM_TEXTS, show_default=False,
                           help="what of an item is embedded (default: question with its choices)")
    exact_limit: int = param(100_000, minimum=0, show_default=False,
                             help="pools larger than this are searched with an approximate IVF index")
    nprobe: int = param(32, minimum=1, cli=False, help="IVF lists searched per query")
    seed: int = param(0, help="seed of the control set and the samples", show_default=False)
    max_items_per_benchmark: int | None = param(None, flag="--max-items", minimum=1,
                                                help="a seeded sample of at most this many items per benchmark")
    pool_sample: int | None = param(None, minimum=1, help="a seeded sample of at most this many pool documents")
    embed_model: str = param(BUNDLED_EMBEDDER, cli=False, help="sentence-transformers model id or path")
    embed_max_tokens: int = param(128, minimum=1, cli=False, help="truncation in word pieces")

    def validate(self) -> None:
        if self.k < 1:
            raise ValueError("k must be at least 1")
        validate_fields(self)
        if not -1.0 <= self.floor < self.cap <= 1.0:
            raise ValueError(f"need -1 <= floor < cap <= 1 (floor {self.floor}, cap {self.cap})")
        if self.item_text not in ITEM_TEXTS:
            raise ValueError(f"item_text must be one of {', '.join(ITEM_TEXTS)}, not {self.item_text!r}")


@dataclass
class RecallResult:
    run_id: str
    index_kind: str
    pool_documents: int
    items: int
    recalled_documents: int
    recalled_tokens: int
    control_documents: int
    control_tokens: int
    excluded_by_cap: int
    items_flagged_near: int
    search_seconds: float
    embed_seconds: float
    by_benchmark: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- FAISS: `core.embed.build_index` and `core.embed.search` (shared with semantic dedup) -------------------


# --- the recall rule -----------------------------------------------------------------------------------------
# The recalled hits of a run (parameters: run_id, cap, k, floor): per item, its first k neighbours that are not
# capped (their best similarity to any item stays below the cap) and reach the floor. The run stores them; the
# page's what-if counts them for another floor and cap; both read this one query.
KEPT_SQL = """
    SELECT h.item_doc_id, h.doc_id, h.similarity FROM (
        SELECT h.*, row_number() OVER (PARTITION BY h.item_doc_id ORDER BY h.similarity DESC, h.rank) AS kept_rank
        FROM recall_hits h JOIN recall_candidates c ON c.run_id = h.run_id AND c.doc_id = h.doc_id
        WHERE h.run_id = ? AND c.best_similarity < ?) h
    WHERE h.kept_rank <= ? AND h.similarity >= ?
"""


# --- inputs ---------------------------------------------------------------------------------------------------
def item_texts_sql(item_text: str) -> str:
    if item_text == "question":
        return "question"
    if item_text == "question_answer":
        return "concat_ws(chr(10), question, answer)"
    return "item_text"  # the rendered document: question and lettered choices


def load_items(ws: Workspace, cfg: RecallConfig) -> pa.Table:
    names = benchmark_names(ws, cfg.benchmarks)
    if not names:
        raise WorkspaceError("the workspace has no benchmark (import one with `studio bench-import`)")
    ensure_registered(ws, names)
    per_bench = f"QUALIFY row_number() OVER (PARTITION BY corpus ORDER BY hash(doc_id || '{int(cfg.seed)}')) <= " \
                f"{int(cfg.max_items_per_benchmark)}" if cfg.max_items_per_benchmark else ""
    return arrow_query(
        ws, f"SELECT doc_id, corpus, subject, item_id, {item_texts_sql(cfg.item_text)} AS text FROM benchmark_items "
        f"WHERE corpus IN (SELECT unnest(?::VARCHAR[])) {per_bench} ORDER BY corpus, doc_id", [names])


def load_pool(ws: Workspace, cfg: RecallConfig) -> pa.Table:
    corpora = pool_corpora(ws, cfg.pool)
    roles = dict(ws.query("SELECT name, role FROM corpora"))
    if any(roles.get(c) == "benchmark" for c in corpora):
        raise WorkspaceError("a benchmark cannot be part of the recall pool")
    if not corpora:
        raise WorkspaceError("no corpus to recall from")
    sample = f"ORDER BY hash(doc_id || '{int(cfg.seed)}') LIMIT {int(cfg.pool_sample)}" if cfg.pool_sample else ""
    # Token counts come from the tokens step; where it has not run, ~4 characters a token stands in. The pool is
    # what the steps before recall in the flow left of these corpora (`core.flow`).
    pool, params = scope_sql(ws, STEP, corpora=corpora)
    return arrow_query(
        ws, f"SELECT doc_id, corpus, coalesce(token_count, ceil(char_count / 4))::BIGINT AS tokens "
        f"FROM ({pool}) {sample}", params).sort_by("doc_id")


# --- the control set ------------------------------------------------------------------------------------------
def control_sample(pool_tokens: np.ndarray, recalled_tokens: np.ndarray, seed: int) -> np.ndarray:
    """Indices into the pool: a seeded random sample with the recalled set's size and length profile."""
    rng = np.random.default_rng(seed)

    def bucket(t: np.ndarray) -> np.ndarray:
        return np.floor(2 * np.log2(np.maximum(t, 1))).astype(np.int64)

    pool_bucket = bucket(pool_tokens)
    want = dict(zip(*np.unique(bucket(recalled_tokens), return_counts=True), strict=True))
    chosen: list[np.ndarray] = []
    shortfall = 0
    taken = np.zeros(len(pool_tokens), dtype=bool)
    for b, n in want.items():
        members = np.flatnonzero(pool_bucket == b)
        pick = rng.permutation(members)[:n]
        shortfall += n - len(pick)
        taken[pick] = True
        chosen.append(pick)
    if shortfall:  # buckets the pool cannot fill: random documents of any length
        rest = rng.permutation(np.flatnonzero(~taken))[:shortfall]
        chosen.append(rest)
    return np.concatenate(chosen) if chosen else np.zeros(0, np.int64)


# --- the step -------------------------------------------------------------------------------------------------
def run_recall(ws: Workspace, cfg: RecallConfig | None = None, progress: Progress = no_progress) -> RecallResult:
    cfg = cfg or RecallConfig()
    cfg.validate()
    items = load_items(ws, cfg)
    pool = load_pool(ws, cfg)
    if pool.num_rows == 0:
        raise WorkspaceError("the recall pool is empty (every document of the chosen corpora was dropped)")
    params = {**asdict(cfg), "pool": pool_corpora(ws, cfg.pool), "benchmarks": benchmark_names(ws, cfg.benchmarks),
              "pool_documents": pool.num_rows, "items": items.num_rows}
    embed_cfg = EmbedConfig(model=cfg.embed_model, max_tokens=cfg.embed_max_tokens)
    with ws.run(STEP, params) as run:
        t0 = time.perf_counter()
        n_items, n_pool = items.num_rows, pool.num_rows
        share = n_items / (n_items + n_pool)
        doc_ids = pool.column("doc_id").to_pylist()
        # The pool first: its texts calibrate the inference path where none is chosen yet, and the items then
        # take the same path, so item and pool vectors always come from one path.
        pool_vecs = embed_documents(ws, doc_ids, embed_cfg,
                                    lambda f, m: progress(0.7 * (1 - share) * max(f, 0), f"pool: {m}"))
        run.params["embed_path"] = active_path(embed_cfg)
        item_vecs = embed_texts(ws, items.column("text").to_pylist(), embed_cfg,
                                lambda f, m: progress(0.7 * ((1 - share) + share * max(f, 0)), f"items: {m}"),
                                path=run.params["embed_path"])
        embed_seconds = time.perf_counter() - t0
        progress(0.72, f"searching {n_items:,} items against {n_pool:,} documents")
        t0 = time.perf_counter()
        index, kind = build_index(pool_vecs, cfg.exact_limit, cfg.nprobe, cfg.seed)
        k_search = min(2 * cfg.k, n_pool)
        hit_sims, hit_idx = search(index, item_vecs, k_search)
        item_index, _ = build_index(item_vecs, exact_limit=max(n_items, 1))
        best_sims, best_idx = search(item_index, pool_vecs, 1)
        search_seconds = time.perf_counter() - t0
        best_sims, best_idx = best_sims[:, 0], best_idx[:, 0]
        progress(0.85, "recording the recalled set, the control set and the cap exclusions")

        item_ids = np.asarray(items.column("doc_id").to_pylist(), dtype=object)
        doc_arr = np.asarray(doc_ids, dtype=object)
        tokens = pool.column("tokens").to_numpy()
        excluded = best_sims >= cfg.cap
        _store_search(ws, run.run_id, pool, item_ids, doc_arr, hit_sims, hit_idx, best_sims, best_idx)
        _record_recall_set(ws, run.run_id, cfg, item_ids)
        capped = _record_cap_exclusions(ws, run, cfg, items, item_ids, doc_arr, best_sims, best_idx, excluded)
        recalled_ids, recalled_pos, control_pos = _record_control(ws, run.run_id, cfg, doc_ids, doc_arr, tokens,
                                                                  excluded)

        flagged = ws.scalar("SELECT count(DISTINCT item_doc_id) FROM benchmark_item_flags WHERE run_id = ?",
                            [run.run_id])
        result = RecallResult(
            run_id=run.run_id, index_kind=kind, pool_documents=n_pool, items=n_items,
            recalled_documents=len(recalled_ids), recalled_tokens=int(tokens[recalled_pos].sum()),
            control_documents=len(control_pos), control_tokens=int(tokens[control_pos].sum()),
            excluded_by_cap=len(capped), items_flagged_near=flagged, search_seconds=round(search_seconds, 3),
            embed_seconds=round(embed_seconds, 3), by_benchmark=benchmark_stats(ws, run.run_id, cfg.floor))
        run.counts = {k: v for k, v in result.to_dict().items() if isinstance(v, int | float | str)}
    progress(1.0, f"recalled {result.recalled_documents:,} documents; {result.excluded_by_cap:,} excluded by the cap")
    return result


def _store_search(ws: Workspace, run_id: str, pool: pa.Table, item_ids: np.ndarray, doc_arr: np.ndarray,
                  hit_sims: np.ndarray, hit_idx: np.ndarray, best_sims: np.ndarray, best_idx: np.ndarray) -> None:
    """Every search result, as stored evidence for the page's what-if counts: each item's neighbours
    (recall_hits) and each pool document's closest item (recall_candidates)."""
    n_items, k_search = hit_idx.shape
    valid = hit_idx >= 0
    rows_item = np.repeat(np.arange(n_items), k_search).reshape(n_items, k_search)[valid]
    rows_rank = np.tile(np.arange(1, k_search + 1), n_items).reshape(n_items, k_search)[valid]
    hits = pa.table({"item_doc_id": pa.array(item_ids[rows_item], pa.string()),
                     "doc_id": pa.array(doc_arr[hit_idx[valid]], pa.string()),
                     "rank": pa.array(rows_rank, pa.int32()),
                     "similarity": pa.array(hit_sims[valid], pa.float32())})
    candidates = pa.table({"doc_id": pool.column("doc_id"), "corpus": pool.column("corpus"),
                           "tokens": pool.column("tokens"),
                           "best_item": pa.array(item_ids[best_idx], pa.string()),
                           "best_similarity": pa.array(best_sims, pa.float32())})
    con = ws.con
    for name, table in (("new_hits", hits), ("new_candidates", candidates)):
        con.register(name, table)
    con.execute("INSERT INTO recall_hits SELECT ?, item_doc_id, doc_id, rank, similarity FROM new_hits", [run_id])
    con.execute("INSERT INTO recall_candidates SELECT ?, doc_id, corpus, tokens, best_item, best_similarity "
                "FROM new_candidates", [run_id])
    con.unregister("new_hits")
    con.unregister("new_candidates")


def _record_recall_set(ws: Workspace, run_id: str, cfg: RecallConfig, item_ids: np.ndarray) -> None:
    """The recall: per item, its first k neighbours that are not capped and reach the floor (recall_set), and
    each item's figures (recall_item_stats)."""
    con = ws.con
    con.execute(f"CREATE OR REPLACE TEMP TABLE recall_kept AS {KEPT_SQL}", [run_id, cfg.cap, cfg.k, cfg.floor])
    con.execute(
        "INSERT INTO recall_set SELECT ?, doc_id, arg_max(item_doc_id, similarity), max(similarity), count(*) "
        "FROM recall_kept GROUP BY doc_id", [run_id])
    con.execute(
        """
        INSERT INTO recall_item_stats
        SELECT ?, i.doc_id, i.corpus, i.subject, coalesce(k.hits, 0), coalesce(c.capped, 0), c.best
        FROM benchmark_items i
        LEFT JOIN (SELECT item_doc_id, count(*) AS hits FROM recall_kept GROUP BY 1) k
               ON k.item_doc_id = i.doc_id
        LEFT JOIN (SELECT item_doc_id, count(*) FILTER (WHERE similarity >= ?) AS capped,
                          max(similarity) AS best
                   FROM recall_hits WHERE run_id = ? GROUP BY 1) c ON c.item_doc_id = i.doc_id
        WHERE i.doc_id IN (SELECT unnest(?::VARCHAR[]))
        """, [run_id, cfg.cap, run_id, item_ids.tolist()])
    con.execute("DROP TABLE recall_kept")


def _record_cap_exclusions(ws: Workspace, run: Any, cfg: RecallConfig, items: pa.Table, item_ids: np.ndarray,
                           doc_arr: np.ndarray, best_sims: np.ndarray, best_idx: np.ndarray,
                           excluded: np.ndarray) -> np.ndarray:
    """The hard exclusion: one drop per capped candidate, naming its closest item and the similarity; and the
    mirror image, items with a near copy in the pool. Returns the capped candidates' positions."""
    capped = np.flatnonzero(excluded)
    if not len(capped):
        return capped
    details = []
    item_corpus = dict(zip(item_ids.tolist(), items.column("corpus").to_pylist(), strict=True))
    item_label = dict(zip(item_ids.tolist(), items.column("item_id").to_pylist(), strict=True))
    for i in capped:
        item = item_ids[best_idx[i]]
        details.append(json.dumps({"item": item, "benchmark": item_corpus[item], "item_id": item_label[item],
                                   "similarity": round(float(best_sims[i]), 4)}))
    ws.record_decisions(run, pa.table({
        "doc_id": pa.array(doc_arr[capped], pa.string()),
        "verdict": pa.array(["drop"] * len(capped), pa.string()),
        "reason": pa.array([f"leakage cap: cosine {best_sims[i]:.3f} >= {cfg.cap} to "
                            f"{item_corpus[item_ids[best_idx[i]]]} item {item_label[item_ids[best_idx[i]]]}"
                            for i in capped], pa.string()),
        "score": pa.array(best_sims[capped].astype(np.float64)),
        "threshold": pa.array([float(cfg.cap)] * len(capped)),
        "details": pa.array(details, pa.string()),
    }))
    ws.con.execute(
        "INSERT INTO benchmark_item_flags SELECT ?, best_item, 'near', arg_max(doc_id, best_similarity), "
        "max(best_similarity), NULL FROM recall_candidates WHERE run_id = ? AND best_similarity >= ? "
        "GROUP BY best_item", [run.run_id, run.run_id, cfg.cap])
    return capped


def _record_control(ws: Workspace, run_id: str, cfg: RecallConfig, doc_ids: list[str], doc_arr: np.ndarray,
                    tokens: np.ndarray, excluded: np.ndarray) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The control set, from the pool without the capped documents, matched to the recalled set's lengths.
    Returns the recalled ids, their pool positions and the control's pool positions."""
    recalled_ids = [r[0] for r in ws.query("SELECT doc_id FROM recall_set WHERE run_id = ?", [run_id])]
    position = {d: i for i, d in enumerate(doc_ids)}
    recalled_pos = np.asarray([position[d] for d in recalled_ids], dtype=np.int64)
    eligible = np.flatnonzero(~excluded)
    control_pos = eligible[control_sample(tokens[eligible], tokens[recalled_pos], cfg.seed)]
    ws.con.register("new_control", pa.table({"doc_id": pa.array(doc_arr[control_pos], pa.string())}))
    ws.con.execute("INSERT INTO recall_control SELECT ?, doc_id FROM new_control", [run_id])
    ws.con.unregister("new_control")
    return recalled_ids, recalled_pos, control_pos


# --- statistics (SQL over the stored results; the page uses them for live what-if counts) ----------------------
def candidate_similarities(ws: Workspace, run_id: str):  # -> pandas.DataFrame
    """Each candidate of a recall run with its corpus and its best similarity to any benchmark item (the page's
    histogram under the movable floor and cap)."""
    return ws.df("SELECT corpus, best_similarity FROM recall_candidates WHERE run_id = ?", [run_id])


def benchmark_stats(ws: Workspace, run_id: str, floor: float | None = None) -> list[dict[str, Any]]:
    """Per benchmark: items, items with a hit, hits per item, quantiles of each item's best similarity, and the
    documents excluded by the cap (counted under the benchmark of their closest item)."""
    rows = ws.query(
        """
        SELECT s.corpus, b.kind, count(*) AS items, count(*) FILTER (WHERE s.hits > 0) AS items_hit,
               round(avg(s.hits), 2) AS hits_per_item, round(quantile_cont(s.best_similarity::DOUBLE, 0.1), 4),
               round(median(s.best_similarity::DOUBLE), 4) AS median_best, round(quantile_cont(s.best_similarity::DOUBLE, 0.9), 4),
               coalesce(x.capped_docs, 0) AS capped_documents
        FROM recall_item_stats s LEFT JOIN benchmarks b ON b.corpus = s.corpus
        LEFT JOIN (SELECT i.corpus, count(*) AS capped_docs FROM recall_candidates c
                   JOIN benchmark_items i ON i.doc_id = c.best_item
                   WHERE c.run_id = ? AND c.best_similarity >= (SELECT CAST(params->>'cap' AS DOUBLE) FROM runs
                                                                 WHERE run_id = ?)
                   GROUP BY 1) x ON x.corpus = s.corpus
        WHERE s.run_id = ? GROUP BY s.corpus, b.kind, x.capped_docs ORDER BY s.corpus
        """, [run_id, run_id, run_id])
    keys = ("benchmark", "kind", "items", "items_with_hit", "hits_per_item", "p10_best_similarity",
            "median_best_similarity", "p90_best_similarity", "documents_capped")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def subject_stats(ws: Workspace, run_id: str) -> list[dict[str, Any]]:
    rows = ws.query(
        "SELECT corpus, subject, count(*), count(*) FILTER (WHERE hits > 0), round(avg(hits), 2), "
        "round(median(best_similarity::DOUBLE), 4), sum(capped) FROM recall_item_stats WHERE run_id = ? "
        "GROUP BY 1, 2 ORDER BY 1, 2", [run_id])
    keys = ("benchmark", "subject", "items", "items_with_hit", "hits_per_item", "median_best_similarity",
            "capped_neighbours")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def what_if(ws: Workspace, run_id: str, floor: float, cap: float, k: int) -> dict[str, int]:
    """What the recall would hold with another floor and cap (the run's k at most), from stored results."""
    row = ws.con.execute(
        f"""
        WITH kept AS ({KEPT_SQL})
        SELECT (SELECT count(DISTINCT doc_id) FROM kept), (SELECT count(DISTINCT item_doc_id) FROM kept),
               (SELECT count(*) FROM recall_candidates WHERE run_id = ? AND best_similarity >= ?),
               (SELECT count(*) FROM recall_candidates WHERE run_id = ? AND best_similarity >= ?
                                                                       AND best_similarity < ?)
        """, [run_id, cap, k, floor, run_id, cap, run_id, floor, cap]).fetchone()
    return {"recalled_documents": row[0], "items_with_hit": row[1], "excluded_by_cap": row[2],
            "candidates_between": row[3]}


def _summary(result: RecallResult) -> dict[str, Any]:
    return {"run_id": result.run_id, "pool_documents": result.pool_documents, "items": result.items,
            "recalled_documents": result.recalled_documents, "control_documents": result.control_documents,
            "excluded_by_cap": result.excluded_by_cap}


REGISTERED_STEP = Step("recall", RecallConfig, run_recall, command="recall", summary=_summary)


def shared_spans(a: str, b: str, min_tokens: int = 4) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Character spans of the word runs (at least `min_tokens` normalised tokens) that `a` and `b` share, in each
    text: what the page highlights when it shows a document beside the benchmark item it resembles."""
    import difflib

    from core.decontam import tokenize

    ta, sa = tokenize(a)
    tb, sb = tokenize(b)
    matcher = difflib.SequenceMatcher(a=ta, b=tb, autojunk=False)
    spans_a, spans_b = [], []
    for i, j, n in matcher.get_matching_blocks():
        if n >= min_tokens:
            spans_a.append((sa[i][0], sa[i + n - 1][1]))
            spans_b.append((sb[j][0], sb[j + n - 1][1]))
    return spans_a, spans_b


def documents_at_cap(ws: Workspace, run_id: str, cap: float, limit: int = 8) -> list[dict[str, Any]]:
    """The candidates closest to the cap (either side), each with the benchmark item it resembles most."""
    rows = ws.query(
        """
        SELECT c.doc_id, c.corpus, c.best_similarity, d.text, i.corpus, i.item_id, i.subject, i.item_text, i.answer
        FROM recall_candidates c JOIN documents d USING (doc_id) JOIN benchmark_items i ON i.doc_id = c.best_item
        WHERE c.run_id = ? ORDER BY abs(c.best_similarity - ?), c.doc_id LIMIT ?
        """, [run_id, cap, limit])
    keys = ("doc_id", "corpus", "similarity", "text", "benchmark", "item_id", "subject", "item_text", "answer")
    return [dict(zip(keys, r, strict=True)) for r in rows]
