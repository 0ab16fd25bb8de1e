"""The `studio` command: every step of the studio, headless.

Each subcommand lives in a module of `studio/commands/` that exposes `register(subparsers)`; a command's
handler takes the parsed arguments and a `Reporter` and returns a `CommandResult`. `main` turns that into a
human summary or, with `--json`, one JSON object on stdout, and turns any `StudioError` into a one-line reason
on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.jobs import (
    JOB_DIR_ENV,
    RESULT_NAME,
    register_process,
    stop_requested,
    write_json_atomic,
    write_progress,
)
from core.models import ModelUnavailable
from core.readers import SourceError
from core.steps import comma_list  # noqa: F401  (commands import it from here)
from core.workspace import WorkspaceError
from core.workspace import log as workspace_log

# Order here is the order of `studio --help`.
COMMAND_MODULES = [
    "studio.commands.workspace",
    "studio.commands.ingest",
    "studio.commands.dedup",
    "studio.commands.quality",
    "studio.commands.terms",
    "studio.commands.recall",
    "studio.commands.mix",
    "studio.commands.train",
    "studio.commands.evaluate",
    "studio.commands.steps",  # registered steps without a module of their own (after every hand-written one)
    "studio.commands.app",
]

USER_ERRORS = (WorkspaceError, SourceError, ModelUnavailable, FileNotFoundError, ValueError)


@dataclass
class CommandResult:
    """What a command did: `data` is the --json object, `summary` the human lines."""

    data: dict[str, Any]
    summary: list[str] = field(default_factory=list)
    exit_code: int = 0


class Reporter:
    """Progress for a command: a bar on stderr for people at a terminal, plain lines where stderr is a file or a
    pipe (nohup, a container log, CI), JSON lines in a file for the app's job panel.

    Plain lines: one whenever a step starts (its message changes other than in its figures), then one every
    `STUDIO_PROGRESS_INTERVAL` seconds (default 10) while the step runs, from a heartbeat thread so that a step
    busy inside one long call still shows it is alive. A job (`--json` on stdout) writes them to its log too."""

    def __init__(self, quiet: bool, progress_file: str | None) -> None:
        self.quiet = quiet
        # Run as a job (`core.jobs.launch_step_job`): its progress.json, rewritten at most twice a second.
        self.job_dir = os.environ.get(JOB_DIR_ENV)
        self._last_job_write = 0.0
        self._last_job_step = ""
        # --json keeps stdout for the one object; a job's stderr is its log, which gets the lines all the same.
        self.lines = (not quiet or bool(self.job_dir)) and not sys.stderr.isatty()
        self.file = open(progress_file, "a", buffering=1, encoding="utf-8") if progress_file else None  # noqa: SIM115
        self._last_draw = 0.0
        self.interval = float(os.environ.get("STUDIO_PROGRESS_INTERVAL", "10"))
        self._started = time.monotonic()
        self._latest: tuple[float, str] | None = None
        self._last_step = ""
        self._last_line = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __call__(self, fraction: float, message: str) -> None:
        if self.file:
            self.file.write(json.dumps({"t": time.time(), "fraction": fraction, "message": message}) + "\n")
        # A new step is written at once: it may be followed by a long silence (a model loading), during which the
        # job panel must not show the step before it.
        step = _step_of(message)
        if self.job_dir and (fraction >= 1 or step != self._last_job_step
                             or time.monotonic() - self._last_job_write >= 0.5):
            self._last_job_write, self._last_job_step = time.monotonic(), step
            write_progress(Path(self.job_dir), fraction, message)
        if self.lines:
            self._line_progress(fraction, message)
            return
        if self.quiet:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and 0 <= fraction < 1:
            return
        self._last_draw = now
        if fraction < 0:
            bar = "working"
        else:
            filled = int(30 * min(fraction, 1.0))
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * min(fraction, 1.0):5.1f}%"
        sys.stderr.write(f"\r\033[K{bar} {message[:80]}")
        if fraction >= 1:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def _line_progress(self, fraction: float, message: str) -> None:
        step = _step_of(message)
        with self._lock:
            self._latest = (fraction, message)
            if step != self._last_step or fraction >= 1:
                self._last_step = step
                self._write_line(fraction, message)
        if self._heartbeat is None and self.interval > 0:
            self._heartbeat = threading.Thread(target=self._beat, name="studio-progress", daemon=True)
            self._heartbeat.start()

    def _write_line(self, fraction: float, message: str) -> None:
        elapsed = time.monotonic() - self._started
        done = f"{100 * min(fraction, 1.0):5.1f}%" if fraction >= 0 else "  ... "
        sys.stderr.write(f"[{time.strftime('%H:%M:%S')} +{elapsed:,.0f}s] {done} {message}\n")
        sys.stderr.flush()
        self._last_line = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0)):
            with self._lock:
                if self._latest and time.monotonic() - self._last_line >= self.interval:
                    self._write_line(*self._latest)

    def close(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=2)
        if not self.quiet and not self.lines:
            sys.stderr.write("\r\033[K")
        if self.file:
            self.file.close()


def _step_of(message: str) -> str:
    """A progress message without its figures: the same step whatever its counts."""
    return re.sub(r"\d[\d,.]*", "#", message)


Handler = Callable[[argparse.Namespace, Reporter], CommandResult]


def add_workspace_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every subcommand takes: the workspace and the output mode."""
    parser.add_argument("workspace", type=Path, help="workspace folder (holds studio.duckdb and artifacts/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--progress-file", help=argparse.SUPPRESS)  # JSON-lines progress for the app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studio", description="Curate domain-adaptation training data for language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def format_summary(result: CommandResult) -> str:
    return "\n".join(result.summary) if result.summary else json.dumps(result.data, indent=2, default=str)


def _job_result(ok: bool, data: dict[str, Any], stopped: bool = False) -> None:
    """A job's last word in its folder (the command's --json object with the job's status)."""
    if job_dir := os.environ.get(JOB_DIR_ENV):
        status = "stopped" if stopped else "finished" if ok else "failed"
        write_json_atomic(Path(job_dir) / RESULT_NAME, {**data, "ok": ok, "t": time.time(), "status": status})


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # a job's stop: the step rolls back its unfinished work, as on Ctrl-C


class _WaitsToProgress(logging.Handler):
    """In a job, the workspace's notes (a writer waiting for another process to let go of it) go to its progress, so
    the job panel says why a running job has not started its work, not only its log."""

    def __init__(self, reporter: Reporter) -> None:
        super().__init__(logging.WARNING)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        self.reporter(-1.0, record.getMessage())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (job_dir := os.environ.get(JOB_DIR_ENV)) and threading.current_thread() is threading.main_thread():
        register_process(Path(job_dir))
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    reporter = Reporter(quiet=getattr(args, "json", False), progress_file=getattr(args, "progress_file", None))
    waits = _WaitsToProgress(reporter) if os.environ.get(JOB_DIR_ENV) else None
    if waits is not None:
        workspace_log.addHandler(waits)
    try:
        return _run(args, reporter)
    finally:
        if waits is not None:
            workspace_log.removeHandler(waits)


def _run(args: argparse.Namespace, reporter: Reporter) -> int:
    """The command, and what its outcome prints, returns and leaves in a job's folder."""
    try:
        result: CommandResult = args.handler(args, reporter)
    except USER_ERRORS as exc:
        reporter.close()
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}))
        _job_result(False, {"error": str(exc)})
        print(f"studio {args.command}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        reporter.close()
        _job_result(False, {"error": "stopped; the step's unfinished work was rolled back"}, stopped=True)
        print(f"studio {args.command}: interrupted; the step's unfinished work was rolled back", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line for people, the trace for the log file
        reporter.close()
        if (job_dir := os.environ.get(JOB_DIR_ENV)) and stop_requested(Path(job_dir)):
            # a job's stop that met a query (DuckDB turns the interrupt into its own error): stopped, not failed
            _job_result(False, {"error": "stopped; the step's unfinished work was rolled back"}, stopped=True)
            print(f"studio {args.command}: interrupted; the step's unfinished work was rolled back", file=sys.stderr)
            return 130
        if getattr(args, "progress_file", None):
            traceback.print_exc()
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        _job_result(False, {"error": f"{type(exc).__name__}: {exc}"})
        print(f"studio {args.command}: failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    reporter.close()
    _job_result(result.exit_code == 0, json.loads(json.dumps(result.data, default=str)))
    if getattr(args, "json", False):
        print(json.dumps({"ok": result.exit_code == 0, **result.data}, default=str))
    else:
        print(format_summary(result))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
