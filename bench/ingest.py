"""Ingest throughput and peak memory against DuckDB's own `read_ndjson`, measured in the same run.

The shared corpora (every corpus_*.jsonl) are replicated into one JSONL of at least 500,000 documents (each copy
tagged so texts differ). Each contender runs in its own child process, so its peak RSS is its own:
  * studio: `core.ingest.ingest` (parsing, validation, encoding repair, hashing, language, provenance);
  * baseline: `CREATE TABLE AS SELECT * FROM read_ndjson(...)` into a bare database file.
The exact token-count pass (`core.tokens.count_tokens`) is measured separately on a sample: it is its own cached
pass, off the ingest's critical path.

    python bench/ingest.py [--docs 500000] [--token-sample 20000]

With `--long-line-mb N`, instead: the peak RSS (VmHWM) of ingesting 2,000 ordinary lines around one JSONL record
of N MB on a single line (rejected as oversized while it streams by), against the same file without it.

    nice python bench/ingest.py --long-line-mb 2048
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import data_root  # noqa: E402


def build_corpus(target: Path, docs: int) -> tuple[int, int]:
    sources = sorted(data_root().glob("*/corpus_*.jsonl"))
    records = [orjson.loads(line) for src in sources for line in src.read_bytes().splitlines() if line.strip()]
    written = 0
    with open(target, "wb") as fh:
        copy = 0
        while written < docs:
            for rec in records:
                if written >= docs:
                    break
                fh.write(orjson.dumps({"id": f"{rec['id']}#{copy}", "text": f"{rec['text']} [{copy}]",
                                       "source": rec["source"]}) + b"\n")
                written += 1
            copy += 1
    return written, target.stat().st_size


def build_long_line_file(target: Path, line_mb: int) -> int:
    """2,000 corpus lines with one `line_mb` MB single-line record in the middle (0: without it); its size."""
    lines = (data_root() / "medquad/corpus_en_medquad_nih_paragraphs.jsonl").read_bytes().splitlines(True)[:2000]
    piece = b"fever and chills " * (1 << 16)  # ~1.1 MB of text, written piece by piece
    with open(target, "wb") as fh:
        fh.writelines(lines[:1000])
        if line_mb:
            fh.write(b'{"id": "huge", "text": "')
            for _ in range(max(1, (line_mb << 20) // len(piece))):
                fh.write(piece)
            fh.write(b'"}\n')
        fh.writelines(lines[1000:])
    return target.stat().st_size


def vm_hwm_mb() -> float:
    """This process's peak resident memory (VmHWM)."""
    with open("/proc/self/status", encoding="ascii") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))


def child(kind: str, corpus: Path, workdir: Path, sample: int) -> dict:
    start = time.perf_counter()
    if kind == "long_line":
        from core.ingest import IngestConfig, ingest
        from core.workspace import Workspace

        with Workspace.open(workdir / f"ws_{corpus.stem}") as ws:
            result = ingest(ws, IngestConfig([str(corpus)], "bench", "general"))
            return {"kind": kind, "rows": result.documents_added, "errors": result.counts(),
                    "seconds": time.perf_counter() - start, "peak_rss_mb": vm_hwm_mb()}
    if kind == "studio":
        from core.ingest import IngestConfig, ingest
        from core.workspace import Workspace

        with Workspace.open(workdir / "studio_ws") as ws:
            result = ingest(ws, IngestConfig([str(corpus)], "bench", "general"))
            assert result.errors == 0
            rows = result.documents_added
    elif kind == "duckdb":
        import duckdb

        con = duckdb.connect(str(workdir / "bare.duckdb"))
        con.execute(f"CREATE TABLE docs AS SELECT * FROM read_ndjson('{corpus}')")
        rows = con.execute("SELECT count(*) FROM docs").fetchone()[0]
        con.close()
    elif kind == "tokens":
        from core.ingest import IngestConfig, ingest
        from core.models import load_tokenizer
        from core.tokens import TokenCountConfig, count_tokens
        from core.workspace import Workspace

        head = workdir / "sample.jsonl"
        with open(corpus, "rb") as src, open(head, "wb") as dst:
            for _ in range(sample):
                dst.write(src.readline())
        with Workspace.open(workdir / "tokens_ws") as ws:
            ingest(ws, IngestConfig([str(head)], "sample", "general"))
            load_tokenizer(ws.tokenizer_name)  # loading (cached conversion) is not counting
            start = time.perf_counter()
            result = count_tokens(ws, TokenCountConfig())
            rows = result.documents_counted
            return {"kind": kind, "rows": rows, "seconds": time.perf_counter() - start, "tokens": result.tokens,
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    else:
        raise ValueError(kind)
    return {"kind": kind, "rows": rows, "seconds": time.perf_counter() - start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(kind: str, corpus: Path, workdir: Path, sample: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--corpus", str(corpus), "--workdir",
                          str(workdir), "--token-sample", str(sample)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=500_000)
    parser.add_argument("--token-sample", type=int, default=20_000)
    parser.add_argument("--child")
    parser.add_argument("--corpus", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--long-line-mb", type=int, default=0)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.corpus, args.workdir, args.token_sample)))
        return
    workdir = Path(tempfile.mkdtemp(prefix="studio-bench-ingest-"))
    try:
        if args.long_line_mb:
            for line_mb in (0, args.long_line_mb):
                path = workdir / f"long_{line_mb}.jsonl"
                size = build_long_line_file(path, line_mb)
                r = run_child("long_line", path, workdir, 0)
                path.unlink()
                print(f"{size / 2**20:9,.0f} MB file, single line of {line_mb:,} MB: {r['rows']:,} documents, "
                      f"{r['errors'].get('error:oversized document', 0)} oversized, {r['seconds']:.1f} s, "
                      f"peak RSS (VmHWM) {r['peak_rss_mb']:,.0f} MB")
            return
        corpus = workdir / "corpus.jsonl"
        docs, size = build_corpus(corpus, args.docs)
        mb = size / 1e6
        print(f"corpus: {docs:,} documents, {mb:,.0f} MB (shared corpora replicated)")
        baseline = run_child("duckdb", corpus, workdir, args.token_sample)
        studio = run_child("studio", corpus, workdir, args.token_sample)
        tokens = run_child("tokens", corpus, workdir, args.token_sample)
        for r in (baseline, studio):
            name = "duckdb read_ndjson (bare table)" if r["kind"] == "duckdb" else "studio ingest"
            print(f"{name:34} {r['rows']:>9,} docs {r['seconds']:7.1f} s  {r['rows'] / r['seconds']:>9,.0f} docs/s  "
                  f"{mb / r['seconds']:6.1f} MB/s  peak RSS {r['peak_rss_mb']:,.0f} MB")
        print(f"ratio studio / read_ndjson time: {studio['seconds'] / baseline['seconds']:.1f}x "
              f"(target within 10x); studio rate {studio['rows'] / studio['seconds']:,.0f} docs/s "
              f"(target >= 20,000)")
        print(f"token count pass (SmolLM2 tokenizer, batch encode): {tokens['rows']:,} docs, "
              f"{tokens['tokens']:,} tokens in {tokens['seconds']:.1f} s = "
              f"{tokens['rows'] / tokens['seconds']:,.0f} docs/s, {tokens['tokens'] / tokens['seconds']:,.0f} tokens/s")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
