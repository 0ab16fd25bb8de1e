"""`studio eval` (lm-evaluation-harness scores, perplexity, domain gain and retention) and `studio report` (the
domain-gain / retention report of training jobs as one self-contained HTML file and JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from core.evaluate import RETENTION_TARGET, EvalConfig, EvalResult, run
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments, comma_list


def _add_scoring_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--benchmarks", help="comma-separated benchmark names (default: all of the workspace)")
    p.add_argument("--formulation", default="both", choices=["letter", "cloze", "both"],
                   help="letter: MMLU's prompt scored on ' A'..' D' (acc); cloze: 'Question: ...\\nAnswer:' scored "
                        "on each choice (acc, acc_norm); default both")
    p.add_argument("--shots", type=int, default=0, help="few-shot exemplars per subject (default 0)")
    p.add_argument("--fewshot", metavar="FILE", help="exemplars, MCQ JSONL with subjects (default: the shared "
                                                     "MMLU dev set, 5 per subject)")
    p.add_argument("--limit", type=int, help="a seeded sample of N items per benchmark, the same for every model")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample (default 0)")
    p.add_argument("--mix", help="mix (id, name or export folder) whose validation sets give perplexity "
                                 "(default: the latest mix)")
    p.add_argument("--perplexity-docs", type=int, default=200,
                   help="documents of each validation set scored for perplexity (default 200)")
    p.add_argument("--no-perplexity", action="store_true", help="skip perplexity on the validation sets")
    p.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default 8)")
    p.add_argument("--dtype", default="float32", help="model dtype (default float32)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")


def _config(args: argparse.Namespace, model: str, baseline: str | None) -> EvalConfig:
    return EvalConfig(model=model, baseline=baseline, benchmarks=comma_list(args.benchmarks) or None,
                      formulation=args.formulation, shots=args.shots, limit=args.limit, seed=args.seed,
                      fewshot=args.fewshot, perplexity=not args.no_perplexity, mix=args.mix,
                      perplexity_docs=args.perplexity_docs, batch_size=args.batch_size, dtype=args.dtype,
                      device=args.device)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="score a model (and a baseline) with lm-evaluation-harness on the workspace's "
                                    "benchmarks, with perplexity, intervals and McNemar",
                       description="Runs lm-eval's hf model on tasks generated from the benchmark tables (letter "
                                   "and cloze formulations), perplexity and bits per byte on the mix's validation "
                                   "sets; cached by model fingerprint, benchmark content and settings.")
    add_workspace_arguments(p)
    p.add_argument("--model", required=True, metavar="PATH_OR_ID",
                   help="bundled:smollm2, a model or adapter folder, a job output folder or a local hub id")
    p.add_argument("--baseline", metavar="PATH_OR_ID", help="compare with this model (domain gain, retention)")
    _add_scoring_arguments(p)
    p.add_argument("--items-out", metavar="FILE", help="write per-item results (JSONL) to FILE")
    p.set_defaults(handler=eval_command)

    p = sub.add_parser("report", help="the domain-gain / retention report of training jobs (HTML and JSON)",
                       description="Evaluates each job's model and its base (cached), and writes one "
                                   "self-contained HTML report (charts embedded, opens offline) and its JSON.")
    add_workspace_arguments(p)
    p.add_argument("--jobs", required=True, help="comma-separated job ids or job output folders")
    p.add_argument("--out", required=True, metavar="FILE.html", help="the HTML report (JSON beside it)")
    p.add_argument("--baseline", metavar="PATH_OR_ID", help="the base model (default: each job's base model)")
    p.add_argument("--min-gain", type=float, default=0.0, help="domain gain target (default: above 0)")
    p.add_argument("--min-retention", type=float, default=RETENTION_TARGET,
                   help=f"retention target (default {RETENTION_TARGET})")
    _add_scoring_arguments(p)
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
    cfg = _config(args, args.model, args.baseline)
    with Workspace.open(args.workspace, create=False, wait_s=60.0) as ws:
        result = run(ws, cfg, report, items_out=args.items_out)
    return CommandResult(result.to_dict(), eval_lines(result))


def report_command(args: argparse.Namespace, reporter: Reporter) -> CommandResult:
    from core.report import ReportConfig, build_report

    cfg = ReportConfig(jobs=comma_list(args.jobs), out=args.out, baseline=args.baseline, min_gain=args.min_gain,
                       min_retention=args.min_retention, scoring=_config(args, "", None))
    with Workspace.open(args.workspace, create=False, wait_s=60.0) as ws:
        result = build_report(ws, cfg, reporter)
    lines = [f"report: {result.html_path} ({result.html_bytes:,} bytes), JSON: {result.json_path}"]
    for card in result.cards:
        lines.append(f"  {card['job']}: {card['title']} {card['text']} {'PASS' if card['passed'] else 'FLAG'}")
    return CommandResult(result.to_dict(), lines)
