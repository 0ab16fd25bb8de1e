"""Where the studio finds things: shared data, workspaces, and the folders the app may read from.

Each is an environment variable with a default that works in a checkout beside `../shared`, so tests, demos and
benchmarks read real data from wherever a user keeps it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The public data sets (`STUDIO_DATA`, default `../shared/data` beside the checkout)."""
    return Path(os.environ.get("STUDIO_DATA", REPO_ROOT.parent / "shared" / "data")).expanduser().resolve()


def workspaces_root() -> Path:
    """Where the app creates new workspaces (`STUDIO_WORKSPACES`, default `workspaces/` in the checkout)."""
    return Path(os.environ.get("STUDIO_WORKSPACES", REPO_ROOT / "workspaces")).expanduser().resolve()


def allowed_roots() -> list[Path]:
    """Folders the app may ingest from by path (`STUDIO_ROOTS`, os.pathsep-separated; default: the data root
    and the workspaces root). Nothing outside them can be named from the browser."""
    raw = os.environ.get("STUDIO_ROOTS")
    roots = [Path(p) for p in raw.split(os.pathsep) if p] if raw else [data_root(), workspaces_root()]
    return [r.expanduser().resolve() for r in roots]


def upload_limit_mb() -> int:
    """The largest upload the app accepts (`STUDIO_UPLOAD_MB`, default 200, Streamlit's own default)."""
    return int(os.environ.get("STUDIO_UPLOAD_MB", "200"))


def resolve_within_roots(path: str | Path, roots: list[Path] | None = None) -> Path:
    """`path` resolved (symlinks and `..` followed) if it lies inside an allowed root; ValueError otherwise."""
    resolved = Path(path).expanduser().resolve()
    for root in roots if roots is not None else allowed_roots():
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    raise ValueError(f"{path} is outside the folders this studio may read "
                     f"({', '.join(str(r) for r in (roots or allowed_roots()))}); set STUDIO_ROOTS to allow more")
