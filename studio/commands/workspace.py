"""`studio init`, `studio status` and `studio tokens`."""

from __future__ import annotations

import argparse

from core.corpus import workspace_status
from core.flow import FLOW, flow_order, set_flow_order
from core.steps import config_from_args, get_step
from core.tokens import TokenCountConfig, count_tokens
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments, comma_list
from studio.commands.steps import step_command_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a workspace (or migrate an older one forward)")
    add_workspace_arguments(p)
    p.add_argument("--tokenizer", help="Hugging Face tokenizer id or path for token counts "
                                      "(default: the bundled SmolLM2 tokenizer)")
    p.add_argument("--flow-order", help="comma-separated order of the curation steps, each seeing what the "
                                        f"steps before it left ('default': {','.join(FLOW)})")
    p.set_defaults(handler=init_command)

    p = sub.add_parser("status", help="what a workspace holds: corpora, runs, errors")
    add_workspace_arguments(p)
    p.set_defaults(handler=status_command)

    p = step_command_parser(sub, get_step("tokens"),
                            help="count tokens with the workspace tokenizer (cached; only new documents)")
    p.set_defaults(handler=tokens_command)


def init_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    existed = (args.workspace / "studio.duckdb").exists()
    with Workspace.open(args.workspace) as ws:
        if args.tokenizer:
            ws.set_setting("tokenizer", args.tokenizer)
        if args.flow_order:
            set_flow_order(ws, None if args.flow_order == "default" else comma_list(args.flow_order))
        data = {"workspace": str(ws.path), "created": not existed, "schema": ws.schema_version(),
                "tokenizer": ws.tokenizer_name, "flow_order": list(flow_order(ws))}
    verb = "created" if not existed else "opened (schema up to date)"
    return CommandResult(data, [f"workspace {data['workspace']} {verb}; tokenizer {data['tokenizer']}",
                                f"flow: {' -> '.join(data['flow_order'])}"])


def status_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    with Workspace.open(args.workspace, create=False, read_only=True) as ws:
        data = workspace_status(ws)  # what the Overview page shows
    lines = [f"workspace {data['workspace']} (tokenizer {data['tokenizer']})",
             f"{data['documents']:,} documents, {data['current_documents']:,} current after filters, "
             f"{data['ingest_errors']:,} ingest errors", ""]
    lines.append(f"{'corpus':32} {'role':12} {'documents':>10} {'current':>10} {'tokens':>12}")
    for c in data["corpora"]:
        tokens = f"{c['tokens']:,}" if c["tokens"] is not None and not c["untokenised"] else \
            f"({c['untokenised']:,} uncounted)"
        lines.append(f"{c['name'][:32]:32} {c['role']:12} {c['documents']:>10,} {c['current']:>10,} {tokens:>12}")
    flow = data["flow"]
    lines += ["", f"flow ({flow['documents']:,} documents in; each step sees what the steps before it left):"]
    lines.append(f"  {'step':22} {'in':>10} {'dropped':>10} {'out':>10}  ")
    for stage in flow["stages"]:
        mark = "  STALE: re-run it" if stage["stale"] else ("" if stage["run_id"] else "  (not run)")
        lines.append(f"  {stage['label'][:22]:22} {stage['documents_in']:>10,} {stage['dropped']:>10,} "
                     f"{stage['documents_out']:>10,}{mark}")
    for stale in data["stale_steps"]:
        lines.append(f"  stale: {stale['step']} ({stale['run_id']}) ran before {stale['because']} "
                     f"({stale['because_run']}) was applied")
    if data["ingest_errors_by_reason"]:
        lines += ["", "ingest errors by reason:"]
        lines += [f"  {n:>7,}  {reason}" for reason, n in data["ingest_errors_by_reason"].items()]
    return CommandResult(data, lines)


def tokens_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    with Workspace.open(args.workspace, create=False) as ws:
        result = count_tokens(ws, config_from_args(TokenCountConfig, args), report)
    data = result.to_dict()
    return CommandResult(data, [f"counted {result.documents_counted:,} documents, {result.tokens:,} tokens "
                                f"with {result.tokenizer} (run {result.run_id})"])
