"""Evaluation with lm-evaluation-harness: task generation from the benchmark tables (tasks), model resolution and
fingerprints (models), scores, perplexity, cache and comparisons (evaluation), intervals and tests (stats)."""

from core.evaluate.evaluation import (
    RETENTION_TARGET,
    EvalConfig,
    EvalResult,
    ModelScores,
    compare,
    compare_perplexity,
    evaluate_model,
    export_items,
    item_table,
    perplexity_table,
    run,
    score_table,
    validation_files,
)
from core.evaluate.models import ModelSpec, resolve_model

__all__ = ["RETENTION_TARGET", "EvalConfig", "EvalResult", "ModelScores", "ModelSpec", "compare",
           "compare_perplexity", "evaluate_model", "export_items", "item_table", "perplexity_table", "resolve_model", "run", "score_table",
           "validation_files"]
