"""`metrics.jsonl`: one JSON line per logging step of a training job (rank 0 writes it, the page and the report
read it). Kept free of torch so readers import nothing heavy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_NAME = "metrics.jsonl"


def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    path = Path(job_dir) / METRICS_NAME
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written
    return out


def truncate_metrics(job_dir: Path, last_step: int) -> float:
    """Drop lines after `last_step` (a resume repeats them from the checkpoint); returns the elapsed time so far."""
    kept = [r for r in read_metrics(job_dir) if r.get("step", 0) <= last_step]
    path = Path(job_dir) / METRICS_NAME
    path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
    return float(kept[-1].get("elapsed") or 0.0) if kept else 0.0
