"""Quality scoring: every heuristic signal of `core.quality_signals` computed once per document and stored raw,
perplexity for the documents asked for, and the composite score's weights and parts. See `core.quality`."""

from __future__ import annotations

import concurrent.futures
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from core.flow import scope_sql
from core.models import BUNDLED_LM
from core.parallel import default_workers, process_pool
from core.perplexity import DTYPES as PERPLEXITY_DTYPES
from core.perplexity import PerplexityConfig, resolve_dtype, score_texts
from core.progress import Progress, no_progress
from core.quality_rules import DEFAULT_ROLES, FILTER_STEP, SAFETY_SATURATION, SCORE_STEP, check_corpora
from core.quality_signals import SIGNAL_NAMES, SIGNALS_VERSION, compute_batch, language_group
from core.steps import param
from core.workspace import ROLES, Workspace

DEFAULT_WEIGHTS = {"relevance": 0.3, "fluency": 0.2, "informativeness": 0.3, "safety": 0.2}
PARTS = tuple(DEFAULT_WEIGHTS)
LENGTH_SATURATION_WORDS = 200


def parse_weights(text: str | None) -> dict[str, float]:
    """'relevance=0.3,fluency=0.2,...' (missing parts keep their default) into weights."""
    weights = dict(DEFAULT_WEIGHTS)
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, _, value = item.partition("=")
        if key.strip() not in weights:
            raise ValueError(f"unknown composite part {key!r} (parts: {', '.join(PARTS)})")
        weights[key.strip()] = float(value)
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError("composite weights must be >= 0 and not all 0")
    return weights



# --- scoring --------------------------------------------------------------------------------------------------
@dataclass
class QualityScoreConfig:
    roles: list[str] = param(list(DEFAULT_ROLES), flag="--role", repeat=True, choices=ROLES, show_default=False,
                             help=f"roles scored and filtered; repeatable (default: {', '.join(DEFAULT_ROLES)})")
    corpora: list[str] = param([], flag="--corpus", repeat=True, metavar="NAME",
                               help="only these corpora; repeatable")  # empty: every corpus of `roles`
    # after a definition change this is automatic
    recompute: bool = param(False, help="compute the signals again even where stored")
    batch_size: int = param(2_000, cli=False, help="documents read per batch")
    # 1: in this process
    workers: int = param(0, show_default=False, help="processes for the heuristics (0: one per core)")
    perplexity: bool = param(False, help="also measure language-model perplexity")
    lm: str = param(BUNDLED_LM, help="causal LM for perplexity: a local path or hub id (default: the bundled "
                                     "SmolLM2-135M)")
    max_tokens: int = param(256, show_default=False, help="truncate documents to this many tokens (256)")
    lm_batch_size: int = param(8, show_default=False, help="documents per forward pass (8)")
    dtype: str = param("auto", choices=PERPLEXITY_DTYPES,
                       help="auto: the fastest path within 2% of fp32 perplexity on this CPU (calibrated once); "
                            "bf16/fp32: torch; or a path name (onnx-int8, onnx-fp32, ...)")
    sample_per_corpus: int | None = param(None, metavar="N", help="perplexity on at most N documents per corpus (a "
                                                                  "fixed hash-ordered sample; default all)")
    weights: dict[str, float] = param(
        default_factory=lambda: dict(DEFAULT_WEIGHTS), show_default=False, parse=parse_weights,
        render=lambda weights: ",".join(f"{k}={v:g}" for k, v in weights.items()),
        help="composite weights, e.g. relevance=0.3,fluency=0.2,informativeness=0.3,safety=0.2")


@dataclass
class QualityScoreResult:
    run_id: str
    documents_scored: int
    signals_seconds: float
    perplexity_scored: int
    perplexity_tokens: int
    perplexity_seconds: float
    perplexity_dtype: str | None
    composite: dict[str, Any]
    corpora: list[dict[str, Any]]

    @property
    def docs_per_second(self) -> float:
        return self.documents_scored / self.signals_seconds if self.signals_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_second": round(self.docs_per_second, 1)}


def _signal_rows(doc_ids: list[str], groups: list[str],
                 columns: list[list[float]]) -> tuple[pa.Table, pa.Table]:
    """The `quality_signal_values` rows (a column per signal) and the `quality_scored` rows of one computed
    batch."""
    values = np.asarray(columns, dtype=np.float64).reshape(len(SIGNAL_NAMES), len(doc_ids))  # signals x documents
    ids = pa.array(doc_ids, pa.string())
    col = {name: values[i] for i, name in enumerate(SIGNAL_NAMES)}
    signals = pa.table({"doc_id": ids, **{name: pa.array(col[name]) for name in SIGNAL_NAMES}})
    length = np.minimum(1.0, np.log1p(col["word_count"]) / math.log1p(LENGTH_SATURATION_WORDS))
    compression = np.clip((col["compression_ratio"] - 0.2) / 0.4, 0.0, 1.0)
    informativeness = 0.5 * length + 0.25 * col["lexical_diversity"] + 0.25 * compression
    safety = 1.0 - np.minimum(1.0, col["flagged_word_ratio"] / SAFETY_SATURATION)
    scored = pa.table({"doc_id": ids, "language_group": pa.array(groups, pa.string()),
                       "informativeness": pa.array(informativeness), "safety": pa.array(safety)})
    return signals, scored


def _store_batch(ws: Workspace, run_id: str, doc_ids: list[str], groups: list[str],
                 columns: list[list[float]]) -> None:
    signals, scored = _signal_rows(doc_ids, groups, columns)
    with ws.transaction():
        ws.con.register("q_batch_ids", pa.table({"doc_id": doc_ids}))
        ws.con.execute("DELETE FROM quality_signal_values WHERE doc_id IN (SELECT doc_id FROM q_batch_ids)")
        ws.con.execute("DELETE FROM quality_scored WHERE doc_id IN (SELECT doc_id FROM q_batch_ids)")
        ws.con.register("q_signals", signals)
        ws.con.execute("INSERT INTO quality_signal_values BY NAME SELECT *, ? AS run_id FROM q_signals", [run_id])
        ws.con.register("q_scored", scored)
        ws.con.execute("INSERT INTO quality_scored (doc_id, language_group, signals_version, informativeness, "
                       "safety, run_id) SELECT doc_id, language_group, ?, informativeness, safety, ? "
                       "FROM q_scored", [SIGNALS_VERSION, run_id])
        for name in ("q_batch_ids", "q_signals", "q_scored"):
            ws.con.unregister(name)


def compute_signals_for(ws: Workspace, run_id: str, cfg: QualityScoreConfig,
                        progress: Progress = no_progress) -> int:
    """Compute and store the heuristic signals of every document in scope that lacks current ones."""
    scope, params = scope_sql(ws, FILTER_STEP, cfg.roles, cfg.corpora)
    todo_sql = f"""SELECT s.doc_id, doc.text, s.language FROM ({scope}) s JOIN documents doc USING (doc_id)
                   {'' if cfg.recompute else '''WHERE NOT EXISTS (SELECT 1 FROM quality_scored q
                       WHERE q.doc_id = s.doc_id AND q.signals_version = ?)'''} ORDER BY s.doc_id"""
    todo_params = params + ([] if cfg.recompute else [SIGNALS_VERSION])
    total = int(ws.scalar(f"SELECT count(*) FROM ({todo_sql})", todo_params))
    if not total:
        return 0
    workers = default_workers(cfg.workers)
    cursor = ws.con.cursor()
    reader = cursor.sql(todo_sql, params=todo_params).to_arrow_reader(cfg.batch_size)
    done = 0

    def batches() -> Iterable[tuple[list[str], list[str], list[str]]]:
        for batch in reader:
            langs = batch.column(2).to_pylist()
            yield batch.column(0).to_pylist(), batch.column(1).to_pylist(), [language_group(x) for x in langs]

    try:
        if workers == 1 or total <= cfg.batch_size:
            for ids, texts, groups in batches():
                _store_batch(ws, run_id, ids, groups, compute_batch(texts, groups))
                done += len(ids)
                progress(done / total, f"signals {done:,}/{total:,} documents")
            return done
        # Processes, not threads: the rules are pure Python. Spawned, so no DuckDB or torch thread is forked.
        with process_pool(workers) as pool:
            pending: dict[concurrent.futures.Future, tuple[list[str], list[str]]] = {}
            for ids, texts, groups in batches():
                # split each batch over the workers so they stay busy while results are written
                step = max(1, math.ceil(len(ids) / workers))
                for k in range(0, len(ids), step):
                    fut = pool.submit(compute_batch, texts[k:k + step], groups[k:k + step])
                    pending[fut] = (ids[k:k + step], groups[k:k + step])
                while len(pending) >= 2 * workers:
                    done += _drain(ws, run_id, pending, wait_all=False)
                    progress(done / total, f"signals {done:,}/{total:,} documents")
            while pending:
                done += _drain(ws, run_id, pending, wait_all=False)
                progress(done / total, f"signals {done:,}/{total:,} documents")
    finally:
        cursor.close()
    return done


def _drain(ws: Workspace, run_id: str, pending: dict, wait_all: bool) -> int:
    finished, _ = concurrent.futures.wait(
        pending, return_when=concurrent.futures.ALL_COMPLETED if wait_all else concurrent.futures.FIRST_COMPLETED)
    n = 0
    for fut in finished:
        ids, groups = pending.pop(fut)
        _store_batch(ws, run_id, ids, groups, fut.result())
        n += len(ids)
    return n


def compute_perplexity_for(ws: Workspace, run_id: str, cfg: QualityScoreConfig,
                           progress: Progress = no_progress) -> tuple[int, int, str]:
    """Perplexity of the documents in scope (a deterministic sample of `sample_per_corpus` per corpus when
    set) that have none for this model and length yet. Returns (documents, tokens, dtype)."""
    pcfg = PerplexityConfig(model=cfg.lm, max_tokens=cfg.max_tokens, batch_size=cfg.lm_batch_size,
                            dtype=cfg.dtype)
    pcfg.validate()
    scope, params = scope_sql(ws, FILTER_STEP, cfg.roles, cfg.corpora)
    sample = cfg.sample_per_corpus
    rows = ws.query(
        f"""SELECT doc_id, text FROM (
                SELECT s.doc_id, doc.text,
                       row_number() OVER (PARTITION BY s.corpus ORDER BY md5(s.doc_id)) AS pick
                FROM ({scope}) s JOIN documents doc USING (doc_id))
            WHERE {'pick <= ?' if sample is not None else 'TRUE'}
              AND NOT EXISTS (SELECT 1 FROM quality_perplexity p WHERE p.doc_id = doc_id
                              AND p.model = ? AND p.max_tokens = ?)
            ORDER BY doc_id""",
        params + ([sample] if sample is not None else []) + [cfg.lm, cfg.max_tokens])
    if not rows:
        return 0, 0, ""
    ids = [r[0] for r in rows]
    from core.perplexity import load_lm

    progress(-1.0, f"loading {cfg.lm}")
    # One path for the whole pass (calibrated here on the first documents where none is chosen yet).
    dtype = resolve_dtype(cfg.dtype, load_lm(cfg.lm).device, [r[1] for r in rows[:256]], cfg.lm)
    pcfg.dtype = dtype
    scores: list[tuple[float | None, int]] = []
    chunk = max(cfg.lm_batch_size * 8, 64)  # store as we go, so an interrupted pass keeps what it measured
    for start in range(0, len(rows), chunk):
        texts = [r[1] for r in rows[start:start + chunk]]
        part = score_texts(texts, pcfg)
        scores += part
        table = pa.table({"doc_id": ids[start:start + chunk],
                          "tokens": pa.array([s[1] for s in part], pa.int32()),
                          "perplexity": pa.array([s[0] for s in part], pa.float64())})
        ws.con.register("q_ppl", table)
        ws.con.execute("INSERT INTO quality_perplexity (doc_id, model, max_tokens, dtype, tokens, perplexity, "
                       "run_id) SELECT doc_id, ?, ?, ?, tokens, perplexity, ? FROM q_ppl",
                       [cfg.lm, cfg.max_tokens, dtype, run_id])
        ws.con.unregister("q_ppl")
        progress(len(scores) / len(rows), f"perplexity {len(scores):,}/{len(rows):,} documents")
    return len(scores), sum(s[1] for s in scores if s[0] is not None), dtype


def set_weights(ws: Workspace, weights: dict[str, float]) -> None:
    with ws.transaction():
        ws.con.execute("DELETE FROM quality_weights")
        ws.con.execute("INSERT INTO quality_weights VALUES (?, ?, ?, ?)", [weights[p] for p in PARTS])


def composite_summary(ws: Workspace) -> dict[str, Any]:
    """Which parts the composite could use, and for how many documents; relevance is said unavailable (and
    its weight renormalised away) where the terminology step has not scored the documents."""
    weights = dict(zip(PARTS, ws.query("SELECT * FROM quality_weights LIMIT 1")[0], strict=True))
    # What `quality_parts` would count, without ranking every document: relevance exists where a terms density
    # does, fluency where a perplexity does (on 1M documents 0.1 s against 0.35 s).
    row = ws.query(
        """SELECT count(*), count(*) FILTER (WHERE q.doc_id IN (SELECT doc_id FROM current_term_density)),
                  count(*) FILTER (WHERE q.doc_id IN (SELECT doc_id FROM quality_perplexity_latest
                                                      WHERE perplexity IS NOT NULL)),
                  count(q.informativeness), count(q.safety)
           FROM quality_scored q""")[0]
    total, have = row[0], dict(zip(PARTS, row[1:], strict=True))
    notes = []
    if total and have["relevance"] == 0:
        notes.append("relevance unavailable: no terminology density stored (run `studio terms`); its weight "
                     "is spread over the other parts")
    elif have["relevance"] < total:
        notes.append(f"relevance available for {have['relevance']:,} of {total:,} documents")
    if have["fluency"] < total:
        notes.append(f"fluency (perplexity) available for {have['fluency']:,} of {total:,} documents; the "
                     "others are scored without it (weights renormalised per document)")
    return {"weights": weights, "documents": total, "parts_available": have,
            "relevance_available": have["relevance"] > 0, "notes": notes}


def corpus_summary(ws: Workspace, roles: Sequence[str] = (), corpora: Sequence[str] = ()) -> list[dict[str, Any]]:
    scope, params = scope_sql(ws, FILTER_STEP, roles, corpora)
    # quality_composite has a row per scored document (NULL score where no part exists): it counts them too
    rows = ws.query(
        f"""SELECT s.corpus, any_value(s.role), count(*), count(c.doc_id), count(p.doc_id),
                   median(p.perplexity), median(c.score)
            FROM ({scope}) s LEFT JOIN quality_composite c USING (doc_id)
            LEFT JOIN quality_perplexity_latest p USING (doc_id)
            GROUP BY s.corpus ORDER BY s.corpus""", params)
    keys = ("corpus", "role", "documents", "scored", "perplexity_scored", "median_perplexity", "median_composite")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def score_quality(ws: Workspace, cfg: QualityScoreConfig | None = None,
                  progress: Progress = no_progress) -> QualityScoreResult:
    import time

    cfg = cfg or QualityScoreConfig()
    check_corpora(ws, cfg.corpora)
    weights = parse_weights(",".join(f"{k}={v}" for k, v in cfg.weights.items()))
    params = {k: v for k, v in asdict(cfg).items() if k != "batch_size"}
    with ws.run(SCORE_STEP, params, supersede=False) as run:
        share = 0.5 if cfg.perplexity else 1.0
        t0 = time.perf_counter()
        scored = compute_signals_for(
            ws, run.run_id, cfg, lambda f, m: progress(share * max(f, 0.0), m))
        t1 = time.perf_counter()
        n_ppl = n_tok = 0
        dtype = None
        if cfg.perplexity:
            n_ppl, n_tok, dtype = compute_perplexity_for(
                ws, run.run_id, cfg, lambda f, m: progress(0.5 + 0.5 * max(f, 0.0), m))
            if dtype:
                run.params["perplexity_path"] = dtype  # the inference path (core.fastpath)
        t2 = time.perf_counter()
        set_weights(ws, weights)
        composite = composite_summary(ws)
        result = QualityScoreResult(run.run_id, scored, t1 - t0, n_ppl, n_tok, t2 - t1, dtype or None, composite,
                                    corpus_summary(ws, cfg.roles, cfg.corpora))
        run.counts = {"documents_scored": scored, "perplexity_scored": n_ppl, "perplexity_tokens": n_tok,
                      "relevance_available": composite["relevance_available"]}
    progress(1.0, f"scored {scored:,} documents")
    return result
