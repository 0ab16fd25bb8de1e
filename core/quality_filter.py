"""The quality filter: the chosen rules checked against the stored values only (so thresholds move without
recomputing), a seeded random share of would-be drops kept, one decision per dropped document; and the stored
values and documents either side of a threshold that the page shows. See `core.quality`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from core.corpus import document_texts
from core.flow import scope_sql
from core.progress import Progress, no_progress
from core.quality_rules import (
    DEFAULT_PRESETS,
    DEFAULT_ROLES,
    FILTER_STEP,
    PRESETS,
    Rule,
    check_corpora,
    keeps,
    keeps_sql,
    parse_thresholds,
    select_rules,
)
from core.quality_signals import SIGNAL_NAMES
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
    """A SELECT of (doc_id, signal, value) holding the stored values of one signal, read from the one place that
    has them: its column of `quality_signal_values`, perplexity's latest table, or the composite's view (the
    `quality_values` view unions all three, but a query through it ranks every document for the composite even
    when no composite value is asked for)."""
    if signal == "perplexity":
        return ("SELECT doc_id, 'perplexity' AS signal, perplexity AS value FROM quality_perplexity_latest "
                "WHERE perplexity IS NOT NULL")
    if signal == "composite":
        return "SELECT doc_id, 'composite' AS signal, score AS value FROM quality_composite WHERE score IS NOT NULL"
    return f"SELECT doc_id, '{_stored_signal(signal)}' AS signal, \"{signal}\" AS value FROM quality_signal_values"


def _stored_signal(signal: str) -> str:
    if signal not in SIGNAL_NAMES:  # (a column name in SQL: only the known ones)
        raise ValueError(f"unknown quality signal {signal!r}")
    return signal


def _value_column(signal: str) -> str:
    """The column holding a signal's value in the verdict's rows (stored signals, perplexity, the composite)."""
    return {"perplexity": "perplexity", "composite": "composite"}.get(signal) or f'"{_stored_signal(signal)}"'


def _checked_sql(ws: Workspace, cfg: QualityFilterConfig
                 ) -> tuple[str, list[Any], list[tuple[Rule, float, str]]]:
    """A row per document in scope: corpus, whether it has stored signals (`scored`), the index `ord` of the first
    rule it fails (in preset order; NULL when it fails none), that rule's `value`, whether the random keep share
    spares it, and every signal's value. One pass over a row per document: a rule fails where its language
    group is the document's and `NOT (value keep_if threshold)` (a missing or NaN value fails nothing). Also
    returns the rules checked, in `ord` order: (rule, threshold, its failure condition over the same columns)."""
    scope, params = scope_sql(ws, FILTER_STEP, cfg.roles, cfg.corpora)
    chosen = select_rules(cfg.rules, cfg.thresholds)
    fails: list[str] = []
    for rule, group, threshold in chosen:
        if not math.isfinite(threshold):
            raise ValueError(f"the threshold of {rule.name} must be a finite number, not {threshold!r}")
        value = _value_column(rule.signal)
        fails.append(f"(language_group = '{group}' AND NOT isnan({value}) "
                     f"AND NOT {keeps_sql(rule.keep_if, value, repr(float(threshold)))})")
    signals = {rule.signal for rule, _, _ in chosen}
    first = " ".join(f"WHEN {fail} THEN {i}" for i, fail in enumerate(fails))
    value_of_first = " ".join(f"WHEN {i} THEN {_value_column(rule.signal)}" for i, (rule, _, _) in enumerate(chosen))
    sql = f"""
        SELECT *, CASE ord {value_of_first} END AS value,
               CASE WHEN ord IS NOT NULL THEN ('0x' || substr(md5(doc_id || ':' || ?), 1, 12))::UBIGINT
                                              / 281474976710656.0 < ? END AS randomly_kept
        FROM (
            SELECT s.doc_id, s.corpus, q.language_group, q.doc_id IS NOT NULL AS scored,
                   v.* EXCLUDE (doc_id, run_id),
                   {'p.perplexity,' if 'perplexity' in signals else ''}
                   {'c.score AS composite,' if 'composite' in signals else ''}
                   CASE {first} END AS ord
            FROM ({scope}) s LEFT JOIN quality_scored q USING (doc_id)
            LEFT JOIN quality_signal_values v USING (doc_id)
            {'LEFT JOIN quality_perplexity_latest p USING (doc_id)' if 'perplexity' in signals else ''}
            {'LEFT JOIN quality_composite c USING (doc_id)' if 'composite' in signals else ''})
    """
    checks = [(rule, threshold, fail) for (rule, _, threshold), fail in zip(chosen, fails, strict=True)]
    return sql, [str(cfg.seed), cfg.keep_share] + params, checks


def _verdict_sql(ws: Workspace, cfg: QualityFilterConfig) -> tuple[str, list[Any]]:
    """Per failing document: the first failed rule with its value and threshold, every failed rule (`failed`),
    and whether the random keep share spares it (`randomly_kept`). Needs `q_rules` registered (the rules'
    names and presets by `ord`)."""
    checked, params, checks = _checked_sql(ws, cfg)
    entries = ", ".join(
        f"CASE WHEN {fail} THEN struct_pack(rule := '{rule.name}', value := {_value_column(rule.signal)}, "
        f"threshold := {float(threshold)!r}::DOUBLE, keep_if := '{rule.keep_if}') END"
        for rule, threshold, fail in checks)
    sql = f"""
        SELECT doc_id, corpus, language_group, r.rule, r.preset, value, r.threshold, r.keep_if,
               list_filter([{entries}], lambda x: x IS NOT NULL) AS failed, randomly_kept
        FROM ({checked}) JOIN (SELECT ord, rule, preset, threshold, keep_if FROM q_rules) r USING (ord)
    """
    return sql, params


def _with_rules(ws: Workspace, cfg: QualityFilterConfig):
    ws.con.register("q_rules", rules_table(cfg))


def filter_preview(ws: Workspace, cfg: QualityFilterConfig | None = None) -> QualityFilterResult:
    """What `apply_filters` would do, from stored values, without writing anything."""
    cfg = cfg or QualityFilterConfig()
    cfg.validate()
    check_corpora(ws, cfg.corpora)
    return _summarise(ws, cfg, None)


def _summarise(ws: Workspace, cfg: QualityFilterConfig, run_id: str | None) -> QualityFilterResult:
    """Counts per corpus and drops per first failed rule, in one pass over the checked documents."""
    checked, params, checks = _checked_sql(ws, cfg)
    rows = ws.query(
        f"""SELECT grouping(corpus) AS per_rule, corpus, ord, count(*) AS documents,
                   count(*) FILTER (WHERE scored) AS scored,
                   count(*) FILTER (WHERE NOT randomly_kept) AS dropped,
                   count(*) FILTER (WHERE randomly_kept) AS randomly_kept
            FROM ({checked}) GROUP BY GROUPING SETS ((corpus), (ord)) ORDER BY per_rule, corpus, ord""", params)
    by_rule: dict[str, int] = {}
    for per_rule, _, ord_, _, _, dropped, _ in rows:
        if per_rule and ord_ is not None and dropped:  # a rule checked in both language groups is one rule
            name = checks[ord_][0].name
            by_rule[name] = by_rule.get(name, 0) + dropped
    by_rule = dict(sorted(by_rule.items(), key=lambda kv: -kv[1]))
    corpora = [{"corpus": corpus, "documents": documents, "scored": scored, "dropped": dropped,
                "randomly_kept": randomly_kept, "kept": documents - dropped}
               for per_rule, corpus, _, documents, scored, dropped, randomly_kept in rows if not per_rule]
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


@dataclass
class SignalDistribution:
    """Every stored value of one signal in scope (one language group), per corpus in ascending order (a fixed
    order, so the sample below is repeatable): the page's histogram sample and its per-corpus kept counts at any
    threshold come from it without another query, so a moved threshold is counted in numpy over every document
    instead of re-joining a million rows."""

    signal: str
    values: dict[str, np.ndarray]  # corpus -> its documents' values, ascending (NaN left out)

    @property
    def documents(self) -> int:
        return sum(len(v) for v in self.values.values())

    def counts(self, keep_if: str, threshold: float):  # -> pandas.DataFrame
        """Per corpus, the documents and how many `value keep_if threshold` keeps (columns corpus, documents,
        kept), with the rules' own comparison (`keeps`)."""
        import pandas as pd

        return pd.DataFrame([(corpus, len(values), int(keeps(keep_if, values, threshold).sum()))
                             for corpus, values in self.values.items()], columns=["corpus", "documents", "kept"])

    def sample(self, rows: int, seed: int = 7):  # -> pandas.DataFrame
        """A repeatable uniform sample of at most `rows` (corpus, value) pairs: the histogram's (shipping every
        value of a million documents to the browser would cost the page seconds)."""
        import pandas as pd

        corpora = np.repeat(np.array(list(self.values), dtype=object), [len(v) for v in self.values.values()])
        values = np.concatenate(list(self.values.values())) if self.values else np.array([], dtype=np.float64)
        if len(values) > rows:
            keep = np.sort(np.random.default_rng(seed).choice(len(values), rows, replace=False))
            corpora, values = corpora[keep], values[keep]
        return pd.DataFrame({"corpus": corpora, "value": values})


def signal_distribution(ws: Workspace, signal: str, roles: Sequence[str] = DEFAULT_ROLES,
                        corpora: Sequence[str] = (), group: str | None = None) -> SignalDistribution:
    """The stored values of one signal (or 'perplexity' / 'composite') of the documents in scope, of language
    `group` when given, sorted per corpus."""
    body, params = _values_sql(ws, signal, roles, corpora, group)
    table = ws.con.sql(f"SELECT s.corpus, v.value {body} ORDER BY s.corpus, v.value",
                       params=params + [signal] + ([group] if group else [])).to_arrow_table()
    names = table.column("corpus").to_numpy(zero_copy_only=False)
    values = table.column("value").to_numpy()
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]]) if len(names) else np.array([], dtype=int)
    ends = np.r_[starts[1:], len(names)]
    return SignalDistribution(signal, {str(names[a]): values[a:b] for a, b in zip(starts, ends, strict=True)})


def documents_near_threshold(ws: Workspace, signal: str, threshold: float, keep_if: str, corpus: str,
                             group: str | None = None, n: int = 3) -> dict[str, list[dict[str, Any]]]:
    """The `n` documents of a corpus (those no earlier step dropped) just on the dropped side and just on the
    kept side of a threshold. The sides are picked without the texts, which are read for the picked ones only
    (reading every candidate's text cost four times the pick on a million documents)."""
    scope, scope_params = scope_sql(ws, FILTER_STEP, (), [corpus])
    kept_sql = keeps_sql(keep_if, "v.value", "?")
    base = f"""SELECT s.doc_id, v.value, q.language_group FROM ({scope}) s
               JOIN ({values_source(signal)}) v USING (doc_id) JOIN quality_scored q USING (doc_id)
               WHERE v.signal = ? AND NOT isnan(v.value) {'AND q.language_group = ?' if group else ''}"""
    params: list[Any] = scope_params + [signal] + ([group] if group else [])
    closeness = "abs(v.value - ?), s.doc_id"
    sides = {side: ws.query(f"{base} AND {'' if side == 'kept' else 'NOT '}({kept_sql}) ORDER BY {closeness} "
                            "LIMIT ?", params + [threshold, threshold, n]) for side in ("dropped", "kept")}
    ids = [row[0] for rows in sides.values() for row in rows]
    texts = document_texts(ws, ids)
    return {side: [{"doc_id": doc_id, "value": value, "text": texts[doc_id], "language_group": language_group}
                   for doc_id, value, language_group in rows] for side, rows in sides.items()}


def scored_documents(ws: Workspace) -> int:
    """How many documents have stored quality signals (of any version)."""
    return int(ws.scalar("SELECT count(*) FROM quality_scored"))
