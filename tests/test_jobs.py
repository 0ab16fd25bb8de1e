"""The job runner (core/jobs.py) with small real commands: finish, crash, SIGKILL, stop then resume, several jobs at
once, and the CLI's `jobs`, `stop` and `resume`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from core.jobs import (
    Job,
    JobError,
    get_job,
    kill_job,
    launch_job,
    list_jobs,
    resume_job,
    sleep_until,
    stop_job,
    wait_job,
)
from core.workspace import Workspace
from studio.cli import main as cli_main

# A job that counts to N, one step every `delay` seconds, writing progress; SIGTERM makes it save where it is and
# end as `stopped`; with STUDIO_JOB_RESUME=1 it continues from the saved count.
COUNTER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from core.jobs import register_process, stop_requested, write_progress, write_result
    job = Path(os.environ["STUDIO_JOB_DIR"])
    n, delay = int(sys.argv[1]), float(sys.argv[2])
    register_process(job)
    wanted = []
    signal.signal(signal.SIGTERM, lambda *a: wanted.append(1))
    state = job / "count.txt"
    count = int(state.read_text()) if os.environ.get("STUDIO_JOB_RESUME") == "1" and state.exists() else 0
    print("counting from", count, flush=True)
    while count < n:
        count += 1
        state.write_text(str(count))
        write_progress(job, count / n, f"count {count} of {n}")
        if wanted or stop_requested(job):
            write_result(job, "stopped", count=count)
            sys.exit(0)
        time.sleep(delay)
    write_result(job, "finished", count=count)
""")


@pytest.fixture
def ws_path(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    Workspace.open(path).close()
    return path


@pytest.fixture
def counter(tmp_path: Path) -> Path:
    script = tmp_path / "counter.py"
    script.write_text(COUNTER)
    return script


def test_a_job_runs_to_its_end_and_is_recorded(ws_path: Path, counter: Path) -> None:
    job = launch_job(ws_path, "count", "n = 3\n", [sys.executable, str(counter), "3", "0.01"], label="count to 3")
    assert job.status == "running" and job.pid
    assert Path(job.output_dir) == ws_path / "artifacts" / "jobs" / job.job_id
    assert (Path(job.output_dir) / "config.toml").read_text() == "n = 3\n"
    done = wait_job(ws_path, job.job_id, poll_s=0.1, timeout_s=60)
    assert done.status == "finished" and done.exit_code == 0 and done.error is None
    assert done.result()["count"] == 3 and done.progress()["fraction"] == 1.0
    assert "counting from 0" in done.log_tail()
    with Workspace.open(ws_path, read_only=True) as ws:
        row = ws.query("SELECT step, status, counts FROM runs WHERE run_id = ?", [job.job_id])
    assert row[0][0] == "count" and row[0][1] == "ok" and json.loads(row[0][2])["job_status"] == "finished"
    with pytest.raises(JobError, match="finished"):
        resume_job(ws_path, job.job_id)
    with pytest.raises(JobError, match="not running"):
        stop_job(ws_path, job.job_id)
    with pytest.raises(JobError, match="no job"):
        get_job(ws_path, "nope")


def test_a_sigkilled_job_is_reported_failed_with_its_log_tail(ws_path: Path, counter: Path) -> None:
    job = launch_job(ws_path, "count", "", [sys.executable, str(counter), "1000", "0.05"])
    assert sleep_until(lambda: "counting from" in get_job(ws_path, job.job_id).log_tail(), 60)
    os.killpg(job.pid, signal.SIGKILL)  # the whole group, shell included: no exit code, no result
    assert sleep_until(lambda: get_job(ws_path, job.job_id).status != "running", 30)
    failed = get_job(ws_path, job.job_id)
    assert failed.status == "failed" and failed.ended_at is not None
    assert "vanished" in failed.error and "counting from 0" in failed.error
    # The row itself was updated (a second look, or another process, reads the same).
    with Workspace.open(ws_path, read_only=True) as ws:
        assert ws.scalar("SELECT status FROM jobs WHERE job_id = ?", [job.job_id]) == "failed"
        assert ws.scalar("SELECT status FROM runs WHERE run_id = ?", [job.job_id]) == "failed"


def test_a_crash_shows_its_error(ws_path: Path) -> None:
    job = launch_job(ws_path, "crash", "", [sys.executable, "-c", "print('about to fail'); raise SystemExit(3)"])
    done = wait_job(ws_path, job.job_id, poll_s=0.1, timeout_s=60)
    assert done.status == "failed" and done.exit_code == 3
    assert "exited with code 3" in done.error and "about to fail" in done.error


def test_stop_then_resume_continues_and_several_jobs_run_at_once(ws_path: Path, counter: Path) -> None:
    slow = launch_job(ws_path, "count", "", [sys.executable, str(counter), "40", "0.1"])
    other = launch_job(ws_path, "count", "", [sys.executable, str(counter), "2", "0.01"])  # not blocked by `slow`
    assert wait_job(ws_path, other.job_id, poll_s=0.1, timeout_s=60).status == "finished"
    folder = Path(slow.output_dir)
    def counted() -> int:  # the counter rewrites its file: a read can catch it empty
        with contextlib.suppress(FileNotFoundError):
            text = (folder / "count.txt").read_text().strip()
            return int(text) if text.isdigit() else 0
        return 0

    assert sleep_until(lambda: counted() >= 2, 60)
    assert stop_job(ws_path, slow.job_id).status in ("stopping", "stopped")
    stopped = wait_job(ws_path, slow.job_id, poll_s=0.1, timeout_s=60)
    assert stopped.status == "stopped" and stopped.error is None
    reached = stopped.result()["count"]
    assert 2 <= reached < 40
    resumed = resume_job(ws_path, slow.job_id)
    assert resumed.status == "running" and resumed.attempts == 2
    done = wait_job(ws_path, slow.job_id, poll_s=0.2, timeout_s=90)
    assert done.status == "finished" and done.result()["count"] == 40
    assert f"counting from {reached}" in done.log_tail(100)  # same log, appended
    assert [j.job_id for j in list_jobs(ws_path)][:2] == [other.job_id, slow.job_id]


def test_a_stop_signal_met_during_exit_keeps_the_jobs_own_last_word(ws_path: Path) -> None:
    # The race CI met: the job sees `stop_requested`, writes its result and exits; Python's shutdown restores the
    # default SIGTERM action and the stop signal, sent just after the file, kills it (exit 143, "Terminated").
    script = ("import os, signal, sys; from pathlib import Path; from core.jobs import register_process, write_result;"
              "job = Path(os.environ['STUDIO_JOB_DIR']); register_process(job); print('working', flush=True);"
              "import time; [time.sleep(0.05) for _ in range(400) if not (job / 'stop_requested').exists()];"
              "write_result(job, 'stopped', count=1); signal.signal(signal.SIGTERM, signal.SIG_DFL);"
              "os.kill(os.getpid(), signal.SIGTERM)")
    job = launch_job(ws_path, "race", "", [sys.executable, "-c", script])
    assert sleep_until(lambda: "working" in get_job(ws_path, job.job_id).log_tail(), 60)
    (Path(job.output_dir) / "stop_requested").write_text("now")  # what stop_job writes before its signal
    done = wait_job(ws_path, job.job_id, poll_s=0.1, timeout_s=60)
    assert done.exit_code == 143 and done.status == "stopped" and done.error is None, done
    # Without a stop request, a job killed by SIGTERM after its result is still a failure.
    crash = launch_job(ws_path, "race", "", [sys.executable, "-c", script.replace(
        "[time.sleep(0.05) for _ in range(400) if not (job / 'stop_requested').exists()];", "")])
    assert wait_job(ws_path, crash.job_id, poll_s=0.1, timeout_s=60).status == "failed"


def test_cli_jobs_stop_resume(ws_path: Path, counter: Path, capsys: pytest.CaptureFixture) -> None:
    job = launch_job(ws_path, "count", "", [sys.executable, str(counter), "400", "0.05"])
    assert sleep_until(lambda: "counting from" in get_job(ws_path, job.job_id).log_tail(), 60)
    assert cli_main(["jobs", str(ws_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["jobs"]
    assert listed[0]["job_id"] == job.job_id and listed[0]["status"] == "running"
    assert {"job_id", "kind", "status", "output_dir"} <= set(listed[0])
    assert cli_main(["stop", str(ws_path), job.job_id, "--json"]) == 0
    stopped_out = json.loads(capsys.readouterr().out)
    assert stopped_out["status"] in ("stopping", "stopped"), stopped_out
    assert wait_job(ws_path, job.job_id, poll_s=0.1, timeout_s=60).status == "stopped"
    assert cli_main(["resume", str(ws_path), job.job_id, "--detach", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "running" and out["output_dir"] == job.output_dir
    assert kill_job(ws_path, job.job_id).status == "failed"
    assert cli_main(["stop", str(ws_path), job.job_id]) == 2
    assert "not running" in capsys.readouterr().err


# --- step jobs: `studio <command>` as a core job ------------------------------------------------------------------
MEDQUAD = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"


def test_step_jobs_queue_behind_a_writer_and_a_queued_one_can_be_cancelled(tmp_path: Path, data_dir: Path) -> None:
    from core.jobs import cancel_step_job, launch_step_job, list_step_jobs, queued_message, wait_step_job

    ws_path = tmp_path / "ws"
    Workspace.open(ws_path).close()
    ingest_argv = ["ingest", str(data_dir / MEDQUAD), "--corpus", "medquad", "--role", "domain"]
    first = launch_step_job(ws_path, ingest_argv, "Ingest MedQuAD")
    second = launch_step_job(ws_path, ["status"], "Status")  # as a writer would
    third = launch_step_job(ws_path, ["status"], "Status again")
    reader = launch_step_job(ws_path, ["status"], "Look", writes=False)
    assert first.status == "running" and second.status == "queued" and third.status == "queued"
    assert reader.status == "running"  # a job that does not write never waits
    assert second.progress()["message"] == queued_message("Ingest MedQuAD")
    assert [j.job_id for j in list_step_jobs(ws_path)][:3] == [reader.job_id, third.job_id, second.job_id]
    assert cancel_step_job(ws_path, third.job_id).status == "stopping"
    second = wait_step_job(ws_path, second.job_id, timeout_s=180)
    first, third = (wait_step_job(ws_path, j.job_id, timeout_s=60) for j in (first, third))
    assert first.status == "finished" and second.status == "finished", (first.error, second.error)
    assert third.status == "stopped" and not (third.folder / "started").exists()  # never ran
    # it ran after the first ended, and saw its documents
    assert second.started_at >= first.ended_at - timedelta(seconds=1)
    assert second.result()["documents"] == 4896


def test_two_writers_launched_at_the_same_instant_run_one_after_the_other(tmp_path: Path) -> None:
    """Two sessions press their buttons together: one job runs, the other is queued behind it (both looking for a
    writer ahead before either had recorded its job started both at once)."""
    import threading

    from core.jobs import get_step_job, launch_step_job, queued_message, wait_step_job

    ws_path = tmp_path / "ws"
    Workspace.open(ws_path).close()
    for attempt in range(2):  # without the lock, the first try already started both at once
        barrier = threading.Barrier(2)
        launched: dict[str, Job] = {}

        def press(label: str, barrier: threading.Barrier = barrier, launched: dict[str, Job] = launched) -> None:
            barrier.wait()
            launched[label] = launch_step_job(ws_path, ["status"], label)  # as a writer would

        threads = [threading.Thread(target=press, args=(f"{who} {attempt}",)) for who in ("A", "B")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        jobs = sorted(launched.values(), key=lambda j: j.status != "running")
        assert [j.status for j in jobs] == ["running", "queued"], [(j.label, j.status) for j in jobs]
        first, second = jobs
        assert second.progress()["message"] == queued_message(first.label)
        first, second = (wait_step_job(ws_path, j.job_id, timeout_s=120) for j in (first, second))
        assert first.status == second.status == "finished", (first.error, second.error)
        started = (second.folder / "started").stat().st_mtime
        assert started >= (first.folder / "exit_code").stat().st_mtime - 0.01  # it waited for the first
        assert get_step_job(ws_path, second.job_id).started_at is not None


def test_a_running_step_job_is_listed_and_cancelled_from_the_command_line(
        tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from core.ingest import IngestConfig, ingest
    from core.jobs import get_step_job, launch_step_job, wait_step_job

    ws_path = tmp_path / "ws"
    with Workspace.open(ws_path) as ws:
        ingest(ws, IngestConfig(sources=[str(data_dir / MEDQUAD)], corpus="medquad", role="domain"))
    # one document a batch: long enough to be caught running
    job = launch_step_job(ws_path, ["tokens", "--batch-size", "1"], "Count tokens")
    assert sleep_until(lambda: get_step_job(ws_path, job.job_id).progress()["fraction"] > 0, 60, 0.05)
    assert cli_main(["jobs", str(ws_path), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["jobs"]
    assert [(j["job_id"], j["kind"], j["status"]) for j in listed] == [(job.job_id, "tokens", "running")]
    assert cli_main(["stop", str(ws_path), job.job_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "stopping"
    job = wait_step_job(ws_path, job.job_id, timeout_s=60)
    assert job.status == "stopped", job.error
    assert job.result()["status"] == "stopped" and "rolled back" in job.result()["error"]
    assert "interrupted" in Path(job.log_path).read_text()
