"""`studio eval` (lm-evaluation-harness scores, perplexity, domain gain and retention) and `studio report` (the
domain-gain / retention report of training jobs as one self-contained HTML file and JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from core.evaluate import EvalConfig, EvalResult, run
from core.steps import add_config_arguments, config_from_args
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments


def register(sub: argparse._SubParsersAction) -> None:
    from core.report import REPORT_SKIPS, ReportConfig

    p = sub.add_parser("eval", help="score a model (and a baseline) with lm-evaluation-harness on the workspace's "
                                    "benchmarks, with perplexity, intervals and McNemar",
                       description="Runs lm-eval's hf model on tasks generated from the benchmark tables (letter "
                                   "and cloze formulations), perplexity and bits per byte on the mix's validation "
                                   "sets; cached by model fingerprint, benchmark content and settings.")
    add_workspace_arguments(p)
    add_config_arguments(p, EvalConfig)
    p.add_argument("--items-out", metavar="FILE", help="write per-item results (JSONL) to FILE")
    p.set_defaults(handler=eval_command)

    p = sub.add_parser("report", help="the domain-gain / retention report of training jobs (HTML and JSON)",
                       description="Evaluates each job's model and its base (cached), and writes one "
                                   "self-contained HTML report (charts embedded, opens offline) and its JSON.")
    add_workspace_arguments(p)
    add_config_arguments(p, ReportConfig, skip=REPORT_SKIPS)
    p.set_defaults(handler=report_command)


def _estimate(e: dict[str, Any], pct: bool = True) -> str:
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.3f}")
    return f"{f(e['value'])} [{f(e['low'])}, {f(e['high'])}]"


def eval_lines(result: EvalResult) -> list[str]:
    lines = []
    for m in result.models:
        lines.append(f"model {m.model.name} (fingerprint {m.model.fingerprint[:12]})")
        for s in m.benchmarks:
            d = s.to_dict()
            metrics = ", ".join(f"{k} {_estimate(v)}" for k, v in d["metrics"].items())
            clean = ", ".join(f"{k} {_estimate(v)}" for k, v in d["clean"].items())
            lines.append(f"  {s.benchmark:20} {s.kind:7} {s.formulation:6} {s.shots}-shot {len(s.items):>6,} items: "
                         f"{metrics}" + (f"; clean ({d['flagged_items']} flagged out): {clean}"
                                         if s.flagged_items else "") + ("  (cached)" if s.cached else ""))
        for p in m.perplexity:
            lines.append(f"  validation_{p.validation_set:8} {p.documents:,} documents, {p.tokens:,} tokens: "
                         f"perplexity {p.token_perplexity:.2f}, bits per byte {p.bits_per_byte:.4f}"
                         + ("  (cached)" if p.cached else ""))
    for c in result.comparisons:
        d = c.to_dict()
        figure = (f"gain {_estimate(d['gain'])} points" if c.kind == "domain"
                  else f"retention {_estimate(d['retention'], pct=False)}")
        lines.append(f"{c.benchmark} {c.formulation} {c.metric}: base {100 * c.base:.1f}, trained "
                     f"{100 * c.trained:.1f}, {figure}, McNemar p={c.mcnemar['p_value']:.3g}"
                     f" {'PASS' if c.passed else 'FLAG'}")
    for p in result.perplexity_comparisons:
        lines.append(f"validation_{p['validation_set']}: perplexity {p['base_token_perplexity']:.2f} -> "
                     f"{p['trained_token_perplexity']:.2f} (change {_estimate(p['token_perplexity_change'], False)})")
    if result.items_out:
        lines.append(f"per-item results: {result.items_out}")
    return lines


def eval_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(EvalConfig, args)
    with Workspace.open(args.workspace, create=False, wait_s=60.0) as ws:
        result = run(ws, cfg, report, items_out=args.items_out)
    return CommandResult(result.to_dict(), eval_lines(result))


def report_command(args: argparse.Namespace, reporter: Reporter) -> CommandResult:
    from core.report import ReportConfig, build_report

    cfg = config_from_args(ReportConfig, args, **{"scoring.model": ""})
    with Workspace.open(args.workspace, create=False, wait_s=60.0) as ws:
        result = build_report(ws, cfg, reporter)
    lines = [f"report: {result.html_path} ({result.html_bytes:,} bytes), JSON: {result.json_path}"]
    for card in result.cards:
        lines.append(f"  {card['job']}: {card['title']} {card['text']} {'PASS' if card['passed'] else 'FLAG'}")
    return CommandResult(result.to_dict(), lines)
