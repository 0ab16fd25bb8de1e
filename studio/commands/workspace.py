"""`studio init`, `studio status` and `studio tokens`."""

from __future__ import annotations

import argparse
import json

from core.tokens import TokenCountConfig, count_tokens
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a workspace (or migrate an older one forward)")
    add_workspace_arguments(p)
    p.add_argument("--tokenizer", help="Hugging Face tokenizer id or path for token counts "
                                      "(default: the bundled SmolLM2 tokenizer)")
    p.set_defaults(handler=init_command)

    p = sub.add_parser("status", help="what a workspace holds: corpora, runs, errors")
    add_workspace_arguments(p)
    p.set_defaults(handler=status_command)

    p = sub.add_parser("tokens", help="count tokens with the workspace tokenizer (cached; only new documents)")
    add_workspace_arguments(p)
    p.add_argument("--recount", action="store_true", help="count every document again (after a tokenizer change)")
    p.add_argument("--batch-size", type=int, default=2_000)
    p.set_defaults(handler=tokens_command)


def init_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    existed = (args.workspace / "studio.duckdb").exists()
    with Workspace.open(args.workspace) as ws:
        if args.tokenizer:
            ws.set_setting("tokenizer", args.tokenizer)
        data = {"workspace": str(ws.path), "created": not existed, "schema": ws.schema_version(),
                "tokenizer": ws.tokenizer_name}
    verb = "created" if not existed else "opened (schema up to date)"
    return CommandResult(data, [f"workspace {data['workspace']} {verb}; tokenizer {data['tokenizer']}"])


def status_data(ws: Workspace) -> dict:
    corpora = ws.corpora()
    errors = dict(ws.query("SELECT reason, count(*) FROM ingest_errors GROUP BY reason ORDER BY 2 DESC"))
    current = dict(ws.query("SELECT corpus, count(*) FROM current_documents GROUP BY corpus"))
    for c in corpora:
        c["current"] = current.get(c["name"], 0)
    runs = ws.runs(limit=10)
    for r in runs:
        r["counts"] = json.loads(r["counts"]) if r["counts"] else {}
        r.pop("params")
    return {
        "workspace": str(ws.path), "tokenizer": ws.tokenizer_name, "schema": ws.schema_version(),
        "documents": sum(c["documents"] for c in corpora), "current_documents": sum(current.values()),
        "corpora": corpora, "ingest_errors": sum(errors.values()), "ingest_errors_by_reason": errors,
        "recent_runs": runs,
    }


def status_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    with Workspace.open(args.workspace, create=False, read_only=True) as ws:
        data = status_data(ws)
    lines = [f"workspace {data['workspace']} (tokenizer {data['tokenizer']})",
             f"{data['documents']:,} documents, {data['current_documents']:,} current after filters, "
             f"{data['ingest_errors']:,} ingest errors", ""]
    lines.append(f"{'corpus':32} {'role':12} {'documents':>10} {'current':>10} {'tokens':>12}")
    for c in data["corpora"]:
        tokens = f"{c['tokens']:,}" if c["tokens"] is not None and not c["untokenised"] else \
            f"({c['untokenised']:,} uncounted)"
        lines.append(f"{c['name'][:32]:32} {c['role']:12} {c['documents']:>10,} {c['current']:>10,} {tokens:>12}")
    if data["ingest_errors_by_reason"]:
        lines += ["", "ingest errors by reason:"]
        lines += [f"  {n:>7,}  {reason}" for reason, n in data["ingest_errors_by_reason"].items()]
    return CommandResult(data, lines)


def tokens_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    with Workspace.open(args.workspace, create=False) as ws:
        result = count_tokens(ws, TokenCountConfig(batch_size=args.batch_size, recount=args.recount), report)
    data = {"run_id": result.run_id, "tokenizer": result.tokenizer, "documents_counted": result.documents_counted,
            "tokens": result.tokens}
    return CommandResult(data, [f"counted {result.documents_counted:,} documents, {result.tokens:,} tokens "
                                f"with {result.tokenizer} (run {result.run_id})"])
