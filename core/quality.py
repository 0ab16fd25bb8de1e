"""The quality step: heuristic signals, language-model perplexity, a composite score, and rule-based filters.

Scoring and filtering are separate on purpose:
- `score_quality` computes every signal of `core.quality_signals.SIGNALS` for each document once and stores the
  raw values (`quality_signal_values`: a row per document, a column per signal; the view `quality_signals`
  reads them in long format: doc_id, signal, value), plus perplexity for the documents asked for
  (`quality_perplexity`, with the model and truncation length). It records a `quality_score` run.
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

from dataclasses import dataclass, field
from typing import Any

from core.quality_filter import (
    QualityFilterConfig,
    QualityFilterResult,
    SignalDistribution,
    apply_filters,
    documents_near_threshold,
    filter_preview,
    rules_table,
    scored_documents,
    signal_distribution,
)
from core.quality_rules import (
    DEFAULT_PRESETS,
    DEFAULT_ROLES,
    FILTER_STEP,
    KEEP_IF,
    PRESETS,
    RULE_BY_NAME,
    RULES,
    SAFETY_SATURATION,
    SCORE_STEP,
    Rule,
    keeps,
    keeps_sql,
    parse_thresholds,
    select_rules,
)
from core.quality_score import (
    DEFAULT_WEIGHTS,
    LENGTH_SATURATION_WORDS,
    PARTS,
    QualityScoreConfig,
    QualityScoreResult,
    composite_summary,
    compute_perplexity_for,
    compute_signals_for,
    corpus_summary,
    parse_weights,
    score_quality,
    set_weights,
)
from core.steps import ScoredAndFiltered, Step, score_then_filter, split_recipe

# The public names of the quality step, wherever they live: `from core.quality import X` is the one import path.
__all__ = [
    "DEFAULT_PRESETS", "DEFAULT_ROLES", "DEFAULT_WEIGHTS", "FILTER_STEP", "KEEP_IF", "LENGTH_SATURATION_WORDS",
    "PARTS", "PRESETS", "REGISTERED_STEP", "RULES", "RULE_BY_NAME", "SAFETY_SATURATION", "SCORE_STEP",
    "QualityFilterConfig", "QualityFilterResult", "QualityScoreConfig", "QualityScoreResult", "QualityStepConfig",
    "Rule", "apply_filters", "composite_summary", "compute_perplexity_for", "compute_signals_for",
    "corpus_summary", "documents_near_threshold", "filter_preview", "keeps", "keeps_sql", "parse_thresholds",
    "parse_weights", "rules_table", "score_quality", "scored_documents", "select_rules", "set_weights",
    "signal_distribution", "SignalDistribution",
]


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
