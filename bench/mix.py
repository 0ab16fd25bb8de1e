"""Mix export at a million documents: time and peak memory, streaming versus materialising, same run.

The workspace: the demo corpora (real shared data, real token counts from the bundled tokenizer), with every
domain, general and instruction document replicated (`--copies`, default 40) into new documents by SQL, so the
workspace holds over a million drawable documents; benchmarks are kept as they are. The mix is the MIP preset
(80 % domain, 10 % instruction, 10 % general replay) with a token budget sized to give `--documents` training
documents (default 1,000,000).

Each measurement runs in a fresh child process and reports its own peak RSS (VmHWM):
- `export`: `core.mix.build_mix` with decontamination against every benchmark (the real thing);
- `export_no_decontam`: the same without decontamination (the streaming export alone);
- `export_unlimited`: the streaming export without DuckDB's memory limit (`core.mix.EXPORT_MEMORY_LIMIT`);
- `export_quarter`: the streaming export of a quarter of the documents: peak memory should not grow with size;
- `baseline_duckdb_copy`: DuckDB's own `COPY (ordered mix JOIN texts) TO 'x.json'` of the same membership
  (the fastest export there is; no Python in the loop, no decontamination, no Parquet);
- `baseline_materialise`: fetch the ordered texts into one Python list, then write JSONL (what a naive
  exporter does).

Run: `flock /tmp/studio-heavy.lock .venv/bin/python bench/mix.py [--documents N] [--copies K] [--keep]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from core.config import data_root  # noqa: E402
from core.demo import build_demo  # noqa: E402
from core.mix import EXPORT_MEMORY_LIMIT, PRESETS, build_mix, plan_mix, preset_recipe  # noqa: E402
from core.tokens import count_tokens  # noqa: E402
from core.workspace import Workspace  # noqa: E402

PRESET = "MIP 80/10/10"


def build_workspace(path: Path, copies: int) -> dict[str, Any]:
    if (path / "studio.duckdb").exists():
        with Workspace.open(path, read_only=True) as ws:
            return {"documents": ws.scalar("SELECT count(*) FROM documents"), "reused": True}
    start = time.perf_counter()
    with Workspace.open(path) as ws:
        build_demo(ws, data_root(), steps=False)
        count_tokens(ws)
        # Replicas are new documents (own ids) with the original text and token count; the copy number goes
        # into the text so that replicas are distinct texts, as a real large corpus's would be.
        ws.con.execute(
            """
            INSERT INTO documents (doc_id, corpus, text, kind, record, char_count, token_count, language,
                                   content_hash, source_file, source_line, byte_offset, repairs, run_id)
            SELECT d.doc_id || '-r' || k.copy, d.corpus, d.text || ' [r' || k.copy || ']', d.kind, d.record,
                   d.char_count, d.token_count + 3, d.language, md5(d.content_hash || '-r' || k.copy),
                   d.source_file, d.source_line, d.byte_offset, d.repairs, d.run_id
            FROM documents d JOIN corpora c ON c.name = d.corpus, range(1, ?) k(copy)
            WHERE c.role <> 'benchmark'
            """, [copies])
        documents = ws.scalar("SELECT count(*) FROM documents")
    return {"documents": documents, "reused": False, "seconds": round(time.perf_counter() - start, 1)}


def budget_for(path: Path, documents: int) -> int:
    """The token budget whose mix has about `documents` documents (from the components' mean lengths)."""
    with Workspace.open(path, read_only=True) as ws:
        plan = plan_mix(ws, preset_recipe(PRESET, 1_000_000, decontaminate=False))
    per_token = sum(PRESETS[PRESET][c.name] * c.available_documents / c.available_tokens for c in plan.components)
    return int(documents / per_token * 1.01)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: per address space, so a fresh child starts from zero;
    ru_maxrss would carry the parent's peak over the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child(mode: str, workspace: str, budget: int, out: str) -> dict[str, Any]:
    start = time.perf_counter()
    recipe = preset_recipe(PRESET, budget, name="bench", seed=1, decontaminate=mode == "export",
                           formats=["jsonl", "parquet"])
    result: dict[str, Any] = {"mode": mode}
    if mode.startswith("export"):
        limit = None if mode == "export_unlimited" else EXPORT_MEMORY_LIMIT
        with Workspace.open(workspace) as ws:
            res = build_mix(ws, recipe, out, memory_limit=limit)
        result |= {"documents": res.train_documents, "tokens": res.train_tokens,
                   "decontam_dropped": res.decontamination["dropped_documents"],
                   "decontam_checked": res.decontamination["checked_documents"],
                   "bytes_jsonl": res.files["train.jsonl"].bytes, "bytes_parquet": res.files["train.parquet"].bytes}
    else:
        with Workspace.open(workspace, read_only=True) as ws:
            mix_id = ws.scalar("SELECT mix_id FROM mixes WHERE name = 'bench' ORDER BY created_at DESC LIMIT 1")
            sql = ("SELECT d.text FROM mix_members m JOIN documents d USING (doc_id) "
                   f"WHERE m.mix_id = '{mix_id}' AND m.split = 'train' ORDER BY m.position")
            Path(out).mkdir(parents=True, exist_ok=True)
            target = Path(out) / "train.jsonl"
            if mode == "baseline_duckdb_copy":
                ws.con.execute(f"COPY ({sql}) TO '{target}' (FORMAT json)")
            else:
                import orjson

                texts = [r[0] for r in ws.con.execute(sql).fetchall()]
                with open(target, "wb") as fh:
                    fh.write(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
            with open(target, "rb") as fh:
                lines = sum(1 for _ in fh)
            result |= {"documents": lines, "bytes_jsonl": target.stat().st_size}
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_child(mode: str, workspace: Path, budget: int, out: Path) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--workspace", str(workspace),
                           "--budget", str(budget), "--out", str(out)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{mode} failed: {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--copies", type=int, default=40)
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/studio-bench-mix/ws"))
    parser.add_argument("--keep", action="store_true", help="keep the workspace and exports")
    parser.add_argument("--child")
    parser.add_argument("--budget", type=int)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, str(args.workspace), args.budget, args.out)))
        return
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}")
    info = build_workspace(args.workspace, args.copies)
    print(f"workspace {args.workspace}: {info}")
    budget = budget_for(args.workspace, args.documents)
    print(f"budget {budget:,} tokens for about {args.documents:,} documents ({PRESET})")
    root = args.workspace.parent
    results = {}
    results["export_no_decontam"] = run_child("export_no_decontam", args.workspace, budget, root / "nodecon")
    results["baseline_duckdb_copy"] = run_child("baseline_duckdb_copy", args.workspace, budget, root / "copy")
    results["baseline_materialise"] = run_child("baseline_materialise", args.workspace, budget, root / "list")
    results["export_quarter"] = run_child("export_no_decontam", args.workspace, budget // 4, root / "quarter")
    results["export_unlimited"] = run_child("export_unlimited", args.workspace, budget, root / "unlimited")
    results["export"] = run_child("export", args.workspace, budget, root / "full")
    full, nodecon = results["export"], results["export_no_decontam"]
    copy, listed, quarter = results["baseline_duckdb_copy"], results["baseline_materialise"], results["export_quarter"]
    print()
    print(f"export with decontamination: {full['documents']:,} documents, {full['tokens']:,} tokens in "
          f"{full['seconds']:.1f} s ({full['documents'] / full['seconds']:,.0f} docs/s), peak RSS "
          f"{full['peak_rss_mb']:,.0f} MB; {full['decontam_dropped']:,} dropped by decontamination")
    print(f"export without decontamination: {nodecon['seconds']:.1f} s "
          f"({nodecon['documents'] / nodecon['seconds']:,.0f} docs/s), peak RSS {nodecon['peak_rss_mb']:,.0f} MB; "
          f"JSONL {nodecon['bytes_jsonl'] / 1e6:,.0f} MB, Parquet {nodecon['bytes_parquet'] / 1e6:,.0f} MB")
    unlimited = results["export_unlimited"]
    print(f"the same without DuckDB's memory limit ({EXPORT_MEMORY_LIMIT}): {unlimited['seconds']:.1f} s, peak RSS "
          f"{unlimited['peak_rss_mb']:,.0f} MB -> the limit costs {nodecon['seconds'] / unlimited['seconds']:.2f}x "
          f"the time for {nodecon['peak_rss_mb'] / unlimited['peak_rss_mb']:.2f}x the memory")
    print(f"quarter-size export ({quarter['documents']:,} documents): peak RSS {quarter['peak_rss_mb']:,.0f} MB "
          f"-> full/quarter peak RSS ratio {nodecon['peak_rss_mb'] / quarter['peak_rss_mb']:.2f} "
          f"for {nodecon['documents'] / quarter['documents']:.1f}x the documents")
    print(f"baseline DuckDB COPY of the ordered JSONL: {copy['seconds']:.1f} s, peak RSS {copy['peak_rss_mb']:,.0f} MB"
          f" -> streaming export (JSONL + Parquet + members + manifest) takes {nodecon['seconds'] / copy['seconds']:.2f}x"
          " its time")
    print(f"baseline materialise-then-write: {listed['seconds']:.1f} s, peak RSS {listed['peak_rss_mb']:,.0f} MB -> "
          f"streaming peak RSS is {nodecon['peak_rss_mb'] / listed['peak_rss_mb']:.2f}x of it")
    if not args.keep:
        for sub in ("nodecon", "copy", "list", "quarter", "unlimited", "full"):
            shutil.rmtree(root / sub, ignore_errors=True)


if __name__ == "__main__":
    main()
