"""Stopping the demo's background build (`studio demo` runs it as a job): the job panel's Cancel and a plain SIGTERM
to the build's process (`kill PID`, `pkill -f`) each end it within seconds, as "stopped", with the interrupted
step's unfinished work rolled back; a new build then completes the workspace.

The build is caught inside semantic deduplication, embedding Wikipedia paragraphs with the plain torch path (the
slowest, whose calls into torch are the longest a signal has to wait for)."""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

import pytest

from core.demo import demo_job, read_demo_stages
from core.jobs import Job, cancel_step_job, get_step_job, registered_pids, wait_step_job
from core.workspace import Workspace
from studio.commands.app import start_demo_job

pytestmark = pytest.mark.slow  # embeds with the bundled MiniLM

RECIPE = """
[workspace]
tokenizer = "bundled:smollm2"

[[corpus]]
name = "history_book_en"
role = "general"
files = ["medicalgpt/corpus_en_general_book_beard_history.jsonl"]

[[corpus]]
name = "wikipedia_en"
role = "general"
files = ["llamafactory/corpus_en_wikipedia_paragraphs.jsonl"]

[[step]]
name = "dedup"
methods = ["exact", "semantic"]

[step.semantic]
corpora = ["wikipedia_en"]
"""
DOCUMENTS = 66 + 1631


def _start(workspace: Path, data_dir: Path, recipe: Path) -> Job:
    job, reused = start_demo_job(workspace, argparse.Namespace(data=data_dir, recipe=recipe, no_steps=False))
    assert not reused
    return job


@pytest.fixture
def recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STUDIO_EMBED_PATH", "torch-fp32")  # the demo job inherits it
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE, encoding="utf-8")
    return path


def _embedding(workspace: Path, job_id: str) -> bool:
    job = get_step_job(workspace, job_id)
    dedup = [s for s in read_demo_stages(job) if s.name == "dedup"]
    return bool(dedup) and dedup[0].state == "running" and "embedded" in str(job.progress().get("message", ""))


def _wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["cancel", "sigterm"])
def test_the_demo_build_stops_promptly_and_a_new_build_completes(how: str, tmp_path: Path, data_dir: Path,
                                                                   recipe: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = tmp_path / "ws"
    job = _start(workspace, data_dir, recipe)
    try:
        _wait_until(lambda: _embedding(workspace, job.job_id), 240, "semantic dedup embedding")
        asked = time.monotonic()
        if how == "cancel":
            cancel_step_job(workspace, job.job_id)
        else:  # what `kill PID` on the build's Python process does, without the job's stop request
            pids = registered_pids(get_step_job(workspace, job.job_id))
            assert pids
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
        ended = wait_step_job(workspace, job.job_id, timeout_s=60)
        took = time.monotonic() - asked
    finally:
        if (running := demo_job(workspace, active_only=True)) is not None:
            os.killpg(running.pid, signal.SIGKILL)
    print(f"{how}: the demo build ended {took:.1f} s after the request, status {ended.status}")
    assert ended.status == "stopped", (ended.error, ended.exit_code)
    assert took < 30
    assert "rolled back" in ended.log_tail()
    stages = {s.name: s.state for s in read_demo_stages(ended)}
    assert stages["ingest wikipedia_en"] == "done" and stages["dedup"] != "done"
    with Workspace.open(workspace, read_only=True) as ws:
        assert ws.scalar("SELECT count(*) FROM documents") == DOCUMENTS
        # the interrupted dedup left no decisions: nothing is dropped yet
        assert ws.scalar("SELECT count(*) FROM current_documents") == DOCUMENTS
        assert ws.scalar("SELECT count(*) FROM runs WHERE status = 'running'") == 0
    if how == "cancel":  # once is enough: a new build re-uses what was ingested and completes
        monkeypatch.delenv("STUDIO_EMBED_PATH")  # the machine's own (faster) path this time
        again = _start(workspace, data_dir, recipe)
        done = wait_step_job(workspace, again.job_id, timeout_s=600)
        assert done.status == "finished", done.log_tail()
        with Workspace.open(workspace, read_only=True) as ws:
            assert ws.scalar("SELECT count(*) FROM documents") == DOCUMENTS
            assert ws.scalar("SELECT count(*) FROM runs WHERE step = 'dedup_semantic' AND status = 'ok'") == 1
