"""Where the studio finds things: shared data, workspaces, and the folders the app may read from.

Each is an environment variable with a default that works in a checkout beside `../shared`, so tests, demos and
benchmarks read real data from wherever a user keeps it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

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


def clean_file_name(name: str, fallback: str, suffix: str | None = None) -> str:
    """`name` (a browser's file name, or a name a user typed) made safe as one file name in a workspace folder:
    no folder part, each run of characters other than letters, digits, '_', '-' and '.' made one '_', no leading
    or trailing '.' or '_' (no hidden file, no '..'), the last suffix in lower case; `fallback` if nothing is left.
    With `suffix` (a name typed for a file of that type), the result ends in it once, typed or not."""
    cleaned = re.sub(r"[^\w.\-]+", "_", Path(name.replace("\\", "/")).name).strip("._")
    if suffix is not None:
        if cleaned.lower().endswith(suffix.lower()):
            cleaned = cleaned[:-len(suffix)].rstrip("._")
        return (cleaned or fallback) + suffix
    if not cleaned:
        return fallback
    path = Path(cleaned)
    return (path.stem.strip("._") or fallback) + path.suffix.lower()


class SavedUpload(NamedTuple):
    path: Path
    written: bool  # False when the folder already held the same bytes under that name


def save_upload(folder: Path, name: str, data: bytes, fallback: str = "upload") -> SavedUpload:
    """Keep an uploaded file in a workspace folder under its cleaned name (`clean_file_name`); the same bytes
    uploaded again are not rewritten, so a page re-run by Streamlit does not touch the file again."""
    target = Path(folder) / clean_file_name(name, fallback)
    if target.is_file() and target.read_bytes() == data:
        return SavedUpload(target, False)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return SavedUpload(target, True)


def read_json(path: Path) -> dict[str, Any] | None:
    """A small JSON file another process writes (a job's progress, a snapshot's info), or None when absent or
    unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Readers poll these files: write a temporary file and rename it, so they never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, default=str), encoding="utf-8")
    tmp.replace(path)
