"""The quality step: heuristic signals, language-model perplexity, a composite score, and rule-based filters.

Scoring and filtering are separate on purpose:
- `score_quality` computes every signal of `core.quality_signals.SIGNALS` for each document once and stores the
  raw values (`quality_signals`, long format: doc_id, signal, value), plus perplexity for the documents asked
  for (`quality_perplexity`, with the model and truncation length). It records a `quality_score` run.
- `apply_filters` reads the stored values only, checks the chosen rules (presets of `RULES`, thresholds
  overridable) and writes one `decisions` row per dropped document (reason = rule, score = the document's value,
  threshold = the bound, details = every rule it failed). It records a `quality` run that supersedes the last,
  so moving a threshold and applying again re-derives `current_documents` without recomputing anything.
- A random share (default 5%) of what the rules would drop is kept, chosen by a hash of the document id and a
  seed (stable across re-applications), and recorded as 'keep' decisions with reason `random_keep`.

The composite score (view `quality_composite(doc_id, score)`) is a weighted mean of four parts in [0, 1],
weights in `quality_weights` (default relevance 0.3, fluency 0.2, informativeness 0.3, safety 0.2). Parts a
document lacks are left out and the remaining weights renormalised, per document:
- relevance: where the terminology step has scored the document (view `current_term_density`): 0 without any
  term, else the cumulative share (cume_dist) of its density among documents of its language group with terms.
  Relative, because density is per word in English and per character in Chinese.
- fluency: where perplexity was measured: 1 - percent_rank of perplexity within the language group (lowest
  perplexity 1, highest 0). Relative, because a mostly English model finds all Chinese text less likely.
- informativeness (absolute, stored at scoring time): 0.5 * length + 0.25 * lexical diversity +
  0.25 * compression, where length = min(1, ln(1 + words) / ln(201)) (saturates at 200 words),
  lexical diversity = moving-average type-token ratio (window 50), compression = clamp((zlib ratio - 0.2) / 0.4)
  (repetitive text compresses well and scores low).
- safety (absolute): 1 - min(1, flagged_word_ratio / 0.045) (0.045: Data-Juicer's flagged-words default).
"""

from __future__ import annotations

import concurrent.futures
import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from core.flow import scope_sql
from core.models import BUNDLED_LM
from core.parallel import default_workers, process_pool
from core.perplexity import DTYPES as PERPLEXITY_DTYPES
from core.perplexity import PerplexityConfig, resolve_dtype, score_texts
from core.progress import Progress, no_progress
from core.quality_signals import SIGNAL_NAMES, SIGNALS_VERSION, compute_batch, language_group
from core.steps import ScoredAndFiltered, Step, param, score_then_filter, split_recipe
from core.workspace import ROLES, Workspace, WorkspaceError

SCORE_STEP = "quality_score"
FILTER_STEP = "quality"
DEFAULT_ROLES = ("domain", "general")
DEFAULT_WEIGHTS = {"relevance": 0.3, "fluency": 0.2, "informativeness": 0.3, "safety": 0.2}
PARTS = tuple(DEFAULT_WEIGHTS)
SAFETY_SATURATION = 0.045
LENGTH_SATURATION_WORDS = 200


# --- rules ----------------------------------------------------------------------------------------------------
# The one keep-if comparison, for a value and a threshold alike as Python numbers, numpy/pandas columns and SQL.
KEEP_IF: dict[str, Callable[[Any, Any], Any]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                                 "<": operator.lt}


def keeps(keep_if: str, value: Any, threshold: Any) -> Any:
    """Whether `value keep_if threshold` keeps a document: a bool for numbers, a boolean column for a numpy
    array or pandas Series."""
    return KEEP_IF[keep_if](value, threshold)


def keeps_sql(keep_if: str | None, value: str, threshold: str) -> str:
    """The same comparison as SQL over two expressions; with `keep_if` None, a CASE over a `keep_if` column
    (`threshold`'s table alias prefix and all)."""
    if keep_if is not None:
        if keep_if not in KEEP_IF:
            raise ValueError(f"keep_if must be one of {', '.join(KEEP_IF)}, not {keep_if!r}")
        return f"{value} {keep_if} {threshold}"
    column = threshold.rsplit(".", 1)[0] + ".keep_if" if "." in threshold else "keep_if"
    return "CASE " + " ".join(f"WHEN {column} = '{op}' THEN {value} {op} {threshold}" for op in KEEP_IF) + " END"


@dataclass(frozen=True)
class Rule:
    """Keep a document when `value keep_if threshold`; thresholds per language group (None: not applied)."""

    preset: str
    signal: str
    keep_if: str  # '>=', '>', '<=' or '<'
    latin: float | None
    zh: float | None
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.signal}:{'min' if self.keep_if.startswith('>') else 'max'}"

    def threshold(self, group: str) -> float | None:
        return self.zh if group == "zh" else self.latin

    def keeps(self, value: float, group: str) -> bool:
        thr = self.threshold(group)
        if thr is None or value is None or math.isnan(value):
            return True
        return bool(keeps(self.keep_if, value, thr))


_G = "gopher_quality"
_R = "gopher_repetition"
RULES: tuple[Rule, ...] = (
    # Gopher quality: datatrove defaults; Chinese counts jieba words, whose mean length is 1-4 characters.
    Rule(_G, "word_count", ">=", 50, 50),
    Rule(_G, "word_count", "<=", 100_000, 100_000),
    Rule(_G, "mean_word_length", ">=", 3, 1, "Chinese: characters per jieba word"),
    Rule(_G, "mean_word_length", "<=", 10, 4, "Chinese: characters per jieba word"),
    Rule(_G, "symbol_word_ratio", "<=", 0.1, 0.1),
    Rule(_G, "bullet_line_frac", "<=", 0.9, 0.9),
    Rule(_G, "ellipsis_line_frac", "<=", 0.3, 0.3),
    Rule(_G, "alpha_word_frac", ">=", 0.8, 0.8),
    Rule(_G, "stop_word_count", ">=", 2, 2, "Chinese: Chinese function words"),
    # Gopher repetition (Rae et al. 2021, table A1)
    Rule(_R, "dup_para_frac", "<=", 0.3, 0.3),
    Rule(_R, "dup_para_char_frac", "<=", 0.2, 0.2),
    Rule(_R, "dup_line_frac", "<=", 0.3, 0.3),
    Rule(_R, "dup_line_char_frac", "<=", 0.2, 0.2),
    Rule(_R, "top_2gram_char_frac", "<=", 0.20, 0.20),
    Rule(_R, "top_3gram_char_frac", "<=", 0.18, 0.18),
    Rule(_R, "top_4gram_char_frac", "<=", 0.16, 0.16),
    *(Rule(_R, f"dup_{n}gram_char_frac", "<=", thr, thr)
      for n, thr in zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10), strict=True)),
    # C4: a page needs 5 sentences in its kept lines; lorem ipsum and curly brackets drop it
    Rule("c4", "c4_sentence_count", ">=", 5, 5),
    Rule("c4", "c4_lorem_ipsum", "<=", 0, 0),
    Rule("c4", "c4_curly_bracket", "<=", 0, 0),
    # FineWeb (datatrove: drop when ratio <= 0.12, >= 0.67, >= 0.01, > 0.3)
    Rule("fineweb", "line_punct_ratio", ">", 0.12, 0.12),
    Rule("fineweb", "short_line_ratio", "<", 0.67, 0.67),
    Rule("fineweb", "char_dup_ratio", "<", 0.01, 0.01),
    Rule("fineweb", "newline_ratio", "<=", 0.3, 0.3),
    # flagged words (data/flagged_words.txt)
    Rule("safety", "flagged_word_ratio", "<=", SAFETY_SATURATION, SAFETY_SATURATION),
    # perplexity bands: garbage above, boilerplate below; only documents with a stored perplexity are checked.
    # Measured with the bundled SmolLM2 at 128 tokens on the demo corpora: prose medians 16-65 (Chinese 16-25),
    # 90th percentiles under 400; word-shuffled MedQuAD paragraphs median ~960; lone headings 3,000-100,000.
    Rule("perplexity", "perplexity", ">=", 3, 3, "below: boilerplate or memorised text"),
    Rule("perplexity", "perplexity", "<=", 500, 500, "above: garbage, word salad, fragments"),
    # the composite score (off unless chosen)
    Rule("composite", "composite", ">=", 0.3, 0.3, "weighted mean of relevance, fluency, informativeness, safety"),
)
PRESETS: tuple[str, ...] = tuple(dict.fromkeys(r.preset for r in RULES))
# C4's 5-sentence page rule is for whole web pages; most corpora here are already paragraphs, so it is opt-in.
DEFAULT_PRESETS = ("gopher_quality", "gopher_repetition", "fineweb", "safety", "perplexity")
RULE_BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}


def select_rules(names: Iterable[str] | None = None,
                 overrides: dict[str, float] | None = None) -> list[tuple[Rule, str, float]]:
    """(rule, language group, threshold) for every rule chosen by preset or rule name, with thresholds
    overridden by `overrides` ({'word_count:min': 20} for both groups, {'word_count:min@zh': 30} for one)."""
    chosen: list[Rule] = []
    for name in (names or DEFAULT_PRESETS):
        name = name.strip()
        if not name:
            continue
        if name in PRESETS:
            chosen += [r for r in RULES if r.preset == name]
        elif name in RULE_BY_NAME:
            chosen.append(RULE_BY_NAME[name])
        else:
            raise ValueError(f"unknown rule or preset {name!r} (presets: {', '.join(PRESETS)}; "
                             f"rules: {', '.join(RULE_BY_NAME)})")
    chosen = list(dict.fromkeys(chosen))
    overrides = dict(overrides or {})
    for key in overrides:
        base = key.split("@", 1)[0]
        if base not in RULE_BY_NAME:
            raise ValueError(f"cannot set a threshold for unknown rule {base!r}")
        if "@" in key and key.split("@", 1)[1] not in ("latin", "zh"):
            raise ValueError(f"language group of {key!r} must be latin or zh")
        if RULE_BY_NAME[base] not in chosen:  # setting a threshold chooses the rule
            chosen.append(RULE_BY_NAME[base])
    out = []
    for rule in chosen:
        for group in ("latin", "zh"):
            thr = overrides.get(f"{rule.name}@{group}", overrides.get(rule.name, rule.threshold(group)))
            if thr is not None:
                out.append((rule, group, float(thr)))
    return out


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """'RULE=VALUE' strings (as the command line takes them) into overrides."""
    out: dict[str, float] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"threshold {item!r} must look like RULE=VALUE, e.g. word_count:min=20")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = float(value)
        except ValueError as exc:
            raise ValueError(f"threshold {item!r}: {value!r} is not a number") from exc
    return out


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


# --- scope: every step reads `core.flow.scope_sql(ws, FILTER_STEP, ...)`, what the steps before the filter left
def _check_corpora(ws: Workspace, corpora: Sequence[str]) -> None:
    known = {c["name"] for c in ws.corpora()}
    unknown = [c for c in corpora if c not in known]
    if unknown:
        raise WorkspaceError(f"unknown corpus {', '.join(unknown)} (known: {', '.join(sorted(known))})")


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
    """The long `quality_signals` rows and the `quality_scored` rows of one computed batch."""
    n = len(doc_ids)
    values = np.asarray(columns, dtype=np.float64)  # signals x documents
    ids = pa.array(doc_ids, pa.string())
    signals = pa.table({
        "doc_id": pa.concat_arrays([ids] * len(SIGNAL_NAMES)) if n else pa.array([], pa.string()),
        "signal": pa.array(np.repeat(np.array(SIGNAL_NAMES, dtype=object), n), pa.string()),
        "value": pa.array(values.reshape(-1)),
    })
    col = {name: values[i] for i, name in enumerate(SIGNAL_NAMES)}
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
        ws.con.execute("DELETE FROM quality_signals WHERE doc_id IN (SELECT doc_id FROM q_batch_ids)")
        ws.con.execute("DELETE FROM quality_scored WHERE doc_id IN (SELECT doc_id FROM q_batch_ids)")
        ws.con.register("q_signals", signals)
        ws.con.execute("INSERT INTO quality_signals SELECT doc_id, signal, value, ? FROM q_signals", [run_id])
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
    row = ws.query("SELECT count(*), count(relevance), count(fluency), count(informativeness), count(safety) "
                   "FROM quality_parts")[0]
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
    rows = ws.query(
        f"""SELECT s.corpus, any_value(s.role), count(*), count(q.doc_id), count(p.doc_id),
                   median(p.perplexity), median(c.score)
            FROM ({scope}) s LEFT JOIN quality_scored q USING (doc_id)
            LEFT JOIN quality_perplexity_latest p USING (doc_id) LEFT JOIN quality_composite c USING (doc_id)
            GROUP BY s.corpus ORDER BY s.corpus""", params)
    keys = ("corpus", "role", "documents", "scored", "perplexity_scored", "median_perplexity", "median_composite")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def score_quality(ws: Workspace, cfg: QualityScoreConfig | None = None,
                  progress: Progress = no_progress) -> QualityScoreResult:
    import time

    cfg = cfg or QualityScoreConfig()
    _check_corpora(ws, cfg.corpora)
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


# --- filtering ------------------------------------------------------------------------------------------------
@dataclass
class QualityFilterConfig:
    rules: list[str] = param(list(DEFAULT_PRESETS), always=True, show_default=False,
                             help=f"comma-separated presets or rule names (presets: {', '.join(PRESETS)}; default: "
                                  f"{','.join(DEFAULT_PRESETS)}); see --list-rules")
    thresholds: dict[str, float] = param(
        default_factory=dict, flag="--threshold", repeat=True, metavar="RULE=VALUE", show_default=False,
        parse=parse_thresholds, render=lambda thresholds: [f"{k}={v:g}" for k, v in thresholds.items()],
        help="override a threshold, e.g. word_count:min=20 or perplexity:max@zh=5000 (one language group: latin "
             "or zh); repeatable; naming a rule also chooses it")
    # the command line's --role / --corpus are the scoring's: one scope for both (QualityStepConfig.one_scope)
    roles: list[str] = param(list(DEFAULT_ROLES), cli=False, help="roles filtered")
    corpora: list[str] = param([], cli=False, help="only these corpora")
    # recorded as 'keep' / random_keep
    keep_share: float = param(0.05, help="random share of would-be drops kept anyway, recorded as random_keep "
                                         "(default 0.05)")
    seed: int = param(0, help="seed of the random keep share (default 0)")

    def validate(self) -> None:
        if not 0 <= self.keep_share < 1:
            raise ValueError("the random keep share must be in [0, 1)")


@dataclass
class QualityFilterResult:
    run_id: str | None
    documents: int
    dropped: int
    randomly_kept: int
    by_rule: dict[str, int]
    corpora: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rules_table(cfg: QualityFilterConfig) -> pa.Table:
    chosen = select_rules(cfg.rules, cfg.thresholds)
    return pa.table({
        "rule": [r.name for r, _, _ in chosen], "preset": [r.preset for r, _, _ in chosen],
        "signal": [r.signal for r, _, _ in chosen], "keep_if": [r.keep_if for r, _, _ in chosen],
        "language_group": [g for _, g, _ in chosen], "threshold": pa.array([t for _, _, t in chosen], pa.float64()),
        "ord": pa.array(range(len(chosen)), pa.int32()),
    })


def _verdict_sql(ws: Workspace, cfg: QualityFilterConfig) -> tuple[str, list[Any]]:
    """Per failing document: first failed rule (in preset order), its value and threshold, every failure,
    and whether the random keep share spares it. Needs `q_rules` registered."""
    scope, params = scope_sql(ws, FILTER_STEP, cfg.roles, cfg.corpora)
    sql = f"""
        WITH scope AS (SELECT s.*, q.language_group FROM ({scope}) s JOIN quality_scored q USING (doc_id)),
        fails AS (
            SELECT s.doc_id, s.corpus, s.language_group, r.rule, r.preset, r.keep_if, r.threshold, r.ord,
                   v.value
            FROM scope s JOIN quality_values v ON v.doc_id = s.doc_id
            JOIN q_rules r ON r.signal = v.signal AND r.language_group = s.language_group
            WHERE NOT isnan(v.value) AND NOT {keeps_sql(None, 'v.value', 'r.threshold')}),
        per_doc AS (
            SELECT doc_id, any_value(corpus) AS corpus, any_value(language_group) AS language_group,
                   arg_min(rule, ord) AS rule, arg_min(preset, ord) AS preset, arg_min(value, ord) AS value,
                   arg_min(threshold, ord) AS threshold, arg_min(keep_if, ord) AS keep_if,
                   list(struct_pack(rule := rule, value := value, threshold := threshold, keep_if := keep_if)
                        ORDER BY ord) AS failed
            FROM fails GROUP BY doc_id)
        SELECT *, ('0x' || substr(md5(doc_id || ':' || ?), 1, 12))::UBIGINT / 281474976710656.0 < ?
                  AS randomly_kept
        FROM per_doc
    """
    return sql, params + [str(cfg.seed), cfg.keep_share]


def _with_rules(ws: Workspace, cfg: QualityFilterConfig):
    ws.con.register("q_rules", rules_table(cfg))


def filter_preview(ws: Workspace, cfg: QualityFilterConfig | None = None) -> QualityFilterResult:
    """What `apply_filters` would do, from stored values, without writing anything."""
    cfg = cfg or QualityFilterConfig()
    cfg.validate()
    _check_corpora(ws, cfg.corpora)
    _with_rules(ws, cfg)
    try:
        return _summarise(ws, cfg, None)
    finally:
        ws.con.unregister("q_rules")


def _summarise(ws: Workspace, cfg: QualityFilterConfig, run_id: str | None) -> QualityFilterResult:
    sql, params = _verdict_sql(ws, cfg)
    scope, scope_params = scope_sql(ws, FILTER_STEP, cfg.roles, cfg.corpora)
    by_rule = dict(ws.query(f"SELECT rule, count(*) FROM ({sql}) WHERE NOT randomly_kept GROUP BY rule "
                            "ORDER BY 2 DESC", params))
    rows = ws.query(
        f"""SELECT s.corpus, count(*) AS documents, count(q.doc_id) AS scored,
                   count(v.doc_id) FILTER (WHERE NOT v.randomly_kept) AS dropped,
                   count(v.doc_id) FILTER (WHERE v.randomly_kept) AS randomly_kept
            FROM ({scope}) s LEFT JOIN quality_scored q USING (doc_id) LEFT JOIN ({sql}) v USING (doc_id)
            GROUP BY s.corpus ORDER BY s.corpus""", scope_params + params)
    corpora = [dict(zip(("corpus", "documents", "scored", "dropped", "randomly_kept"), r, strict=True))
               for r in rows]
    for c in corpora:
        c["kept"] = c["documents"] - c["dropped"]
    return QualityFilterResult(run_id, sum(c["documents"] for c in corpora), sum(c["dropped"] for c in corpora),
                               sum(c["randomly_kept"] for c in corpora), by_rule, corpora)


def apply_filters(ws: Workspace, cfg: QualityFilterConfig | None = None,
                  progress: Progress = no_progress) -> QualityFilterResult:
    """Write a `decisions` row for every document the chosen rules drop (and the random keeps), superseding
    the previous quality filter run."""
    cfg = cfg or QualityFilterConfig()
    cfg.validate()
    _check_corpora(ws, cfg.corpora)
    scope, scope_params = scope_sql(ws, FILTER_STEP, cfg.roles, cfg.corpora)
    unscored = int(ws.scalar(f"SELECT count(*) FROM ({scope}) s WHERE NOT EXISTS "
                             "(SELECT 1 FROM quality_scored q WHERE q.doc_id = s.doc_id)", scope_params))
    params = {**asdict(cfg), "resolved": [
        {"rule": r.name, "group": g, "keep_if": r.keep_if, "threshold": t}
        for r, g, t in select_rules(cfg.rules, cfg.thresholds)]}
    progress(-1.0, "checking rules against stored values")
    _with_rules(ws, cfg)
    try:
        with ws.run(FILTER_STEP, params) as run:
            sql, sql_params = _verdict_sql(ws, cfg)
            table = ws.con.sql(
                f"""SELECT doc_id, CASE WHEN randomly_kept THEN 'keep' ELSE 'drop' END AS verdict,
                           CASE WHEN randomly_kept THEN 'random_keep' ELSE rule END AS reason,
                           value AS score, threshold,
                           to_json(struct_pack(preset := preset, rule := rule, keep_if := keep_if,
                                               language_group := language_group, failed := failed,
                                               random_keep := randomly_kept, keep_share := ?::DOUBLE,
                                               seed := ?::INTEGER)) AS details
                    FROM ({sql}) ORDER BY doc_id""",
                params=[cfg.keep_share, cfg.seed, *sql_params]).to_arrow_table()
            ws.record_decisions(run, table)
            result = _summarise(ws, cfg, run.run_id)
            run.counts = {"documents": result.documents, "dropped": result.dropped,
                          "randomly_kept": result.randomly_kept, "unscored": unscored,
                          **{f"rule:{k}": v for k, v in result.by_rule.items()}}
    finally:
        ws.con.unregister("q_rules")
    progress(1.0, f"dropped {result.dropped:,} of {result.documents:,} documents")
    return result


# --- what the page shows --------------------------------------------------------------------------------------
def signal_values(ws: Workspace, signal: str, roles: Sequence[str] = DEFAULT_ROLES,
                  corpora: Sequence[str] = ()):  # -> pandas.DataFrame
    """Stored values of one signal (or 'perplexity' / 'composite') with corpus and language group."""
    scope, params = scope_sql(ws, FILTER_STEP, roles, corpora)
    return ws.df(
        f"""SELECT s.doc_id, s.corpus, q.language_group, v.value FROM ({scope}) s
            JOIN quality_scored q USING (doc_id) JOIN quality_values v ON v.doc_id = s.doc_id
            WHERE v.signal = ? AND NOT isnan(v.value)""", params + [signal])


def documents_near_threshold(ws: Workspace, signal: str, threshold: float, keep_if: str, corpus: str,
                             group: str | None = None, n: int = 3) -> dict[str, list[dict[str, Any]]]:
    """The `n` documents of a corpus just on the dropped side and just on the kept side of a threshold."""
    kept_sql = keeps_sql(keep_if, "v.value", "?")
    base = f"""SELECT d.doc_id, v.value, d.text, q.language_group FROM quality_values v
               JOIN documents d USING (doc_id) JOIN quality_scored q USING (doc_id)
               WHERE v.signal = ? AND d.corpus = ? AND NOT isnan(v.value)
               {'AND q.language_group = ?' if group else ''}"""
    params: list[Any] = [signal, corpus] + ([group] if group else [])
    closeness = "abs(v.value - ?), d.doc_id"
    keys = ("doc_id", "value", "text", "language_group")
    kept = ws.query(f"{base} AND {kept_sql} ORDER BY {closeness} LIMIT ?", params + [threshold, threshold, n])
    dropped = ws.query(f"{base} AND NOT ({kept_sql}) ORDER BY {closeness} LIMIT ?",
                       params + [threshold, threshold, n])
    return {"dropped": [dict(zip(keys, r, strict=True)) for r in dropped],
            "kept": [dict(zip(keys, r, strict=True)) for r in kept]}


def scored_documents(ws: Workspace) -> int:
    """How many documents have stored quality signals (of any version)."""
    return int(ws.scalar("SELECT count(*) FROM quality_scored"))


# --- the demo -------------------------------------------------------------------------------------------------
@dataclass
class QualityStepConfig:
    """The quality step as a recipe and `studio score` run it: score (heuristics; perplexity on a bounded sample
    per corpus with `perplexity`, `sample_per_corpus`, `max_tokens`), then filter with the rules and thresholds.
    One table holds both configs' fields; `roles` and `corpora` go to both. (The filter comes first so that the
    command line, like `--help`, names the rules first.)"""

    filter: QualityFilterConfig = field(default_factory=QualityFilterConfig)
    score: QualityScoreConfig = field(default_factory=QualityScoreConfig)

    def one_scope(self) -> QualityStepConfig:
        """The filter reads the corpora scored: the command line's --role / --corpus set both."""
        self.filter.roles, self.filter.corpora = list(self.score.roles), list(self.score.corpora)
        return self

    def validate(self) -> None:
        self.filter.validate()


def _summary(result: ScoredAndFiltered) -> dict[str, Any]:
    scored, applied = result.score, result.filter
    return {"score_run": scored.run_id, "filter_run": applied.run_id, "documents_scored": scored.documents_scored,
            "perplexity_scored": scored.perplexity_scored, "documents": applied.documents,
            "dropped": applied.dropped, "randomly_kept": applied.randomly_kept,
            "relevance_available": scored.composite["relevance_available"]}


def _recipe_configs(table: dict[str, Any]) -> dict[str | None, QualityStepConfig]:
    score, filter_ = split_recipe(table, QualityScoreConfig, QualityFilterConfig, step="quality",
                                  shared=("roles", "corpora"))
    return {None: QualityStepConfig(filter=filter_, score=score)}


REGISTERED_STEP = Step("quality", QualityStepConfig, score_then_filter(score_quality, apply_filters),
                       command="score", summary=_summary, recipe_configs=_recipe_configs)
