"""`studio score`: quality signals, perplexity and the composite score; with --apply, the quality filter."""

from __future__ import annotations

import argparse

from core.models import BUNDLED_LM
from core.perplexity import DTYPES as PERPLEXITY_DTYPES
from core.quality import (
    DEFAULT_PRESETS,
    DEFAULT_ROLES,
    PRESETS,
    RULES,
    QualityFilterConfig,
    QualityScoreConfig,
    apply_filters,
    composite_summary,
    corpus_summary,
    filter_preview,
    parse_thresholds,
    parse_weights,
    score_quality,
)
from core.workspace import ROLES, Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments, comma_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", help="quality signals (Gopher, C4, FineWeb), perplexity and composite score; --apply filters",
        description="Compute and store every heuristic quality signal for the documents that lack them "
                    "(and, with --perplexity, language-model perplexity), then show what the chosen rules "
                    "would drop; --apply writes the drops to decisions. Thresholds move without recomputing.")
    add_workspace_arguments(p)
    p.add_argument("--rules", type=comma_list, default=list(DEFAULT_PRESETS),
                   help=f"comma-separated presets or rule names (presets: {', '.join(PRESETS)}; default: "
                        f"{','.join(DEFAULT_PRESETS)}); see --list-rules")
    p.add_argument("--threshold", action="append", default=[], metavar="RULE=VALUE",
                   help="override a threshold, e.g. word_count:min=20 or perplexity:max@zh=5000 (one language "
                        "group: latin or zh); repeatable; naming a rule also chooses it")
    p.add_argument("--apply", action="store_true",
                   help="write a decisions row for every dropped document (supersedes the last quality filter)")
    p.add_argument("--keep-share", type=float, default=0.05,
                   help="random share of would-be drops kept anyway, recorded as random_keep (default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random keep share (default 0)")
    p.add_argument("--role", action="append", choices=ROLES, dest="roles",
                   help=f"roles scored and filtered; repeatable (default: {', '.join(DEFAULT_ROLES)})")
    p.add_argument("--corpus", action="append", default=[], dest="corpora", metavar="NAME",
                   help="only these corpora; repeatable")
    p.add_argument("--perplexity", action="store_true", help="also measure language-model perplexity")
    p.add_argument("--lm", default=BUNDLED_LM,
                   help="causal LM for perplexity: a local path or hub id (default: the bundled SmolLM2-135M)")
    p.add_argument("--max-tokens", type=int, default=256, help="truncate documents to this many tokens (256)")
    p.add_argument("--lm-batch-size", type=int, default=8, help="documents per forward pass (8)")
    p.add_argument("--dtype", choices=PERPLEXITY_DTYPES, default="auto",
                   help="auto: the fastest path within 2%% of fp32 perplexity on this CPU (calibrated once); "
                        "bf16/fp32: torch; or a path name (onnx-int8, onnx-fp32, ...)")
    p.add_argument("--sample-per-corpus", type=int, default=None, metavar="N",
                   help="perplexity on at most N documents per corpus (a fixed hash-ordered sample; default all)")
    p.add_argument("--weights", default="",
                   help="composite weights, e.g. relevance=0.3,fluency=0.2,informativeness=0.3,safety=0.2")
    p.add_argument("--workers", type=int, default=0, help="processes for the heuristics (0: one per core)")
    p.add_argument("--recompute", action="store_true", help="compute the signals again even where stored")
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
    roles = args.roles or list(DEFAULT_ROLES)
    weights = parse_weights(args.weights)
    thresholds = parse_thresholds(args.threshold)
    fcfg = QualityFilterConfig(rules=args.rules, thresholds=thresholds, roles=roles, corpora=args.corpora,
                               keep_share=args.keep_share, seed=args.seed)
    fcfg.validate()
    scfg = QualityScoreConfig(roles=roles, corpora=args.corpora, recompute=args.recompute, workers=args.workers,
                              perplexity=args.perplexity, lm=args.lm, max_tokens=args.max_tokens,
                              lm_batch_size=args.lm_batch_size, dtype=args.dtype,
                              sample_per_corpus=args.sample_per_corpus, weights=weights)
    with Workspace.open(args.workspace, create=False) as ws:
        if args.stored_only:
            scored = None
            corpora = corpus_summary(ws, roles, args.corpora)
            notes = composite_summary(ws)["notes"]
        else:
            scored = score_quality(ws, scfg, report)
            corpora, notes = scored.corpora, scored.composite["notes"]
        filtered = apply_filters(ws, fcfg, report) if args.apply else filter_preview(ws, fcfg)
    data = {"score": scored.to_dict() if scored else None, "filter": filtered.to_dict(), "applied": args.apply}
    lines = [f"scored {scored.documents_scored:,} documents ({scored.docs_per_second:,.0f}/s; run {scored.run_id})"
             if scored else "stored values only: nothing computed"]
    if scored and args.perplexity:
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
