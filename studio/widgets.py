"""Shared pieces of the app: the workspace in use, background jobs with progress, charts and text highlighting.

Pages import this module and core; they hold no logic of their own beyond drawing.
DuckDB lets one process write a workspace at a time, so every connection here is short-lived, and long steps
run as `studio` subprocesses (output to a log file, progress to a JSON-lines file) that the page polls: a
closed tab never stalls a job, and a job never blocks the page's script.
"""

from __future__ import annotations

import contextlib
import difflib
import html
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.config import REPO_ROOT
from core.workspace import DB_NAME, Workspace, WorkspaceError

WORKSPACE_KEY = "workspace"


# --- the workspace in use ------------------------------------------------------------------------------------
def workspace_path() -> Path | None:
    """The workspace chosen in the sidebar (session state), else the one the app was started on."""
    chosen = st.session_state.get(WORKSPACE_KEY) or os.environ.get("STUDIO_WORKSPACE")
    return Path(chosen) if chosen else None


def require_workspace() -> Path:
    path = workspace_path()
    if path is None or not (path / DB_NAME).exists():
        st.info("Open or create a workspace in the sidebar to begin.", icon=":material/folder_open:")
        st.stop()
    return path


@contextlib.contextmanager
def read_ws() -> Iterator[Workspace]:
    """A read-only workspace for the duration of a block; a page whose workspace is busy shows the job."""
    path = require_workspace()
    try:
        ws = Workspace.open(path, create=False, read_only=True)
    except WorkspaceError as exc:
        _show_busy(path, exc)
    with ws:
        yield ws


@contextlib.contextmanager
def write_ws() -> Iterator[Workspace]:
    path = require_workspace()
    try:
        ws = Workspace.open(path, create=False, wait_s=2.0)
    except WorkspaceError as exc:
        _show_busy(path, exc)
    with ws:
        yield ws


def _show_busy(path: Path, exc: WorkspaceError) -> None:
    job = current_job(path)
    if job and job.running:
        job_panel()
    else:
        st.error(str(exc), icon=":material/lock:")
    st.stop()


# --- background jobs -----------------------------------------------------------------------------------------
@dataclass
class Job:
    job_id: str
    label: str
    argv: list[str]
    pid: int
    folder: Path

    @property
    def progress_file(self) -> Path:
        return self.folder / f"{self.job_id}.progress.jsonl"

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.job_id}.log"

    @property
    def result_file(self) -> Path:
        return self.folder / f"{self.job_id}.result.json"

    @property
    def exit_file(self) -> Path:
        return self.folder / f"{self.job_id}.exit"

    @property
    def running(self) -> bool:
        if self.exit_file.exists():
            return False
        try:
            os.kill(self.pid, 0)
        except OSError:
            return False
        # A zombie child of this process still answers kill(0): reap it if it has ended.
        with contextlib.suppress(ChildProcessError, OSError):
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
            if pid == self.pid:
                return False
        return True

    def last_progress(self) -> tuple[float, str]:
        if not self.progress_file.exists():
            return -1.0, "starting"
        with open(self.progress_file, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 4096))
            lines = fh.read().decode("utf-8", "replace").strip().splitlines()
        for line in reversed(lines):
            with contextlib.suppress(json.JSONDecodeError):
                rec = json.loads(line)
                return float(rec["fraction"]), str(rec["message"])
        return -1.0, "starting"

    def result(self) -> dict[str, Any] | None:
        if not self.result_file.exists():
            return None
        text = self.result_file.read_text(encoding="utf-8").strip()
        try:
            return json.loads(text.splitlines()[-1]) if text else None
        except json.JSONDecodeError:
            return {"ok": False, "error": text[-500:]}

    def exit_code(self) -> int | None:
        return int(self.exit_file.read_text()) if self.exit_file.exists() else None


def _jobs_folder(path: Path) -> Path:
    folder = path / "artifacts" / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def current_job(path: Path | None = None) -> Job | None:
    """The most recent job launched on the workspace (from its jobs folder, so every session sees it)."""
    path = path or workspace_path()
    if path is None:
        return None
    latest = _jobs_folder(path) / "latest.json"
    if not latest.exists():
        return None
    rec = json.loads(latest.read_text())
    return Job(rec["job_id"], rec["label"], rec["argv"], rec["pid"], Path(rec["folder"]))


JOB_LOCK_WAIT_S = 600  # a job waits this long for a workspace another process holds, instead of failing


def launch_job(argv: Sequence[str], label: str) -> Job:
    """Run `studio ARGV WORKSPACE --json --progress-file F` in the background. While another job runs, the new
    one is queued: it starts when that one ends. A job waits for a workspace held by another process."""
    path = require_workspace()
    running = current_job(path)
    folder = _jobs_folder(path)
    job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{argv[0]}"
    if running and running.job_id == job_id:
        job_id += f"-{os.getpid()}-{time.monotonic_ns() % 100_000}"
    job = Job(job_id, label, list(argv), 0, folder)
    # The shell records the exit code, so a finished job is known even after the app restarts.
    cmd = [sys.executable, "-m", "studio.cli", argv[0], str(path), *argv[1:], "--json",
           "--progress-file", str(job.progress_file)]
    script = (" ".join(_quote(c) for c in cmd) + f" >{_quote(str(job.result_file))} 2>{_quote(str(job.log_file))};"
              f" echo $? >{_quote(str(job.exit_file))}")
    if running and running.running:
        job.progress_file.write_text(json.dumps({"t": time.time(), "fraction": -1.0, "message":
                                                 f"queued: starts when '{running.label}' finishes"}) + "\n")
        script = (f"while [ ! -e {_quote(str(running.exit_file))} ] && kill -0 {running.pid} 2>/dev/null; "
                  f"do sleep 1; done; {script}")
    proc = subprocess.Popen(["/bin/sh", "-c", script], cwd=REPO_ROOT, start_new_session=True,
                            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1",
                                                           "STUDIO_LOCK_WAIT_S": str(JOB_LOCK_WAIT_S)})
    job.pid = proc.pid
    (folder / "latest.json").write_text(json.dumps(
        {"job_id": job_id, "label": label, "argv": job.argv, "pid": proc.pid, "folder": str(folder)}))
    return job


def start_job(argv: Sequence[str], label: str) -> None:
    """Launch a job from a button and redraw the page with its progress; say why when it cannot start."""
    try:
        launch_job(argv, label)
    except WorkspaceError as exc:
        st.error(str(exc), icon=":material/error:")
    else:
        st.rerun()


def apply_filter_button(dropped: int, argv: Sequence[str], label: str, step: str, *, key: str) -> None:
    """The button that applies a filter as a job, and the command line that does the same."""
    if st.button(f"Apply: drop {dropped:,} documents", type="primary", key=key):
        start_job(argv, label)
    st.caption(f"Applying records a drop in `decisions` (rule, value, threshold) for each dropped document and "
               f"replaces the previous {step}. Command line: `studio {argv[0]} WORKSPACE {' '.join(argv[1:])}`")


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\"'\"'") + "'"


def job_panel() -> None:
    """The latest job's progress (polled every second while it runs) and, once finished, its outcome."""
    job = current_job()
    if job is None:
        return

    @st.fragment(run_every=1.0 if job.running else None)
    def _panel() -> None:
        if job.running:
            fraction, message = job.last_progress()
            with st.container(border=True):
                st.markdown(f"**{job.label}** is running")
                st.progress(min(max(fraction, 0.0), 1.0), text=message)
            st.session_state["_job_seen_running"] = job.job_id
            return
        outcome = job.result() or {}
        code = job.exit_code()
        if code == 0 and outcome.get("ok", True):
            st.success(f"{job.label}: finished", icon=":material/check_circle:")
        else:
            log = job.log_file.read_text(encoding="utf-8", errors="replace") if job.log_file.exists() else ""
            st.error(f"{job.label}: failed (exit {code}). {outcome.get('error') or log.strip().splitlines()[-1:]}",
                     icon=":material/error:")
        with st.expander("Job details"):
            st.json(outcome or {})
            if job.log_file.exists():
                st.code(job.log_file.read_text(encoding="utf-8", errors="replace")[-3000:] or "(no output)")
        if st.session_state.get("_job_seen_running") == job.job_id:
            # The job finished while this page watched it: redraw the whole page with the new data.
            st.session_state["_job_seen_running"] = None
            st.rerun(scope="app")

    _panel()


# --- charts --------------------------------------------------------------------------------------------------
def threshold_histogram(data: pd.DataFrame | Sequence[float], column: str | None = None,
                        threshold: float | Sequence[float] | None = None, *, color: str | None = None,
                        title: str = "", x_label: str | None = None, bins: int = 60, log_x: bool = False,
                        log_y: bool = False) -> go.Figure:
    """A histogram (one trace per `color` group) with vertical lines at the threshold(s)."""
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame({column or "value": list(data)})
    column = column or frame.columns[0]
    fig = go.Figure()
    groups = frame.groupby(color, sort=True) if color else [("", frame)]
    for name, part in groups:
        values = part[column].dropna()
        if log_x:
            values = values[values > 0]
            values = values.map(math.log10)
        fig.add_trace(go.Histogram(x=values, name=str(name), nbinsx=bins, opacity=0.7))
    lines = [] if threshold is None else ([threshold] if isinstance(threshold, int | float) else list(threshold))
    for value in lines:
        x = math.log10(value) if log_x and value > 0 else value
        fig.add_vline(x=x, line_width=2, line_dash="dash", line_color="#d62728",
                      annotation_text=f"{value:g}", annotation_position="top")
    fig.update_layout(barmode="overlay", title=title, height=320, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title=(f"log10 {x_label or column}" if log_x else (x_label or column)),
                      yaxis_title="documents", legend_title_text=color or "", yaxis_type="log" if log_y else None)
    return fig


# --- text highlighting ---------------------------------------------------------------------------------------
MARK_STYLE = "background:#ffe08a;border-radius:2px"
DEL_STYLE = "background:#ffc9c9;border-radius:2px"
INS_STYLE = "background:#c3f0c8;border-radius:2px"


def highlight_spans(text: str, spans: Sequence[tuple[int, int]], style: str = MARK_STYLE) -> str:
    """HTML of `text` with the character spans [start, end) marked; overlapping spans are merged."""
    merged: list[list[int]] = []
    for start, end in sorted((max(0, s), min(len(text), e)) for s, e in spans if e > s):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, pos = [], 0
    for start, end in merged:
        out.append(html.escape(text[pos:start]))
        out.append(f'<mark style="{style}">{html.escape(text[start:end])}</mark>')
        pos = end
    out.append(html.escape(text[pos:]))
    return _as_block("".join(out))


def diff_html(a: str, b: str) -> tuple[str, str]:
    """Both texts as HTML, with what only `a` has marked red and what only `b` has marked green (word level,
    character level for text without spaces such as Chinese)."""
    split = list if (" " not in a[:200] and " " not in b[:200]) else _words
    ta, tb = split(a), split(b)
    matcher = difflib.SequenceMatcher(a=ta, b=tb, autojunk=False)
    out_a, out_b = [], []
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        sa, sb = html.escape("".join(ta[i1:i2])), html.escape("".join(tb[j1:j2]))
        if op == "equal":
            out_a.append(sa)
            out_b.append(sb)
        else:
            if sa:
                out_a.append(f'<mark style="{DEL_STYLE}">{sa}</mark>')
            if sb:
                out_b.append(f'<mark style="{INS_STYLE}">{sb}</mark>')
    return _as_block("".join(out_a)), _as_block("".join(out_b))


def _words(text: str) -> list[str]:
    return re.findall(r"\s+|[^\s]+", text)


def _as_block(inner: str) -> str:
    return (f'<div style="white-space:pre-wrap;font-size:0.9rem;line-height:1.45;max-height:420px;'
            f'overflow-y:auto;border:1px solid #ddd;border-radius:6px;padding:8px">{inner}</div>')


def show_html(markup: str) -> None:
    st.markdown(markup, unsafe_allow_html=True)
