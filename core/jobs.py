"""Jobs: any long step (training, evaluation, a curation step) run as a process of its own, watched through files.

A job is a command line, a config (TOML text, kept in the `jobs` table and as `config.toml` in its folder) and an
output folder `artifacts/jobs/<job_id>/`. The launcher starts the command in its own process group
(`start_new_session`) with stdout and stderr appended to `job.log` in that folder, never to a pipe somebody must
drain, so the job outlives the browser tab, the app and the command line that started it. A small shell wrapper
writes the command's exit code to `exit_code` when it ends.

DuckDB lets one process write the workspace at a time, so the job's own process writes only files:
`progress.json` (fraction, message, ETA), `result.json` (its final status, `finished` or `stopped`, or its
error), `pids/<pid>` (the processes that handle a stop) and whatever it produces. The `jobs` table is written by
the launcher and reconciled with those files on every look (`get_job`, `list_jobs`), over short connections: a
job whose process group is gone without a result is marked failed, with the tail of its log, never left running.

Stop writes `stop_requested` and sends SIGTERM to the registered processes, which checkpoint and exit cleanly;
resume runs the same command again with `STUDIO_JOB_RESUME=1` in the environment, appending to the same log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core.config import REPO_ROOT, read_json, write_json_atomic
from core.workspace import PUBLISH_ON_OPEN_ENV, Workspace, WorkspaceError

STATUSES = ("queued", "running", "stopping", "stopped", "finished", "failed")
ACTIVE_STATUSES = ("queued", "running", "stopping")
LOG_NAME = "job.log"
EXIT_NAME = "exit_code"
RESULT_NAME = "result.json"
PROGRESS_NAME = "progress.json"
CONFIG_NAME = "config.toml"
STOP_NAME = "stop_requested"
STARTED_NAME = "started"  # written when a queued job's command starts
JOB_FILE = "job.json"  # a step job's record (the workspace it writes is locked while it runs)
LAUNCH_LOCK_NAME = ".launch.lock"  # held while a step job is launched: who runs first and who queues is decided once
WRITES_NAME = "writes_workspace"  # present when the job writes the workspace: such jobs run one at a time
PIDS_DIR = "pids"
# What the job's process finds in its environment.
JOB_DIR_ENV = "STUDIO_JOB_DIR"
JOB_ID_ENV = "STUDIO_JOB_ID"
RESUME_ENV = "STUDIO_JOB_RESUME"
LOG_TAIL_LINES = 25

# Launchers started by this process, so their exit can be reaped (a zombie child still answers kill(pid, 0)).
_children: dict[int, subprocess.Popen] = {}


class JobError(WorkspaceError):
    """A job request the user can fix: an unknown job, stopping a finished one, resuming a running one."""


@dataclass
class Job:
    job_id: str
    kind: str
    status: str
    output_dir: str
    config: str = ""
    argv: list[str] = field(default_factory=list)
    label: str = ""
    pid: int | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    exit_code: int | None = None
    log_path: str = ""
    error: str | None = None
    attempts: int = 1

    @property
    def folder(self) -> Path:
        return Path(self.output_dir)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def progress(self) -> dict[str, Any]:
        """The job's last progress report: at least `fraction` (negative when unknown) and `message`."""
        return read_json(self.folder / PROGRESS_NAME) or {"fraction": -1.0, "message": "starting"}

    def result(self) -> dict[str, Any] | None:
        return read_json(self.folder / RESULT_NAME)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(Path(self.log_path), lines) if self.log_path else ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("created_at", "started_at", "ended_at"):
            if out[key] is not None:
                out[key] = out[key].isoformat(timespec="seconds")
        return out


# --- files written by the job's own process ---------------------------------------------------------------------
def write_progress(job_dir: Path, fraction: float, message: str, **extra: Any) -> None:
    write_json_atomic(Path(job_dir) / PROGRESS_NAME, {"t": time.time(), "fraction": fraction, "message": message,
                                                      **extra})


def write_result(job_dir: Path, status: str, **extra: Any) -> None:
    """The job's last word: `finished`, `stopped` (by request, resumable) or `failed` with an `error`."""
    if status not in ("finished", "stopped", "failed"):
        raise ValueError(f"a job ends finished, stopped or failed, not {status!r}")
    write_json_atomic(Path(job_dir) / RESULT_NAME, {"t": time.time(), "status": status, **extra})


def register_process(job_dir: Path) -> None:
    """Name this process as one that handles the stop signal (each rank of a distributed job calls it)."""
    folder = Path(job_dir) / PIDS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    (folder / str(os.getpid())).write_text(str(time.time()))


def stop_requested(job_dir: Path) -> bool:
    return (Path(job_dir) / STOP_NAME).exists()


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 16_384))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    # Progress bars redraw with carriage returns; keep what the last redraw showed.
    kept = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join([line for line in kept if line.strip()][-lines:])


# --- the launcher side ----------------------------------------------------------------------------------------
def jobs_root(ws: Workspace) -> Path:
    return ws.artifacts / "jobs"


def new_job_id(kind: str) -> str:
    return f"{kind}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:4]}"


def job_environment(job: Job, extra: dict[str, str] | None = None, resume: bool = False) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", JOB_DIR_ENV: job.output_dir, JOB_ID_ENV: job.job_id}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.pop(RESUME_ENV, None)
    env.pop(PUBLISH_ON_OPEN_ENV, None)  # only a job that writes the workspace publishes (launch_step_job says so)
    if resume:
        env[RESUME_ENV] = "1"
    env.update(extra or {})
    return env


def _spawn(job: Job, env: dict[str, str], after: Sequence[Job] = ()) -> int:
    """Start the job's command; with `after`, its shell first waits for those jobs to end (or for a stop)."""
    folder = job.folder
    for name in (EXIT_NAME, RESULT_NAME, STOP_NAME, STARTED_NAME):
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        for pid_file in (folder / PIDS_DIR).iterdir():
            pid_file.unlink()
    exit_file, started, stop = (shlex.quote(str(folder / n)) for n in (EXIT_NAME, STARTED_NAME, STOP_NAME))
    # The shell outlives the command to record its exit code, even when nobody waits for it; a trapped TERM lets
    # it do so after a group-wide stop (traps with a command are reset in the child, so the command still sees it).
    run = f"touch {started}; {shlex.join(job.argv)}; echo $? > {exit_file}"
    if after:
        ahead = " && ".join(f"{{ [ ! -e {shlex.quote(str(j.folder / EXIT_NAME))} ] && kill -0 {j.pid} 2>/dev/null; }}"
                            for j in after if j.pid)
        run = (f"while [ ! -e {stop} ] && {{ {ahead or 'false'}; }}; do sleep 0.5; done; "
               f"if [ -e {stop} ]; then echo {128 + signal.SIGTERM} > {exit_file}; else {run}; fi")
    script = f"trap ':' TERM INT; {run}"
    with open(job.log_path, "ab") as log:
        log.write(f"\n=== {datetime.now():%Y-%m-%d %H:%M:%S} start (attempt {job.attempts}): "
                  f"{shlex.join(job.argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(["/bin/sh", "-c", script], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _children[proc.pid] = proc
    return proc.pid


@contextlib.contextmanager
def _workspace(ws: Workspace | str | Path, write: bool) -> Iterator[Workspace]:
    """The caller's open workspace, or a short connection of our own (read-only when another process writes)."""
    if isinstance(ws, Workspace):
        yield ws
        return
    # Another process (the app's page, a CLI look) may hold the file for a moment: wait a little, as writers do.
    opened = Workspace.open(ws, create=False, read_only=not write, wait_s=5.0)
    with opened:
        yield opened


def launch_job(ws: Workspace | str | Path, kind: str, config_text: str, argv: Sequence[str], *, label: str = "",
               job_id: str | None = None, output_dir: str | Path | None = None,
               env: dict[str, str] | None = None, prepare: Callable[[Path], None] | None = None) -> Job:
    """Start `argv` as job `kind`. `{job_dir}` in argv becomes the job's output folder; `prepare(folder)` runs
    before the process starts (to write inputs there)."""
    with _workspace(ws, write=True) as w:
        job_id = job_id or new_job_id(kind)
        folder = Path(output_dir) if output_dir else jobs_root(w) / job_id
        folder = folder.expanduser().resolve()
        if folder.exists() and any(folder.iterdir()):
            raise JobError(f"output folder {folder} is not empty")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            (folder / CONFIG_NAME).write_text(config_text, encoding="utf-8")
            if prepare is not None:
                prepare(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)  # nothing half-prepared is left behind
            raise
        job = Job(job_id=job_id, kind=kind, status="queued", output_dir=str(folder), config=config_text,
                  argv=[a.replace("{job_dir}", str(folder)) for a in argv], label=label or kind,
                  log_path=str(folder / LOG_NAME))
        w.con.execute(
            "INSERT INTO jobs (job_id, kind, label, config, argv, status, output_dir, log_path, created_at) "
            "VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, current_timestamp)",
            [job.job_id, kind, job.label, config_text, json.dumps(job.argv), job.output_dir, job.log_path])
        try:
            job.pid = _spawn(job, job_environment(job, env))
        except OSError as exc:
            w.con.execute("UPDATE jobs SET status = 'failed', error = ?, ended_at = current_timestamp "
                          "WHERE job_id = ?", [f"could not start: {exc}", job.job_id])
            raise JobError(f"could not start job {job.job_id}: {exc}") from exc
        w.con.execute("UPDATE jobs SET status = 'running', pid = ?, started_at = current_timestamp WHERE job_id = ?",
                      [job.pid, job.job_id])
    return _load(ws if isinstance(ws, Workspace) else ws, job.job_id)


_COLUMNS = ("job_id", "kind", "status", "output_dir", "config", "argv", "label", "pid", "created_at", "started_at",
            "ended_at", "exit_code", "log_path", "error", "attempts")


def _row_to_job(row: tuple) -> Job:
    data = dict(zip(_COLUMNS, row, strict=True))
    data["argv"] = json.loads(data["argv"]) if data["argv"] else []
    data["config"] = data["config"] or ""
    data["label"] = data["label"] or ""
    data["log_path"] = data["log_path"] or ""
    return Job(**data)


def _select(w: Workspace, where: str = "", params: list[Any] | None = None, limit: int | None = None) -> list[Job]:
    sql = f"SELECT {', '.join(_COLUMNS)} FROM jobs {where} ORDER BY created_at DESC, job_id DESC"
    if limit:
        sql += f" LIMIT {int(limit)}"
    return [_row_to_job(r) for r in w.con.execute(sql, params or []).fetchall()]


def _load(ws: Workspace | str | Path, job_id: str) -> Job:
    with _workspace(ws, write=False) as w:
        found = _select(w, "WHERE job_id = ?", [job_id])
    if not found:
        raise JobError(f"no job {job_id!r} in this workspace")
    return found[0]


def process_alive(job: Job) -> bool:
    """Whether any process of the job's group is still running."""
    if job.pid is None:
        return False
    proc = _children.get(job.pid)
    if proc is not None and proc.poll() is not None:
        _children.pop(job.pid, None)
    try:
        os.killpg(job.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process group of another user: the pid was reused
        return False
    # A launcher of this process is surely ours; otherwise make sure the pid was not reused.
    return proc is not None or _group_is_job(job)


def _group_is_job(job: Job) -> bool:
    """Guard against a reused pid: some member of the group must carry this job's folder in its environment or
    command line (Linux /proc; elsewhere the group's existence is taken as enough)."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return True
    needle = job.output_dir.encode()
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != job.pid:
                continue
            if needle in (entry / "cmdline").read_bytes() or needle in (entry / "environ").read_bytes():
                return True
        except (OSError, ProcessLookupError):
            continue
    return False


def _exit_code(job: Job) -> int | None:
    try:
        return int((job.folder / EXIT_NAME).read_text().strip())
    except (OSError, ValueError):
        return None


def _ended_state(job: Job) -> dict[str, Any]:
    """What a job whose processes are gone ended as, from its files."""
    result = job.result() or {}
    code = _exit_code(job)
    status = result.get("status")
    tail = job.log_tail()
    # A stop request races a job that is already on its way out: Python restores the default SIGTERM action while
    # it shuts down, so a job that wrote its last word and then met the stop signal still ended as it said.
    stop_met_exit = code in (128 + signal.SIGTERM, 130) and (job.folder / STOP_NAME).exists()
    # A SIGTERM the command handled (`kill PID` without the job panel) ends it as Ctrl-C does: exit 130, "stopped".
    handled_stop = status == "stopped" and code == 130
    if status in ("finished", "stopped") and (code in (0, None) or stop_met_exit or handled_stop):
        return {"status": status, "exit_code": code, "error": None}
    if status is None and job.status == "stopping" and not (job.folder / PIDS_DIR).exists():
        return {"status": "stopped", "exit_code": code,
                "error": "stopped before the job had started its work: nothing to resume from"}
    if result.get("error"):
        reason = str(result["error"])
    elif code is None:
        reason = "the job's process vanished without a result (killed, or the machine restarted)"
    else:
        reason = f"the job exited with code {code} without a result"
    return {"status": "failed", "exit_code": code, "error": f"{reason}\n--- log tail ---\n{tail}" if tail else reason}


def reconcile(job: Job) -> dict[str, Any] | None:
    """The changes a look at the job's processes and files implies for its row, or None."""
    if not job.active or process_alive(job):
        return None
    state = _ended_state(job)
    ended = (job.folder / EXIT_NAME).stat().st_mtime if (job.folder / EXIT_NAME).exists() else time.time()
    state["ended_at"] = datetime.fromtimestamp(ended)
    return state


def _persist(w: Workspace, job: Job, changes: dict[str, Any]) -> None:
    w.con.execute("UPDATE jobs SET status = ?, exit_code = ?, error = ?, ended_at = ? WHERE job_id = ?",
                  [changes["status"], changes["exit_code"], changes["error"], changes["ended_at"], job.job_id])
    # Every step appears in `runs`, so lineage is one query; a job's run is recorded once it has ended.
    params = {"job_id": job.job_id, "kind": job.kind, "config": job.config, "output_dir": job.output_dir}
    w.con.execute("DELETE FROM runs WHERE run_id = ?", [job.job_id])
    w.con.execute(
        "INSERT INTO runs (run_id, step, params, versions, started_at, ended_at, status, counts, error, active, pid) "
        "VALUES (?, ?, ?, '{}', ?, ?, ?, ?, ?, TRUE, ?)",
        [job.job_id, job.kind, json.dumps(params), job.started_at or job.created_at, changes["ended_at"],
         "failed" if changes["status"] == "failed" else "ok",
         json.dumps({"job_status": changes["status"], **(job.result() or {})}, default=str),
         changes["error"], job.pid])


def _refresh(ws: Workspace | str | Path, jobs: list[Job]) -> list[Job]:
    """Apply reconciliation to `jobs`; persisted when a writable connection can be had, else only in memory."""
    pending = [(job, changes) for job in jobs if (changes := reconcile(job)) is not None]
    if not pending:
        return jobs
    for job, changes in pending:
        job.status, job.exit_code, job.error, job.ended_at = (changes["status"], changes["exit_code"],
                                                             changes["error"], changes["ended_at"])
    # A read-only connection of this process cannot coexist with a writer of its own: then only in memory.
    writable: Workspace | None = ws if isinstance(ws, Workspace) and not ws.read_only else None
    opened = None
    if not isinstance(ws, Workspace):
        with contextlib.suppress(WorkspaceError):
            opened = writable = Workspace.open(ws, create=False, wait_s=1.0)
    try:
        if writable is not None:
            for job, changes in pending:
                # Only a row still marked active is changed: another look may have recorded the end already.
                still = writable.scalar("SELECT status FROM jobs WHERE job_id = ?", [job.job_id])
                if still in ACTIVE_STATUSES:
                    _persist(writable, job, changes)
    finally:
        if opened is not None:
            opened.close()
    return jobs


def get_job(ws: Workspace | str | Path, job_id: str) -> Job:
    """The job, reconciled with its processes and files."""
    return _refresh(ws, [_load(ws, job_id)])[0]


def list_jobs(ws: Workspace | str | Path, kind: str | None = None, limit: int | None = 200) -> list[Job]:
    """Every job of the workspace (of `kind`), newest first, reconciled."""
    with _workspace(ws, write=False) as w:
        jobs = _select(w, "WHERE kind = ?" if kind else "", [kind] if kind else [], limit)
    return _refresh(ws, jobs)


def registered_pids(job: Job) -> list[int]:
    folder = job.folder / PIDS_DIR
    pids = []
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            with contextlib.suppress(ValueError):
                pids.append(int(entry.name))
    return sorted(pids)


def stop_job(ws: Workspace | str | Path, job_id: str, sig: int = signal.SIGTERM) -> Job:
    """Ask the job to checkpoint and exit: `stop_requested` is written and SIGTERM sent to its registered
    processes (to the whole group when none registered yet, i.e. before the job started its work)."""
    job = get_job(ws, job_id)
    if not job.active:
        raise JobError(f"job {job_id} is {job.status}, not running")
    (job.folder / STOP_NAME).write_text(str(time.time()))
    signalled = 0
    for pid in registered_pids(job):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == job.pid:
                os.kill(pid, sig)
                signalled += 1
    if not signalled and job.pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, sig)
    with _workspace(ws, write=True) as w:
        w.con.execute("UPDATE jobs SET status = 'stopping' WHERE job_id = ? AND status IN ('queued', 'running')",
                      [job_id])
    return get_job(ws, job_id)


def kill_job(ws: Workspace | str | Path, job_id: str) -> Job:
    """End the job's whole process group at once (SIGKILL), without a checkpoint: the last resort."""
    job = get_job(ws, job_id)
    if job.active and job.pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(job.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while process_alive(job) and time.time() < deadline:
            time.sleep(0.1)
    return get_job(ws, job_id)


def resume_job(ws: Workspace | str | Path, job_id: str, env: dict[str, str] | None = None) -> Job:
    """Run a stopped or failed job's command again with `STUDIO_JOB_RESUME=1`; it continues from its last
    checkpoint. Its log is appended to."""
    job = get_job(ws, job_id)
    if job.active:
        raise JobError(f"job {job_id} is still {job.status}")
    if job.status == "finished":
        raise JobError(f"job {job_id} has finished: there is nothing to resume")
    with _workspace(ws, write=True) as w:
        job.attempts += 1
        pid = _spawn(job, job_environment(job, env, resume=True))
        w.con.execute("UPDATE jobs SET status = 'running', pid = ?, started_at = current_timestamp, ended_at = NULL, "
                      "exit_code = NULL, error = NULL, attempts = ? WHERE job_id = ?", [pid, job.attempts, job_id])
    return get_job(ws, job_id)


def wait_job(ws: Workspace | str | Path, job_id: str, *, poll_s: float = 1.0, timeout_s: float | None = None,
             on_progress: Callable[[Job], None] | None = None) -> Job:
    """Wait for a job to end. Given a path, it holds no workspace connection while the job runs (the app and other
    jobs may write meanwhile); given an open workspace, it uses that one."""
    job = _load(ws, job_id)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while job.active and process_alive(job):
        if on_progress is not None:
            on_progress(job)
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still running after {timeout_s:g} s")
        time.sleep(poll_s)
    return get_job(ws, job_id)


def active_jobs(ws: Workspace | str | Path, kind: str | None = None) -> list[Job]:
    return [j for j in list_jobs(ws, kind) if j.active]


def sleep_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.2) -> bool:
    """Poll `predicate` until it holds or `timeout_s` passes (for callers watching a job's files)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


# --- step jobs: `studio <command>` on a workspace -----------------------------------------------------------------
# A curation step holds the workspace's DuckDB file (one writer process) for as long as it runs, so nothing else
# can read the `jobs` table meanwhile: a step job's record is `job.json` in its folder, reconciled with its files
# on every look, like a row. The rule for running together: jobs that write the workspace run one at a time, a
# later one queued (status `queued`) until those before it end; a job that does not write (training writes only
# its folder while it runs) never waits and never makes one wait.
def step_jobs_root(ws_path: str | Path) -> Path:
    return Path(ws_path).expanduser().resolve() / "artifacts" / "jobs"


def studio_argv(ws_path: str | Path, argv: Sequence[str]) -> list[str]:
    """The process a step job runs: `studio ARGV[0] WORKSPACE ARGV[1:] --json`."""
    return [sys.executable, "-m", "studio.cli", argv[0], str(Path(ws_path).expanduser().resolve()), *argv[1:],
            "--json"]


def writes_workspace(job: Job) -> bool:
    return (job.folder / WRITES_NAME).exists()


def _save_step_job(job: Job) -> None:
    data = asdict(job)  # times to the microsecond: two jobs launched within a second keep their order
    for key in ("created_at", "started_at", "ended_at"):
        data[key] = data[key].isoformat() if data[key] is not None else None
    write_json_atomic(job.folder / JOB_FILE, data)


def _read_step_job(folder: Path) -> Job | None:
    data = read_json(folder / JOB_FILE)
    if not data:
        return None
    for key in ("created_at", "started_at", "ended_at"):
        if data.get(key):
            data[key] = datetime.fromisoformat(data[key])
    return Job(**{k: v for k, v in data.items() if k in Job.__dataclass_fields__})


def launch_step_job(ws_path: str | Path, argv: Sequence[str], label: str = "", *, writes: bool = True,
                    env: dict[str, str] | None = None, lock_wait_s: float = 600) -> Job:
    """Run `studio ARGV` (e.g. `["dedup", "--method", "minhash"]`, as `core.steps.job_argv` gives it) on the
    workspace as a job. A job that writes the workspace queues behind the active ones that do."""
    root = step_jobs_root(ws_path)
    root.mkdir(parents=True, exist_ok=True)
    # Two launches at once (two browser sessions, a page and a command line) must not both find no writer ahead
    # and both start: looking for the writers ahead and recording this job is one step, under a file lock.
    with _launch_lock(root):
        ahead = [j for j in list_step_jobs(ws_path) if j.active and writes_workspace(j)] if writes else []
        job_id = new_job_id(argv[0])
        folder = root / job_id
        folder.mkdir(parents=True)
        job = Job(job_id=job_id, kind=argv[0], status="queued" if ahead else "running", output_dir=str(folder),
                  config=f"argv = {json.dumps(list(argv))}\n", argv=studio_argv(ws_path, argv),
                  label=label or argv[0], log_path=str(folder / LOG_NAME), created_at=datetime.now())
        (folder / CONFIG_NAME).write_text(job.config, encoding="utf-8")
        if writes:
            (folder / WRITES_NAME).write_text("")
        if ahead:
            write_progress(folder, -1.0, queued_message(ahead[0].label))
        # A writer also waits for a workspace held by another process (the app's page, a command line) instead of
        # failing, and publishes the read snapshot as it takes the lock, so the pages read the workspace while it
        # runs.
        extra = {"STUDIO_LOCK_WAIT_S": str(lock_wait_s), **({PUBLISH_ON_OPEN_ENV: "1"} if writes else {}),
                 **(env or {})}
        job.pid = _spawn(job, job_environment(job, extra), after=ahead)
        if not ahead:
            job.started_at = job.created_at
        _save_step_job(job)
    return job


def queued_message(ahead_label: str) -> str:
    """What a queued writer's progress says: whom it waits for, and why."""
    return f"queued: starts when '{ahead_label}' finishes (one job writes the workspace at a time)"


@contextlib.contextmanager
def _launch_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the workspace's jobs folder, across processes and threads (each call opens the lock
    file anew, and `flock` locks are per open file)."""
    with open(root / LAUNCH_LOCK_NAME, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _refresh_step_job(job: Job) -> Job:
    changed = False
    if job.status == "queued" and (job.folder / STARTED_NAME).exists():
        job.status, job.started_at, changed = "running", datetime.fromtimestamp(
            (job.folder / STARTED_NAME).stat().st_mtime), True
    if (changes := reconcile(job)) is not None:
        job.status, job.exit_code, job.error, job.ended_at = (changes["status"], changes["exit_code"],
                                                             changes["error"], changes["ended_at"])
        changed = True
    if changed:
        _save_step_job(job)
    return job


def list_step_jobs(ws_path: str | Path, limit: int | None = 200) -> list[Job]:
    """The workspace's step jobs, newest first, reconciled with their processes and files."""
    root = step_jobs_root(ws_path)
    jobs = [job for folder in (root.iterdir() if root.is_dir() else []) if (job := _read_step_job(folder))]
    jobs.sort(key=lambda j: (j.created_at or datetime.min, j.job_id), reverse=True)
    return [_refresh_step_job(job) for job in jobs[:limit]]


def get_step_job(ws_path: str | Path, job_id: str) -> Job:
    job = _read_step_job(step_jobs_root(ws_path) / job_id)
    if job is None:
        raise JobError(f"no step job {job_id!r} in this workspace")
    return _refresh_step_job(job)


def cancel_step_job(ws_path: str | Path, job_id: str) -> Job:
    """Stop a running step job (its unfinished work is rolled back) or take a queued one out of the queue."""
    job = get_step_job(ws_path, job_id)
    if not job.active:
        raise JobError(f"job {job_id} is {job.status}, not running")
    (job.folder / STOP_NAME).write_text(str(time.time()))
    if job.status == "running" and job.pid is not None:
        targets = [p for p in registered_pids(job) if _in_group(p, job.pid)]
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        if not targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.pid, signal.SIGTERM)
    job.status = "stopping"
    _save_step_job(job)
    return job


def _in_group(pid: int, group: int) -> bool:
    try:
        return os.getpgid(pid) == group
    except (ProcessLookupError, PermissionError):
        return False


def wait_step_job(ws_path: str | Path, job_id: str, *, poll_s: float = 0.5, timeout_s: float | None = None) -> Job:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    job = get_step_job(ws_path, job_id)
    while job.active:
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {job.status} after {timeout_s:g} s")
        time.sleep(poll_s)
        job = get_step_job(ws_path, job_id)
    return job
