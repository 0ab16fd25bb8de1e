"""`studio bench-import`, `studio recall` and `studio decontam`: benchmarks, eval-driven recall, decontamination."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.decontam import DecontamConfig, check_texts, contamination_index, run_decontam
from core.readers import ReadOptions, SourceInfo, read_source
from core.recall import RecallConfig, run_recall
from core.steps import add_config_arguments, config_from_args, get_step
from core.workspace import Workspace, WorkspaceError
from studio.cli import CommandResult, Reporter, add_workspace_arguments
from studio.commands.steps import step_command_parser


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-import", help="import a benchmark (MCQ JSONL, MMLU/CMMLU CSV, free-text QA) "
                                            "as domain or general (retention)")
    add_workspace_arguments(p)
    add_config_arguments(p, BenchmarkImportConfig)
    p.set_defaults(handler=bench_import_command)

    p = step_command_parser(sub, get_step("recall"),
                            help="recall documents close to benchmark items (top-k above a floor, "
                                 "below a leakage cap) and a random control set")
    p.set_defaults(handler=recall_command)

    p = step_command_parser(sub, get_step("decontam"),
                            help="n-gram contamination check against benchmark items "
                                 "(drop or cut; run over corpora or a finished mix file)")
    p.add_argument("--file", type=Path,
                   help="check this file (e.g. an exported mix, JSONL with a text field) instead of the workspace's "
                        "corpora; nothing is recorded")
    p.set_defaults(handler=decontam_command)


def bench_import_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(BenchmarkImportConfig, args)
    with Workspace.open(args.workspace, create=False) as ws:
        result = import_benchmark(ws, cfg, report)
    info = result.benchmark
    data = {"benchmark": info.corpus, "kind": info.kind, "items": info.items, "subjects": info.subjects,
            "documents_added": result.documents_added, "errors": result.errors,
            "free_text_items": info.free_text_items, "items_without_answer": info.items_without_answer,
            "ingest_run_id": result.ingest_run_id}
    lines = [f"benchmark {info.corpus} ({info.kind}): {info.items:,} items in {len(info.subjects)} subject(s); "
             f"{result.documents_added:,} added now, {result.errors:,} unreadable record(s)"]
    lines += [f"  {n:>6,}  {s}" for s, n in list(info.subjects.items())[:20]]
    if len(info.subjects) > 20:
        lines.append(f"  … and {len(info.subjects) - 20} more subjects")
    if info.items_without_answer:
        lines.append(f"  {info.items_without_answer:,} item(s) have no gold answer")
    return CommandResult(data, lines)


def recall_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(RecallConfig, args)
    cfg.benchmarks, cfg.pool = cfg.benchmarks or None, cfg.pool or None  # an empty option: all, as no option
    with Workspace.open(args.workspace, create=False) as ws:
        result = run_recall(ws, cfg, report)
    data = result.to_dict()
    lines = [f"recall run {result.run_id} ({result.index_kind} search, {result.search_seconds:.2f} s; embedding "
             f"{result.embed_seconds:.1f} s)",
             f"  pool {result.pool_documents:,} documents, {result.items:,} benchmark items",
             f"  recalled {result.recalled_documents:,} documents ({result.recalled_tokens:,} tokens); control "
             f"{result.control_documents:,} documents ({result.control_tokens:,} tokens)",
             f"  excluded by the leakage cap {cfg.cap}: {result.excluded_by_cap:,} documents; "
             f"{result.items_flagged_near:,} items have a near copy",
             f"  {'benchmark':24} {'kind':8} {'items':>6} {'with hit':>9} {'hits/item':>9} {'capped':>7}"]
    for b in result.by_benchmark:
        lines.append(f"  {b['benchmark'][:24]:24} {str(b['kind']):8} {b['items']:>6,} {b['items_with_hit']:>9,} "
                     f"{b['hits_per_item']:>9} {b['documents_capped']:>7,}")
    return CommandResult(data, lines)


def _file_texts(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    texts = []
    for rec in read_source(path, ReadOptions(), SourceInfo()):
        if rec.error is None and rec.text is not None:
            texts.append(rec.text)
    return texts


def decontam_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(DecontamConfig, args)
    corpora_named = cfg.corpora is not None
    cfg.benchmarks, cfg.corpora = cfg.benchmarks or None, cfg.corpora or None  # an empty option: all
    if args.file:
        with Workspace.open(args.workspace, create=False, read_only=True) as ws:
            index = contamination_index(ws, cfg)
        texts = _file_texts(args.file)
        findings = check_texts(index, texts)
        data = {"file": str(args.file), "texts": len(texts), "contaminated": len(findings),
                "dropped": sum(f["verdict"] == "drop" for f in findings),
                "cut": sum(f["verdict"] == "cut" for f in findings), "findings": findings[:1000]}
        lines = [f"{args.file}: {len(findings):,} of {len(texts):,} texts share a {cfg.n}-gram with a benchmark item "
                 f"({data['dropped']:,} would be dropped, {data['cut']:,} cut)"]
        for f in findings[:10]:
            o = f["overlaps"][0]
            lines.append(f"  text {f['index']}: {o['benchmark']} item {o['item_id']}: {o['ngram'][:100]!r}")
        return CommandResult(data, lines, exit_code=1 if findings else 0)
    if corpora_named and not cfg.corpora:
        raise WorkspaceError("--corpora names no corpus")
    with Workspace.open(args.workspace, create=False) as ws:
        result = run_decontam(ws, cfg, report)
    data = result.to_dict()
    lines = [f"decontam run {result.run_id}: {result.documents_contaminated:,} of {result.documents_checked:,} "
             f"documents share a {cfg.n}-gram with a benchmark item ({result.documents_dropped:,} dropped, "
             f"{result.documents_cut:,} to be cut at export)",
             f"  {result.items_checked:,} items checked ({result.items_too_short:,} too short to check), "
             f"{result.items_flagged:,} found in training text"]
    for bench, v in result.by_benchmark.items():
        lines.append(f"  {bench:24} {v['documents']:>7,} documents, {v['items']:>6,} of "
                     f"{v.get('items_checked', 0):,} items")
    if result.by_corpus:
        lines.append("  by corpus: " + json.dumps(result.by_corpus))
    return CommandResult(data, lines)
