"""`studio ingest`: files, folders, globs or hf:// datasets into a corpus of the workspace."""

from __future__ import annotations

import argparse
import sys

from core.ingest import IngestConfig, ingest
from core.readers import FORMATS, LAYOUTS
from core.workspace import ROLES, Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="ingest files, folders, globs or hf:// datasets into a corpus")
    add_workspace_arguments(p)
    p.add_argument("sources", nargs="+", help="files, folders (recursive), globs, or hf://owner/name[:config][/split]")
    p.add_argument("--corpus", required=True, help="corpus name (created on first ingest)")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument("--format", dest="fmt", default="auto", choices=FORMATS, help="default: from the file name")
    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="how a record becomes a document (default: guessed per record)")
    p.add_argument("--text-field", help="field name or dotted path of the text (default: text, then content)")
    p.add_argument("--template", help="build the text from fields, e.g. '{title}\\n{answer}'")
    p.add_argument("--txt-unit", default="paragraph", choices=("paragraph", "file"),
                   help="TXT/Markdown: one document per paragraph or per file")
    p.add_argument("--encoding", help="force an encoding (default: detected)")
    p.add_argument("--pattern", default="**/*", help="glob for files inside folders")
    p.add_argument("--min-chars", type=int, default=1, help="shorter documents are recorded as errors")
    p.add_argument("--max-chars", type=int, default=1_000_000, help="longer documents are recorded as errors")
    p.set_defaults(handler=ingest_command)


def ingest_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = IngestConfig(sources=args.sources, corpus=args.corpus, role=args.role, fmt=args.fmt, layout=args.layout,
                       text_field=args.text_field, template=args.template, txt_unit=args.txt_unit,
                       encoding=args.encoding, pattern=args.pattern, min_chars=args.min_chars,
                       max_chars=args.max_chars)
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
