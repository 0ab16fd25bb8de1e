"""Shared pieces of the app: the workspace in use, background jobs with progress, charts and text highlighting.

Pages import this module and core; they hold no logic of their own beyond drawing.
DuckDB lets one process write a workspace at a time, so every connection here is short-lived, and long steps
run as `studio` jobs of `core.jobs` (their own process group, log, progress and result files) that the page
polls: a closed tab never stalls a job, and a job never blocks the page's script.
"""

from __future__ import annotations

import contextlib
import difflib
import html
import importlib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from core import jobs
from core.workspace import DB_NAME, Workspace, WorkspaceError, lock_holder, workspace_signature

WORKSPACE_KEY = "workspace"
T = TypeVar("T")


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
    """A read-only workspace for the duration of a block. While a job writes it (DuckDB then lets no other process
    open the file), the page reads the read snapshot the job published and says as of when; without one, the page
    shows the job."""
    path = require_workspace()
    try:
        ws = Workspace.open_for_reading(path)
    except WorkspaceError as exc:
        _show_busy(path, exc)
    if ws.snapshot_of is not None and _once_per_run("snapshot_banner"):
        snapshot_banner(path, ws.snapshot_of)
    with ws:
        yield ws


def cached_read(fn: Callable[..., T], *args: Any) -> T:
    """`fn(ws, *args)` on the workspace read-only (as `read_ws`), remembered until the workspace changes: a page's
    rerun (a moved slider re-runs the whole script) or a second visit reads nothing again while no step has
    written. On a million documents a page's reads take seconds; a remembered one is a copy from memory.
    `fn` is a named core function (the key holds its module and name) and `args` are what it reads by."""
    path = require_workspace()
    try:
        value, snapshot = _cached_call(str(path), workspace_signature(path), fn.__module__, fn.__qualname__, args)
    except _CannotOpen as exc:  # as read_ws; an error of `fn` itself is the page's to show
        _show_busy(path, exc.error)
    if snapshot is not None and _once_per_run("snapshot_banner"):
        snapshot_banner(path, snapshot)
    return value


@st.cache_data(max_entries=128, ttl=3600, show_spinner=False)
def _cached_call(path: str, state: tuple[int, ...], module: str, name: str, args: tuple[Any, ...]
                 ) -> tuple[Any, dict[str, Any] | None]:
    fn = getattr(importlib.import_module(module), name)
    try:
        ws = Workspace.open_for_reading(path)
    except WorkspaceError as exc:
        raise _CannotOpen(exc) from exc
    with ws:
        return fn(ws, *args), ws.snapshot_of


class _CannotOpen(Exception):
    def __init__(self, error: WorkspaceError) -> None:
        super().__init__(str(error))
        self.error = error


def snapshot_banner(path: Path, snapshot: dict[str, Any]) -> None:
    writer = next((job.label for job in step_jobs(path, limit=10) if job.job.active and jobs.writes_workspace(job.job)),
                  None) or lock_holder(path)
    when = str(snapshot.get("published_at", "?")).replace("T", " ")
    st.info(f"The workspace is being written by **{writer}**; showing it as of {when} (after "
            f"{snapshot.get('after', '?')}). Changes wait until the job ends.", icon=":material/history:")


def _once_per_run(key: str) -> bool:
    """True the first time in a script run (or fragment run) that `key` asks: a note many blocks of a page could
    show is shown once."""
    ctx = get_script_run_ctx()
    token = id(ctx.cursors) if ctx is not None else None  # a new cursors dict every run
    seen = st.session_state.setdefault("_once_per_run", {})
    if token is not None and seen.get(key) == token:
        return False
    seen[key] = token
    return True


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
    if any(job.job.active for job in step_jobs(path, limit=10)):
        job_panel()
    else:
        st.error(str(exc), icon=":material/lock:")
    st.stop()


# --- background jobs (run by core.jobs; here only what the page shows of them) ---------------------------------
@dataclass
class AppJob:
    """A step job as the pages show it: its `studio` arguments, and a live look at its files."""

    job: jobs.Job
    workspace: Path

    @property
    def job_id(self) -> str:
        return self.job.job_id

    @property
    def label(self) -> str:
        return self.job.label

    @property
    def argv(self) -> list[str]:
        """What the page asked for: `studio ARGV` without the workspace."""
        return tomllib.loads(self.job.config)["argv"]

    @property
    def folder(self) -> Path:
        return self.job.folder

    @property
    def log_file(self) -> Path:
        return Path(self.job.log_path)

    @property
    def result_file(self) -> Path:
        return self.folder / jobs.RESULT_NAME

    @property
    def exit_file(self) -> Path:
        return self.folder / jobs.EXIT_NAME

    def refresh(self) -> jobs.Job:
        self.job = jobs.get_step_job(self.workspace, self.job_id)
        return self.job

    @property
    def running(self) -> bool:
        return self.refresh().active

    @property
    def queued(self) -> bool:
        return self.job.status == "queued"

    def last_progress(self) -> tuple[float, str]:
        progress = self.job.progress()
        return float(progress["fraction"]), str(progress["message"])

    def result(self) -> dict[str, Any] | None:
        return self.job.result()

    def exit_code(self) -> int | None:
        return int(self.exit_file.read_text()) if self.exit_file.exists() else None


Job = AppJob  # the name pages and tests knew it by


def step_jobs(path: Path | None = None, limit: int = 20) -> list[AppJob]:
    """The workspace's step jobs, newest first (from its jobs folder, so every session sees them)."""
    path = path or workspace_path()
    if path is None:
        return []
    return [AppJob(job, path) for job in jobs.list_step_jobs(path, limit=limit)]


def current_job(path: Path | None = None) -> AppJob | None:
    """The most recent job launched on the workspace."""
    found = step_jobs(path, limit=1)
    return found[0] if found else None


LAUNCHED_KEY = "_job_launched"  # the last job this browser session launched


def launch_job(argv: Sequence[str], label: str) -> AppJob:
    """Run `studio ARGV WORKSPACE` as a core job. While another job writes the workspace, this one is queued:
    it starts when that one ends (DuckDB allows one writer process)."""
    path = require_workspace()
    job = AppJob(jobs.launch_step_job(path, argv, label), path)
    st.session_state[LAUNCHED_KEY] = job.job_id
    return job


def start_job(argv: Sequence[str], label: str) -> None:
    """Launch a job from a button and redraw the page with its progress; say why when it cannot start."""
    try:
        launch_job(argv, label)
    except (WorkspaceError, OSError) as exc:
        st.error(str(exc), icon=":material/error:")
    else:
        st.rerun()


def apply_filter_button(dropped: int, argv: Sequence[str], label: str, step: str, *, key: str) -> None:
    """The button that applies a filter as a job, and the command line that does the same."""
    if st.button(f"Apply: drop {dropped:,} documents", type="primary", key=key):
        start_job(argv, label)
    st.caption(f"Applying records a drop in `decisions` (rule, value, threshold) for each dropped document and "
               f"replaces the previous {step}. Command line: `studio {argv[0]} WORKSPACE {' '.join(argv[1:])}`")


def job_panel() -> None:
    """The jobs running or queued on the workspace (polled every second, each with a cancel button) and, once the
    latest has finished, its outcome."""
    listed = step_jobs(limit=10)
    if not listed:
        return
    active = [job for job in listed if job.job.active]

    @st.fragment(run_every=1.0 if active else None)
    def _panel() -> None:
        now = step_jobs(limit=10)
        # in the order they run: the one writing now, then the queue, oldest first
        running = sorted((job for job in now if job.job.active), key=lambda job: (
            job.job.status == "queued", job.job.created_at.timestamp() if job.job.created_at else 0.0))
        for job in running:
            fraction, message = job.last_progress()
            with st.container(border=True):
                left, right = st.columns([6, 1])
                left.markdown(f"**{job.label}** is {job.job.status}")
                left.progress(min(max(fraction, 0.0), 1.0), text=message)
                if job.job.status != "stopping" and right.button("Cancel", key=f"cancel_{job.job_id}",
                                                                 icon=":material/stop_circle:"):
                    with contextlib.suppress(jobs.JobError):
                        jobs.cancel_step_job(job.workspace, job.job_id)
                    st.rerun(scope="fragment")
            st.session_state["_job_seen_running"] = job.job_id
        if running:
            return
        # The latest job's outcome, and this session's own when another session launched a job after it: each
        # session sees how its job ended.
        own = next((job for job in now if job.job_id == st.session_state.get(LAUNCHED_KEY)), None)
        for job in [now[0], *([own] if own is not None and own is not now[0] else [])]:
            _job_outcome(job)
        if st.session_state.get("_job_seen_running"):
            # A job finished while this page watched it: redraw the whole page with the new data.
            st.session_state["_job_seen_running"] = None
            st.rerun(scope="app")

    _panel()


def _job_outcome(job: AppJob) -> None:
    """How an ended job ended, with its result and log tail."""
    outcome = job.result() or {}
    if job.job.status == "finished" and outcome.get("ok", True):
        st.success(f"{job.label}: finished", icon=":material/check_circle:")
    elif job.job.status == "stopped":
        st.warning(f"{job.label}: cancelled", icon=":material/stop_circle:")
    else:
        st.error(f"{job.label}: failed (exit {job.exit_code()}). "
                 f"{outcome.get('error') or (job.job.error or '').splitlines()[:1]}", icon=":material/error:")
    with st.expander("Job details"):
        st.json(outcome or {})
        st.code(job.job.log_tail(60) or "(no output)")


# --- figures ---------------------------------------------------------------------------------------------------
def token_figure(count: int) -> str:
    """A token count short enough for a quarter-width `st.metric` at 1400 px: exact up to 9,999,999, then in
    millions or billions (the tables beside it keep the exact figures)."""
    if abs(count) < 10_000_000:
        return f"{count:,}"
    if abs(count) < 1_000_000_000:
        return f"{count / 1e6:,.1f}M"
    return f"{count / 1e9:,.2f}B"


# --- charts --------------------------------------------------------------------------------------------------
def threshold_histogram(data: pd.DataFrame | Sequence[float], column: str | None = None,
                        threshold: float | Sequence[float] | None = None, *, color: str | None = None,
                        title: str = "", x_label: str | None = None, bins: int = 60, log_x: bool = False,
                        log_y: bool = False) -> go.Figure:
    """A histogram (one trace per `color` group, on shared bins) with vertical lines at the threshold(s). The bins
    are counted here, so the browser receives `bins` bars per group, not every value: 235,000 dedup pairs or
    50,000 sampled quality values as raw points made a page's first drawing take seconds."""
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame({column or "value": list(data)})
    column = column or frame.columns[0]
    values = pd.to_numeric(frame[column], errors="coerce").astype(float)
    if log_x:
        values = values.where(values > 0).map(np.log10)
    frame = frame.assign(_value=values).dropna(subset=["_value"])
    fig = go.Figure()
    if not frame.empty:
        low, high = float(frame["_value"].min()), float(frame["_value"].max())
        edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
        centers, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
        groups = frame.groupby(color, sort=True) if color else [("", frame)]
        for name, part in groups:
            counts, _ = np.histogram(part["_value"].to_numpy(), bins=edges)
            fig.add_trace(go.Bar(x=centers, y=counts, width=width, name=str(name), opacity=0.7,
                                 hovertemplate=f"%{{x:.4g}}: %{{y:,}}<extra>{html.escape(str(name))}</extra>"))
    lines = [] if threshold is None else ([threshold] if isinstance(threshold, int | float) else list(threshold))
    for value in lines:
        x = math.log10(value) if log_x and value > 0 else value
        fig.add_vline(x=x, line_width=2, line_dash="dash", line_color="#d62728",
                      annotation_text=f"{value:g}", annotation_position="top")
    fig.update_layout(barmode="overlay", bargap=0, title=title, height=320, margin=dict(l=10, r=10, t=40, b=10),
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
