"""`studio dedup WORKSPACE --method exact|minhash|semantic [parameters]`."""

from __future__ import annotations

import argparse

from core.dedup import DEFAULT_ROLES, POLICIES, POLICY_ALIASES, SCOPES, DedupConfig, deduplicate
from core.models import BUNDLED_EMBEDDER
from core.text import NormalisationConfig
from core.workspace import ROLES, Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments, comma_list


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dedup", help="remove exact, near (MinHash) or semantic duplicates; every drop names the kept document",
        description="Find duplicate documents, keep one per cluster and record the others as drops. Re-running "
                    "a method replaces its earlier result (thresholds can move without re-ingesting). "
                    "Signatures and embeddings are stored, so new documents are compared with an already "
                    "curated corpus without recomputing it (with --policy first the older document is kept).")
    add_workspace_arguments(p)
    p.add_argument("--method", required=True, choices=("exact", "minhash", "semantic"))
    p.add_argument("--threshold", type=float,
                   help="minhash: Jaccard similarity (default 0.8); semantic: cosine (default 0.95)")
    p.add_argument("--floor", type=float,
                   help="store pairs down to this similarity for the review page's movable threshold "
                        "(default threshold − 0.2 for minhash, − 0.1 for semantic)")
    p.add_argument("--scope", choices=SCOPES, default="all",
                   help="which documents may duplicate each other: all (across roles), within a role, "
                        "within a corpus (default all)")
    p.add_argument("--keep", "--policy", dest="policy", default="first",
                   choices=(*POLICIES, *POLICY_ALIASES),
                   help="which member of a cluster is kept, of those the steps before this one in the flow left: "
                        "first ingested, longest, or best_quality (the stored quality composite; needs "
                        "`studio score` first) (default first)")
    p.add_argument("--roles", default=",".join(DEFAULT_ROLES),
                   help=f"comma-separated roles to include (of {', '.join(ROLES)}; default {','.join(DEFAULT_ROLES)})")
    p.add_argument("--corpora", default="", help="comma-separated corpora to include (default: all of the roles)")
    p.add_argument("--limit", type=int, help="at most this many documents, in ingest order")
    g = p.add_argument_group("exact")
    g.add_argument("--keep-case", action="store_true", help="do not fold case")
    g.add_argument("--keep-punctuation", action="store_true", help="do not remove punctuation")
    g.add_argument("--keep-whitespace", action="store_true", help="do not collapse whitespace")
    g.add_argument("--no-nfkc", action="store_true", help="do not apply Unicode NFKC")
    g = p.add_argument_group("minhash")
    g.add_argument("--num-perm", type=int, default=128, help="permutations per signature (default 128)")
    g.add_argument("--ngram", type=int, default=5,
                   help="shingle size: words, or characters for Chinese/Japanese documents (default 5)")
    g.add_argument("--bands", type=int, help="LSH bands (with --rows; default: solved for the threshold)")
    g.add_argument("--rows", type=int, help="LSH rows per band")
    g = p.add_argument_group("semantic")
    g.add_argument("--model", default=BUNDLED_EMBEDDER,
                   help="sentence-transformers model id or path (default: the bundled all-MiniLM-L6-v2)")
    g.add_argument("--max-tokens", type=int, default=128, help="truncation in word pieces (default 128)")
    g.add_argument("--neighbours", type=int, default=10, help="nearest neighbours examined per document")
    p.set_defaults(handler=dedup_command)


def config_from_args(args: argparse.Namespace) -> DedupConfig:
    return DedupConfig(
        method=args.method, threshold=args.threshold, floor=args.floor, scope=args.scope, policy=args.policy,
        roles=tuple(comma_list(args.roles)), corpora=tuple(comma_list(args.corpora)), limit=args.limit,
        normalisation=NormalisationConfig(unicode_nfkc=not args.no_nfkc, casefold=not args.keep_case,
                                          fold_whitespace=not args.keep_whitespace,
                                          strip_punctuation=not args.keep_punctuation),
        num_perm=args.num_perm, ngram=args.ngram, bands=args.bands, rows=args.rows,
        embed_model=args.model, max_tokens=args.max_tokens, neighbours=args.neighbours)


def dedup_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(args)
    cfg.validate()
    with Workspace.open(args.workspace, create=False) as ws:
        result = deduplicate(ws, cfg, report)
    data = {**result.as_dict(), "params": cfg.params()}
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
