"""The studio served while a writer holds the workspace: the read snapshot a writer publishes, the pages reading it,
and `studio demo` serving at once while its build runs as a background job (the tiny recipe
`tests/data/demo_tiny.toml`: three small corpora of the shared data, tokens and two dedup methods, ~15 s)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import metric_value, run_page, wait_for_app

from core.config import REPO_ROOT
from core.demo import demo_job, read_demo_stages
from core.jobs import Job, list_step_jobs, wait_step_job
from core.workspace import PUBLISH_ON_OPEN_ENV, Workspace, WorkspaceError, snapshot_info

TINY_RECIPE = REPO_ROOT / "tests" / "data" / "demo_tiny.toml"
HISTORY = "medicalgpt/corpus_en_general_book_beard_history.jsonl"  # 66 records
WIKIPEDIA = "llamafactory/corpus_en_wikipedia_paragraphs.jsonl"  # 1,631 records
TINY_DOCUMENTS = 66 + 1631 + 4896  # the tiny recipe's three corpora

# A writer process: ingests the history book, publishes, ingests Wikipedia (committed, not published), then holds
# the write lock until it is killed.
WRITER = """
import sys, time
from core.ingest import IngestConfig, ingest
from core.workspace import Workspace
ws = Workspace.open(sys.argv[1])
ingest(ws, IngestConfig(sources=[sys.argv[2]], corpus="history", role="general"))
ws.publish_snapshot("ingest history")
ingest(ws, IngestConfig(sources=[sys.argv[3]], corpus="wikipedia", role="general"))
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture(scope="module")
def held_workspace(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Path]:
    """A workspace whose write lock another process holds, with a snapshot published before its last ingest."""
    path = tmp_path_factory.mktemp("held") / "ws"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(data_dir / HISTORY),
                               str(data_dir / WIKIPEDIA)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "holding", "the writer did not get to hold the workspace"
        yield path
    finally:
        writer.kill()
        writer.wait(timeout=30)


def test_a_snapshot_is_read_while_a_writer_holds_the_lock_and_the_live_database_wins_after(
        held_workspace: Path) -> None:
    with pytest.raises(WorkspaceError, match="in use by"):
        Workspace.open(held_workspace, create=False, read_only=True)  # why there is a snapshot at all
    with Workspace.open_for_reading(held_workspace) as ws:
        assert ws.snapshot_of is not None and ws.snapshot_of["after"] == "ingest history"
        # the writer's committed data as of the publish: the later ingest is not in it
        assert ws.scalar("SELECT count(*) FROM documents") == 66
        assert ws.scalar("SELECT count(*) FROM current_documents") == 66  # views are copied too
        assert [c["name"] for c in ws.corpora()] == ["history"]
        assert ws.path == held_workspace.resolve()  # artifacts resolve in the workspace itself


def test_the_live_database_wins_whenever_it_can_be_opened(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    from core.ingest import IngestConfig, ingest

    path = tmp_path / "ws"
    with Workspace.open(path) as ws:
        ingest(ws, IngestConfig(sources=[str(data_dir / HISTORY)], corpus="history", role="general"))
        half_written = path / ".studio.snapshot.duckdb.99999.tmp"  # a publisher killed midway left it
        half_written.write_bytes(b"half a copy")
        assert ws.publish_snapshot("ingest history") is not None
        assert not half_written.exists()
        ingest(ws, IngestConfig(sources=[str(data_dir / WIKIPEDIA)], corpus="wikipedia", role="general"))
    with Workspace.open_for_reading(path) as ws:
        assert ws.snapshot_of is None and ws.scalar("SELECT count(*) FROM documents") == 66 + 1631
    # A job's writer publishes as it takes the lock, and copies nothing when nothing changed since.
    monkeypatch.setenv(PUBLISH_ON_OPEN_ENV, "1")
    Workspace.open(path).close()
    first = snapshot_info(path)
    assert first["after"].startswith("before ") and first["signature"]
    with Workspace.open(path) as ws:
        assert ws.publish_snapshot("again", only_if_changed=True) is None
    assert snapshot_info(path) == first
    monkeypatch.delenv(PUBLISH_ON_OPEN_ENV)
    with Workspace.open(path) as ws:  # a read snapshot of a read-only workspace cannot be published
        pass
    with Workspace.open(path, read_only=True) as ws, pytest.raises(WorkspaceError):
        ws.publish_snapshot("x")


def test_overview_reads_the_snapshot_with_a_banner_while_the_workspace_is_held(held_workspace: Path) -> None:
    at = run_page("home.py", held_workspace)
    assert not at.exception
    banners = [i.value for i in at.info if "being written by" in i.value]
    assert len(banners) == 1 and "after ingest history" in banners[0], [i.value for i in at.info]
    assert metric_value(at, "Documents") == "66"  # the snapshot's counts, not a busy panel
    assert metric_value(at, "Corpora") == "1"


def test_a_job_reports_each_new_step_at_once_and_prints_lines_to_its_log(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    from core.jobs import JOB_DIR_ENV
    from studio.cli import Reporter

    monkeypatch.setenv(JOB_DIR_ENV, str(tmp_path))
    reporter = Reporter(quiet=True, progress_file=None)  # a job runs with --json
    reporter(0.70, "ingest medquad: 4,896 records read")
    reporter(0.71, "tokens: starting")  # within the 0.5 s throttle, but a new step: the panel must show it
    assert json.loads((tmp_path / "progress.json").read_text())["message"] == "tokens: starting"
    reporter.close()
    err = capsys.readouterr().err  # stderr is the job's log: progress lines, though stdout is --json
    assert "ingest medquad: 4,896 records read" in err and "tokens: starting" in err


# --- `studio demo`: served at once, the build a background job ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_demo(workspace: Path, data_dir: Path, port: int, log: Path, *extra: str) -> subprocess.Popen:
    # its own session, so that a Ctrl-C is the SIGINT of its whole group, as a terminal sends it
    with open(log, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "studio.cli", "demo", str(workspace), "--data", str(data_dir), "--recipe",
             str(TINY_RECIPE), "--port", str(port), "--host", "127.0.0.1", *extra],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True)


def _wait_http(port: int, proc: subprocess.Popen, timeout_s: float = 90) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        assert proc.poll() is None, f"studio demo exited with {proc.returncode}"
        time.sleep(0.2)
    raise AssertionError(f"no HTTP 200 within {timeout_s:.0f} s")


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)


def _finish(job: Job, workspace: Path) -> Job:
    os.killpg(job.pid, signal.SIGCONT)
    return wait_step_job(workspace, job.job_id, timeout_s=300)


def test_studio_demo_serves_at_once_and_its_build_runs_on(tmp_path: Path, data_dir: Path) -> None:
    workspace = tmp_path / "ws"
    first_port, second_port = _free_port(), _free_port()
    started = time.monotonic()
    first = _start_demo(workspace, data_dir, first_port, tmp_path / "first.log")
    second = None
    try:
        _wait_for(lambda: demo_job(workspace) is not None, 60, "the demo job")
        job = demo_job(workspace)
        # The build is held still: the app must answer while it has not finished, whatever it does.
        os.killpg(job.pid, signal.SIGSTOP)
        _wait_http(first_port, first)
        served_after = time.monotonic() - started
        assert demo_job(workspace, active_only=True) is not None
        print(f"studio demo answered HTTP 200 {served_after:.1f} s after it started (build job still running)")
        # A second `studio demo` re-attaches to the running build instead of starting another.
        second = _start_demo(workspace, data_dir, second_port, tmp_path / "second.log", "--json")
        _wait_http(second_port, second)
        _stop(second)
        out = json.loads(second.stdout.read())
        assert out["job_id"] == job.job_id and out["reused_job"] is True
        assert "re-attached to the running build job" in (tmp_path / "second.log").read_text()
        assert [j.job_id for j in list_step_jobs(workspace) if j.kind == "demo"] == [job.job_id]
        # Ctrl-C stops the server; the build runs on.
        _stop(first)
        assert first.returncode == 0
        assert demo_job(workspace, active_only=True) is not None
        done = _finish(job, workspace)
    finally:
        for proc in (first, second):
            if proc is not None:
                _stop(proc)
        if (running := demo_job(workspace, active_only=True)) is not None:
            os.killpg(running.pid, signal.SIGKILL)
    assert done.status == "finished", done.log_tail()
    stages = read_demo_stages(done)
    assert [s.name for s in stages] == ["ingest history_book_en", "ingest wikipedia_en", "ingest medquad_nih",
                                        "tokens", "dedup"]
    assert all(s.state == "done" and s.seconds is not None for s in stages)
    log = Path(done.log_path).read_text()
    assert "tokens: starting" in log and "dedup: minhash" in log  # progress lines in the job's log
    with Workspace.open_for_reading(workspace) as ws:
        assert ws.snapshot_of is None
        assert ws.scalar("SELECT count(*) FROM documents") == TINY_DOCUMENTS
    assert snapshot_info(workspace)["after"] == "dedup"


def test_studio_app_serves_a_workspace_a_job_holds(held_workspace: Path, tmp_path: Path) -> None:
    port = _free_port()
    with open(tmp_path / "app.log", "w") as err:
        app = subprocess.Popen([sys.executable, "-m", "studio.cli", "app", str(held_workspace), "--port", str(port),
                                "--host", "127.0.0.1"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err,
                               start_new_session=True)
    try:
        _wait_http(port, app)
    finally:
        _stop(app)
    assert "serving it meanwhile" in (tmp_path / "app.log").read_text()


@pytest.mark.browser
def test_the_overview_fills_in_while_the_demo_builds(tmp_path: Path, data_dir: Path, browser_page) -> None:
    workspace, port = tmp_path / "ws", _free_port()
    demo = _start_demo(workspace, data_dir, port, tmp_path / "demo.log")
    try:
        _wait_http(port, demo)

        def on_steps() -> bool:  # every corpus ingested and published, a step running
            job = demo_job(workspace)
            return job is not None and any(s.kind == "step" and s.state == "running" for s in read_demo_stages(job))

        _wait_for(on_steps, 120, "the demo build's first step")
        job = demo_job(workspace)
        os.killpg(job.pid, signal.SIGSTOP)  # held in its step, the write lock taken
        page = browser_page(f"http://127.0.0.1:{port}")
        page.get_by_text("The demo build").first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        assert "being written by" in text and "demo build" in text
        assert f"{TINY_DOCUMENTS:,}" in text  # the snapshot's counts: every corpus is in
        assert "The flow" in text and "Runs" in text
        page.screenshot(path=str(tmp_path / "overview_while_building.png"), full_page=True)
        done = _finish(job, workspace)
        assert done.status == "finished", done.log_tail()
        with Workspace.open(workspace, read_only=True) as ws:
            current = ws.scalar("SELECT count(*) FROM current_documents")
        assert current < TINY_DOCUMENTS
        # the page follows without a reload: the build's end redraws it from the live workspace
        page.get_by_text(f"{current:,}").first.wait_for(timeout=30_000)
        wait_for_app(page)
        assert "being written by" not in page.inner_text("body")
    finally:
        _stop(demo)
        if (running := demo_job(workspace, active_only=True)) is not None:
            os.killpg(running.pid, signal.SIGCONT)
            os.killpg(running.pid, signal.SIGKILL)


@pytest.mark.parametrize("page", ["corpus.py", "dedup.py", "quality.py", "terms.py", "recall.py", "mix.py",
                                  "train.py", "evaluate.py", "report.py", "ingest.py"])
def test_every_page_reads_the_snapshot_while_the_workspace_is_held(held_workspace: Path, page: str) -> None:
    at = run_page(page, held_workspace)
    assert not at.exception, at.exception
    assert not [e.value for e in at.error if "in use by" in e.value]  # no busy stop
    assert sum("being written by" in i.value for i in at.info) == 1  # once, however many blocks read
