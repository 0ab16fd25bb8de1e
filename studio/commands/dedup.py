"""`studio dedup WORKSPACE --method exact|minhash|semantic [parameters]`."""

from __future__ import annotations

import argparse

from core.dedup import DedupConfig, deduplicate
from core.steps import config_from_args, get_step
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter
from studio.commands.steps import step_command_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = step_command_parser(
        sub, get_step("dedup"),
        help="remove exact, near (MinHash) or semantic duplicates; every drop names the kept document",
        description="Find duplicate documents, keep one per cluster and record the others as drops. Re-running "
                    "a method replaces its earlier result (thresholds can move without re-ingesting). "
                    "Signatures and embeddings are stored, so new documents are compared with an already "
                    "curated corpus without recomputing it (with --policy first the older document is kept).")
    p.set_defaults(handler=dedup_command)


def dedup_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(DedupConfig, args)
    cfg.validate()
    with Workspace.open(args.workspace, create=False) as ws:
        result = deduplicate(ws, cfg, report)
    data = {**result.to_dict(), "params": cfg.params()}
    lines = [f"{args.method} dedup (run {result.run_id}): {result.dropped:,} of {result.documents:,} documents "
             f"dropped in {result.clusters:,} clusters at threshold {result.threshold:g}; "
             f"{result.pairs_stored:,} pairs stored for review"]
    if cfg.method == "minhash":
        bands, rows = cfg.lsh_shape()
        lines.append(f"  {cfg.num_perm} permutations, {cfg.ngram}-gram shingles, {bands} bands × {rows} rows, "
                     f"{result.details.get('signatures_computed', 0):,} signatures computed, "
                     f"{result.details.get('candidates', 0):,} candidate pairs verified")
    elif cfg.method == "exact":
        lines.append(f"  normalisation: {cfg.normalisation.describe()}")
    else:
        lines.append(f"  model {cfg.embed_model} (max {cfg.max_tokens} tokens), index {result.details.get('index')}")
    for corpus, n in sorted(result.by_corpus.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {n:>8,}  {corpus}")
    return CommandResult(data, lines)
