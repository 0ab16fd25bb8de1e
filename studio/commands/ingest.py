"""`studio ingest`: files, folders, globs or hf:// datasets into a corpus of the workspace."""

from __future__ import annotations

import argparse
import sys

from core.ingest import IngestConfig, ingest
from core.steps import add_config_arguments, config_from_args
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="ingest files, folders, globs or hf:// datasets into a corpus")
    add_workspace_arguments(p)
    add_config_arguments(p, IngestConfig)
    p.set_defaults(handler=ingest_command)


def ingest_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(IngestConfig, args)
    with Workspace.open(args.workspace, create=False) as ws:
        result = ingest(ws, cfg, report)
    counts = result.counts()
    lines = [f"corpus {result.corpus}: {counts['documents_added']:,} documents added from {counts['files']} "
             f"file(s) ({counts['already_present']:,} already present, {counts['files_unchanged']} file(s) "
             f"unchanged); run {result.run_id}"]
    for f in result.files:
        extra = f" [{f.encoding}]" if f.encoding else ""
        lines.append(f"  {f.status:9} {f.file}{extra}: +{f.documents_added:,} of {f.documents_seen:,} read, "
                     f"{f.errors:,} errors {f.message}".rstrip())
        for reason, n in sorted(f.error_reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"            {n:>7,} × {reason}")
    if counts["mojibake_fixed"] or counts["control_chars_removed"]:
        lines.append(f"  repaired: {counts['mojibake_fixed']:,} documents with mojibake, "
                     f"{counts['control_chars_removed']:,} control characters removed")
    if counts["errors"]:
        lines.append(f"  {counts['errors']:,} skipped record(s) are listed in the ingest_errors table "
                     "(`studio status`, or the Ingest page)")
    failed = [f for f in result.files if f.status == "failed"]
    exit_code = 0
    if failed:
        exit_code = 3
        print(f"studio ingest: {len(failed)} of {len(result.files)} file(s) could not be read: "
              f"{failed[0].file}: {failed[0].message}", file=sys.stderr)
    return CommandResult(result.to_dict(), lines, exit_code)
