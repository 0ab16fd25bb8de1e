"""Shared fixtures: the real data folder, workspaces built from it, the app served locally, a headless browser.

The data folder is `STUDIO_DATA` (default `../shared/data`); tests never copy it into the repository.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The browser pieces live in browser_walk (shared with bench/browser_demo.py); imported here under their old names.
from browser_walk import CHROMIUM, launch_chromium, open_studio_page, start_app, stop_app, wait_for_app  # noqa: E402

from core.config import REPO_ROOT, data_root  # noqa: E402
from core.demo import build_demo  # noqa: E402
from core.workspace import Workspace  # noqa: E402

__all__ = ["CHROMIUM", "open_studio_page", "wait_for_app"]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    root = data_root()
    if not (root / "MANIFEST.md").exists():
        pytest.fail(f"the shared data folder is missing at {root}: set STUDIO_DATA to its location")
    return root


@pytest.fixture(scope="session")
def demo_ws_path(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with every demo corpus ingested (no curation steps). Read it; copy it to write."""
    path = tmp_path_factory.mktemp("demo") / "ws"
    with Workspace.open(path) as ws:
        build_demo(ws, data_dir, steps=False, publish=False)  # no read snapshot: copies stay small
    return path


@pytest.fixture
def ws_copy(demo_ws_path: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the ingested demo workspace."""
    target = tmp_path / "ws"
    shutil.copytree(demo_ws_path, target)
    return target


@pytest.fixture
def empty_ws(tmp_path: Path) -> Iterator[Workspace]:
    with Workspace.open(tmp_path / "empty") as ws:
        yield ws


@pytest.fixture
def app_server(data_dir: Path) -> Iterator[Callable[[Path], str]]:
    """Start `studio app` on a workspace; returns its base URL. Servers stop when the test ends."""
    procs = []

    def start(workspace: Path) -> str:
        proc, url = start_app(workspace, {"STUDIO_DATA": str(data_dir)}, timeout_s=60)
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        stop_app(proc)


@pytest.fixture(scope="session")
def _browser() -> Iterator[object]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"browser tests need Debian chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        yield browser
        browser.close()


@pytest.fixture
def browser_page(_browser: object) -> Iterator[Callable[[str], object]]:
    """`open(url)` -> a Playwright page on a Streamlit URL, loaded and idle."""
    contexts = []

    def open_page(url: str):
        context = _browser.new_context(viewport={"width": 1500, "height": 1100})
        contexts.append(context)
        page = context.new_page()
        page.goto(url)
        wait_for_app(page)
        return page

    yield open_page
    for context in contexts:
        context.close()


def shared_text(data_dir: Path, relative: str, record_id: str) -> str:
    """The text of the record with id `record_id` in a JSONL file of the shared data."""
    with open(data_dir / relative, encoding="utf-8") as fh:
        for line in fh:
            record = json.loads(line)
            if record["id"] == record_id:
                return record["text"]
    raise AssertionError(f"{record_id} not in {relative}")


def run_page(page: str | Path, workspace: Path):
    """Run a page script with AppTest on `workspace` (a path under pages/ or a page file name)."""
    from streamlit.testing.v1 import AppTest

    file = Path(page) if Path(page).is_absolute() else REPO_ROOT / "pages" / Path(page).name
    at = AppTest.from_file(str(file), default_timeout=60)
    at.session_state["workspace"] = str(workspace)
    return at.run()


def metric_value(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def replicated_jsonl(source: Path, target: Path, copies: int) -> Path:
    """`copies` numbered copies of every record of a JSONL file: a file long enough to kill an ingest midway."""
    lines = source.read_bytes().splitlines()
    with open(target, "wb") as fh:
        for copy in range(copies):
            for line in lines:
                record = json.loads(line)
                record["text"] = f"[{copy}] {record['text']}"
                fh.write(json.dumps(record).encode() + b"\n")
    return target


def kill_ingest_midway(ws_path: Path, sources: list[Path], progress: Path, reached: Callable[[str], bool],
                       timeout_s: float = 120) -> None:
    """Run `studio ingest` of `sources` into corpus k (domain) in a child process and SIGKILL it as soon as one of
    its progress lines satisfies `reached` (so the kill lands midway through a file, at a known point)."""
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "ingest", str(ws_path), *map(str, sources),
                             "--corpus", "k", "--role", "domain", "--json", "--progress-file", str(progress)],
                            cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        if progress.exists() and any(reached(line) for line in progress.read_text().splitlines()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the ingest finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
