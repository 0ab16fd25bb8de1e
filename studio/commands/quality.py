"""`studio score`: quality signals, perplexity and the composite score; with --apply, the quality filter."""

from __future__ import annotations

import argparse

from core.quality import (
    DEFAULT_PRESETS,
    PRESETS,
    RULES,
    QualityStepConfig,
    apply_filters,
    composite_summary,
    corpus_summary,
    filter_preview,
    score_quality,
)
from core.steps import config_from_args, get_step
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter
from studio.commands.steps import step_command_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = step_command_parser(
        sub, get_step("quality"),
        help="quality signals (Gopher, C4, FineWeb), perplexity and composite score; --apply filters",
        description="Compute and store every heuristic quality signal for the documents that lack them "
                    "(and, with --perplexity, language-model perplexity), then show what the chosen rules "
                    "would drop; --apply writes the drops to decisions. Thresholds move without recomputing.")
    p.add_argument("--apply", action="store_true",
                   help="write a decisions row for every dropped document (supersedes the last quality filter)")
    p.add_argument("--stored-only", action="store_true",
                   help="compute nothing: preview or apply the rules on the values already stored (what the page's "
                        "apply button runs, so it drops exactly the documents it counted)")
    p.add_argument("--list-rules", action="store_true", help="print every rule with its default thresholds")
    p.set_defaults(handler=score_command)


def _list_rules() -> CommandResult:
    rules = [{"rule": r.name, "preset": r.preset, "keep_if": r.keep_if, "latin": r.latin, "zh": r.zh,
              "note": r.note} for r in RULES]
    lines = [f"{'rule':28} {'preset':18} keep if {'latin':>9} {'zh':>9}"]
    lines += [f"{r['rule']:28} {r['preset']:18} {r['keep_if']:>7} {r['latin']!s:>9} {r['zh']!s:>9}  {r['note']}"
              for r in rules]
    return CommandResult({"rules": rules, "presets": list(PRESETS), "default_presets": list(DEFAULT_PRESETS)},
                         lines)


def score_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    if args.list_rules:
        return _list_rules()
    config = config_from_args(QualityStepConfig, args).one_scope()
    config.validate()
    fcfg, scfg = config.filter, config.score
    with Workspace.open(args.workspace, create=False) as ws:
        if args.stored_only:
            scored = None
            corpora = corpus_summary(ws, scfg.roles, scfg.corpora)
            notes = composite_summary(ws)["notes"]
        else:
            scored = score_quality(ws, scfg, report)
            corpora, notes = scored.corpora, scored.composite["notes"]
        filtered = apply_filters(ws, fcfg, report) if args.apply else filter_preview(ws, fcfg)
    data = {"score": scored.to_dict() if scored else None, "filter": filtered.to_dict(), "applied": args.apply}
    lines = [f"scored {scored.documents_scored:,} documents ({scored.docs_per_second:,.0f}/s; run {scored.run_id})"
             if scored else "stored values only: nothing computed"]
    if scored and scfg.perplexity:
        lines.append(f"perplexity: {scored.perplexity_scored:,} documents, {scored.perplexity_tokens:,} tokens in "
                     f"{scored.perplexity_seconds:.1f} s ({scored.perplexity_dtype or '-'})")
    lines += [f"composite: {n}" for n in notes]
    verb = "dropped" if args.apply else "would drop"
    lines.append(f"{verb} {filtered.dropped:,} of {filtered.documents:,} documents "
                 f"({filtered.randomly_kept:,} more kept by the {fcfg.keep_share:.0%} random share)"
                 + (f"; run {filtered.run_id}" if filtered.run_id else "; --apply to write the decisions"))
    lines.append(f"{'corpus':32} {'documents':>10} {verb:>11} {'random keep':>12} {'med. ppl':>9} {'composite':>9}")
    summary = {c["corpus"]: c for c in corpora}
    for c in filtered.corpora:
        s = summary.get(c["corpus"], {})
        ppl = f"{s['median_perplexity']:.1f}" if s.get("median_perplexity") else "-"
        comp = f"{s['median_composite']:.3f}" if s.get("median_composite") is not None else "-"
        lines.append(f"{c['corpus'][:32]:32} {c['documents']:>10,} {c['dropped']:>11,} {c['randomly_kept']:>12,} "
                     f"{ppl:>9} {comp:>9}")
    if filtered.by_rule:
        lines.append("drops by first failed rule: " + ", ".join(f"{k} {v:,}" for k, v in filtered.by_rule.items()))
    return CommandResult(data, lines)
