"""`studio terms`: terminology density per document, and the domain filter on it."""

from __future__ import annotations

import argparse

from core.terms import (
    DEFAULT_LEXICONS,
    TermFilterConfig,
    TermScoreConfig,
    apply_term_filter,
    corpus_density_summary,
    filter_preview,
    score_terms,
)
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments


def register(sub: argparse._SubParsersAction) -> None:
    defaults = TermFilterConfig()
    p = sub.add_parser(
        "terms", help="terminology density per document (stored for every corpus) and the domain filter on it",
        description="Match lexicons against every document and store hits and density; show (or, with --apply, "
                    "write) what the filter drops: density below --min-density or length outside the bounds.")
    add_workspace_arguments(p)
    p.add_argument("--lexicon", action="append", metavar="FILE",
                   help="a bundled lexicon name (medical_en, medical_zh) or a .txt/.csv file; repeat to combine "
                        f"several (default: {' + '.join(DEFAULT_LEXICONS)})")
    p.add_argument("--min-density", type=float, default=defaults.min_density,
                   help="keep documents with at least this many (weighted) term hits per word, per character "
                        "for Chinese (default %(default)s)")
    p.add_argument("--min-words", type=int, default=defaults.min_words, help="default %(default)s")
    p.add_argument("--max-words", type=int, default=defaults.max_words, help="default %(default)s")
    p.add_argument("--min-chars", type=int, default=defaults.min_chars,
                   help="length bound for Chinese/Japanese documents, in characters (default %(default)s)")
    p.add_argument("--max-chars", type=int, default=defaults.max_chars, help="default %(default)s")
    p.add_argument("--role", action="append", dest="roles", metavar="ROLE",
                   help="filter the corpora of this role; repeatable (default: domain)")
    p.add_argument("--corpus", action="append", dest="corpora", metavar="NAME",
                   help="filter exactly these corpora instead of a role; repeatable")
    p.add_argument("--apply", action="store_true",
                   help="write the drops into decisions (superseding an earlier terms filter); without it, "
                        "only show what would be dropped")
    p.add_argument("--rescore", action="store_true",
                   help="match again even if the same lexicon already scored every document")
    p.set_defaults(handler=terms_command)


def terms_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    filter_cfg = TermFilterConfig(min_density=args.min_density, min_words=args.min_words,
                                  max_words=args.max_words, min_chars=args.min_chars, max_chars=args.max_chars,
                                  roles=args.roles or ["domain"], corpora=args.corpora)
    filter_cfg.validate()
    lexicons = args.lexicon or list(DEFAULT_LEXICONS)
    with Workspace.open(args.workspace, create=False) as ws:
        scored = score_terms(ws, TermScoreConfig(lexicons=lexicons, rescore=args.rescore),
                             lambda f, m: report(0.9 * max(f, 0.0), m))
        if args.apply:
            filtered = apply_term_filter(ws, filter_cfg, lambda f, m: report(0.9 + 0.1 * f, m))
            per_corpus, filter_run = filtered.per_corpus, filtered.run_id
        else:
            per_corpus, filter_run = filter_preview(ws, filter_cfg), None
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
