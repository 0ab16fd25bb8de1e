"""`studio terms`: terminology density per document, and the domain filter on it; `studio lexicon-mine`: a
lexicon mined from the workspace's domain corpora against its general ones."""

from __future__ import annotations

import argparse

from core import lexicon_mine
from core.steps import add_config_arguments, config_from_args, get_step
from core.terms import (
    TermsStepConfig,
    apply_term_filter,
    corpus_density_summary,
    filter_preview,
    score_terms,
)
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments
from studio.commands.steps import step_command_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = step_command_parser(
        sub, get_step("terms"),
        help="terminology density per document (stored for every corpus) and the domain filter on it",
        description="Match lexicons against every document and store hits and density; show (or, with --apply, "
                    "write) what the filter drops: density below --min-density or length outside the bounds.")
    p.add_argument("--apply", action="store_true",
                   help="write the drops into decisions (superseding an earlier terms filter); without it, "
                        "only show what would be dropped")
    p.set_defaults(handler=terms_command)
    register_mine(sub)


def register_mine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lexicon-mine", help="mine a lexicon: terms the domain corpora use far more often than the general ones",
        description="Score word 1-3-grams (Chinese: jieba words and character 2-4-grams) by the log-odds ratio "
                    "with informative Dirichlet prior (Monroe, Colaresi & Quinn 2008) of the domain corpora against "
                    "the general ones, and write the best as a term,weight CSV lexicon for `studio terms`.")
    add_workspace_arguments(p)
    add_config_arguments(p, lexicon_mine.LexiconMineConfig)
    p.set_defaults(handler=mine_command)


def mine_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(lexicon_mine.LexiconMineConfig, args)
    cfg.validate()
    with Workspace.open(args.workspace, create=False) as ws:
        result = lexicon_mine.run(ws, cfg, report)
        candidates = lexicon_mine.load_candidates(ws.path, result.run_id)
    lines = [f"{result.terms:,} terms ({', '.join(f'{n:,} {lang}' for lang, n in result.terms_by_language.items())})"
             f" mined from {result.domain_documents:,} domain and {result.general_documents:,} general documents "
             f"in {result.seconds:.1f} s ({result.docs_per_second:,.0f} docs/s; run {result.run_id})",
             f"lexicon written to {result.lexicon_path}; use it with `studio terms WS --lexicon "
             f"{result.lexicon_path}`", "",
             f"{'term':32} {'z':>7} {'log-odds':>8} {'weight':>6} {'domain':>8} {'general':>8}"]
    lines += [f"{r.term[:32]:32} {r.z:>7.2f} {r.delta:>8.2f} {r.weight:>6.2f} {r.domain_count:>8,} "
              f"{r.general_count:>8,}" for r in candidates.head(20).itertuples()]
    return CommandResult(result.to_dict(), lines)


def terms_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    config = config_from_args(TermsStepConfig, args)
    config.validate()
    filter_cfg = config.filter
    with Workspace.open(args.workspace, create=False) as ws:
        scored = score_terms(ws, config.score, lambda f, m: report(0.9 * max(f, 0.0), m))
        if args.apply:
            filtered = apply_term_filter(ws, filter_cfg, lambda f, m: report(0.9 + 0.1 * f, m))
            per_corpus, filter_run = filtered.per_corpus, filtered.run_id
        else:
            per_corpus, filter_run = filter_preview(ws, filter_cfg).per_corpus, None
        densities = corpus_density_summary(ws)
    documents = sum(c["documents"] for c in per_corpus)
    kept = sum(c["kept"] for c in per_corpus)
    by_rule = {rule: sum(c[rule] for c in per_corpus) for rule in ("too_short", "too_long", "low_term_density")}
    data = {
        "score_run_id": scored.run_id, "reused_scores": scored.reused, "lexicon": scored.lexicon,
        "terms": scored.terms, "documents_scored": scored.documents, "hits": scored.hits,
        "docs_per_s": round(scored.docs_per_second, 1) if not scored.reused else None,
        "applied": args.apply, "filter_run_id": filter_run, "filter": vars(filter_cfg),
        "filtered_documents": documents, "kept": kept, "dropped": documents - kept, "dropped_by_rule": by_rule,
        "per_corpus": per_corpus, "density_by_corpus": densities,
    }
    how = "reused" if scored.reused else f"matched at {scored.docs_per_second:,.0f} docs/s"
    lines = [f"lexicon {scored.lexicon} ({scored.terms:,} terms): {scored.documents:,} documents scored, "
             f"{scored.hits:,} hits ({how}; run {scored.run_id})", "",
             f"{'corpus':30} {'role':12} {'unit':5} {'median density':>14} {'with hits':>9}"]
    lines += [f"{d['corpus'][:30]:30} {d['role']:12} {d['unit']:5} {d['median_density']:>14.4f} "
              f"{d['share_with_hits']:>9.1%}" for d in densities]
    verb = "dropped" if args.apply else "would drop"
    lines += ["", f"filter (density >= {filter_cfg.min_density:g}, {filter_cfg.min_words}-{filter_cfg.max_words} "
                  f"words / {filter_cfg.min_chars}-{filter_cfg.max_chars} characters): {verb} "
                  f"{documents - kept:,} of {documents:,} documents",
              f"{'corpus':30} {'documents':>9} {'kept':>8} {'short':>7} {'long':>6} {'density':>8}"]
    lines += [f"{c['corpus'][:30]:30} {c['documents']:>9,} {c['kept']:>8,} {c['too_short']:>7,} {c['too_long']:>6,} "
              f"{c['low_term_density']:>8,}" for c in per_corpus]
    if not args.apply:
        lines.append("(nothing written: add --apply to record the drops)")
    else:
        lines.append(f"drops recorded in decisions by run {filter_run}")
    return CommandResult(data, lines)
