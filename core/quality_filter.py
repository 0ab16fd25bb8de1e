"""The quality filter: the chosen rules checked against the stored values only (so thresholds move without
recomputing), a seeded random share of would-be drops kept, one decision per dropped document; and the stored
values and documents either side of a threshold that the page shows. See `core.quality`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from core.corpus import sampled
from core.flow import scope_sql
from core.progress import Progress, no_progress
from core.quality_rules import (
    DEFAULT_PRESETS,
    DEFAULT_ROLES,
    FILTER_STEP,
    PRESETS,
    check_corpora,
    keeps_sql,
    parse_thresholds,
    select_rules,
)
from core.steps import param
from core.workspace import Workspace


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


def values_source(signal: str) -> str:
    """A SELECT of (doc_id, signal, value) holding the stored values of `signal`, from the one table or view that
    has them. The `quality_values` view unions all three, but a query through it ranks every document for the
    composite (window functions over the whole workspace) even when no composite value is asked for: on 1M
    documents that, and the union's worse join plan, cost the quality filter's preview 1.0 s against 0.65 s."""
    if signal == "perplexity":
        return ("SELECT doc_id, 'perplexity' AS signal, perplexity AS value FROM quality_perplexity_latest "
                "WHERE perplexity IS NOT NULL")
    if signal == "composite":
        return "SELECT doc_id, 'composite' AS signal, score AS value FROM quality_composite WHERE score IS NOT NULL"
    return "SELECT doc_id, signal, value FROM quality_signals"


def _verdict_sql(ws: Workspace, cfg: QualityFilterConfig) -> tuple[str, list[Any]]:
    """Per failing document: first failed rule (in preset order), its value and threshold, every failure,
    and whether the random keep share spares it. Needs `q_rules` registered."""
    scope, params = scope_sql(ws, FILTER_STEP, cfg.roles, cfg.corpora)
    # One join per table the chosen rules' values live in (see values_source), their failures stacked.
    sources = dict.fromkeys(values_source(rule.signal) for rule, _, _ in select_rules(cfg.rules, cfg.thresholds))
    fails = "\n            UNION ALL\n".join(
        f"""SELECT s.doc_id, s.corpus, s.language_group, r.rule, r.preset, r.keep_if, r.threshold, r.ord,
                   v.value
            FROM scope s JOIN ({source}) v ON v.doc_id = s.doc_id
            JOIN q_rules r ON r.signal = v.signal AND r.language_group = s.language_group
            WHERE NOT isnan(v.value) AND NOT {keeps_sql(None, 'v.value', 'r.threshold')}""" for source in sources)
    sql = f"""
        WITH scope AS (SELECT s.*, q.language_group FROM ({scope}) s JOIN quality_scored q USING (doc_id)),
        fails AS (
            {fails}),
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
    check_corpora(ws, cfg.corpora)
    _with_rules(ws, cfg)
    try:
        return _summarise(ws, cfg, None)
    finally:
        ws.con.unregister("q_rules")


def _summarise(ws: Workspace, cfg: QualityFilterConfig, run_id: str | None) -> QualityFilterResult:
    sql, params = _verdict_sql(ws, cfg)
    scope, scope_params = scope_sql(ws, FILTER_STEP, cfg.roles, cfg.corpora)
    # The verdicts are computed once (the join over every stored value is the cost: 35 values a document) and
    # read twice, per rule and per corpus.
    verdicts = ws.con.sql(f"SELECT doc_id, rule, randomly_kept FROM ({sql})", params=params).to_arrow_table()
    ws.con.register("q_verdicts", verdicts)
    try:
        by_rule = dict(ws.query("SELECT rule, count(*) FROM q_verdicts WHERE NOT randomly_kept GROUP BY rule "
                                "ORDER BY 2 DESC"))
        rows = ws.query(
            f"""SELECT s.corpus, count(*) AS documents, count(q.doc_id) AS scored,
                       count(v.doc_id) FILTER (WHERE NOT v.randomly_kept) AS dropped,
                       count(v.doc_id) FILTER (WHERE v.randomly_kept) AS randomly_kept
                FROM ({scope}) s LEFT JOIN quality_scored q USING (doc_id) LEFT JOIN q_verdicts v USING (doc_id)
                GROUP BY s.corpus ORDER BY s.corpus""", scope_params)
    finally:
        ws.con.unregister("q_verdicts")
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
    check_corpora(ws, cfg.corpora)
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
def _values_sql(ws: Workspace, signal: str, roles: Sequence[str], corpora: Sequence[str],
                group: str | None) -> tuple[str, list[Any]]:
    """FROM and WHERE of the stored values of one signal (its `?` the last parameter but the group's) in scope."""
    scope, params = scope_sql(ws, FILTER_STEP, roles, corpora)
    return (f"""FROM ({scope}) s JOIN quality_scored q USING (doc_id) JOIN ({values_source(signal)}) v
                ON v.doc_id = s.doc_id
                WHERE v.signal = ? AND NOT isnan(v.value){' AND q.language_group = ?' if group else ''}""", params)


def signal_values(ws: Workspace, signal: str, roles: Sequence[str] = DEFAULT_ROLES, corpora: Sequence[str] = (),
                  group: str | None = None, sample_rows: int | None = None):  # -> pandas.DataFrame
    """Stored values of one signal (or 'perplexity' / 'composite') with corpus and language group; only those of
    language `group` with one; with `sample_rows`, a repeatable reservoir sample of at most that many (the page's
    histogram: on a million documents the whole column would cost the page seconds; its counts come from
    `rule_counts`)."""
    body, params = _values_sql(ws, signal, roles, corpora, group)
    sql = f"SELECT s.doc_id, s.corpus, q.language_group, v.value {body}"
    if sample_rows is not None:
        sql = sampled(sql, sample_rows)
    return ws.df(sql, params + [signal] + ([group] if group else []))


def rule_counts(ws: Workspace, signal: str, keep_if: str, threshold: float, group: str,
                roles: Sequence[str] = DEFAULT_ROLES, corpora: Sequence[str] = ()):  # -> pandas.DataFrame
    """Per corpus, the documents of language `group` with a stored value of `signal` and how many of them
    `value keep_if threshold` keeps (columns corpus, documents, kept), counted in DuckDB over every document."""
    body, params = _values_sql(ws, signal, roles, corpora, group)
    return ws.df(f"SELECT s.corpus, count(*) AS documents, "
                 f"count(*) FILTER (WHERE {keeps_sql(keep_if, 'v.value', '?')}) AS kept "
                 f"{body} GROUP BY s.corpus ORDER BY s.corpus", [threshold] + params + [signal, group])


def documents_near_threshold(ws: Workspace, signal: str, threshold: float, keep_if: str, corpus: str,
                             group: str | None = None, n: int = 3) -> dict[str, list[dict[str, Any]]]:
    """The `n` documents of a corpus just on the dropped side and just on the kept side of a threshold."""
    kept_sql = keeps_sql(keep_if, "v.value", "?")
    base = f"""SELECT d.doc_id, v.value, d.text, q.language_group FROM ({values_source(signal)}) v
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
