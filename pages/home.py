"""Overview: what the workspace holds, the flow as a funnel in its declared order, and every step that ran.

While `studio demo` builds the workspace (a background job holding its write lock), the page shows the build's
stages and redraws itself every few seconds from the read snapshot the job publishes, so the counts and the funnel
fill in as the build goes."""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.corpus import workspace_status
from core.demo import demo_job, read_demo_stages
from core.flow import Funnel, StaleStep, fate_by_role, funnel, stale_steps
from core.jobs import Job
from core.workspace import snapshot_info
from studio import widgets as w

REFRESH_S = 3.0  # how often the page redraws while the demo build runs
CACHE_KEY = "_overview_snapshot"  # (the snapshot's info, what was read from it)

st.title(":material/dashboard: Overview")
path = w.require_workspace()
w.job_panel()


def demo_build(job: Job) -> None:
    """The demo build's stages: done (with seconds), running (for how long; the job panel above shows its
    progress), waiting."""
    stages = read_demo_stages(job)
    if not stages:
        return
    done = sum(s.state == "done" for s in stages)
    running = next((s for s in stages if s.state == "running"), None)
    with st.container(border=True):
        st.markdown(f"**The demo build** ({job.status}): {done} of {len(stages)} stages done"
                    + (f", now **{running.name}**" if running else "")
                    + ". The pages show the workspace as it fills in; `studio demo` prints each stage's wall time.")
        table = pd.DataFrame([{
            "stage": s.name, "state": s.state,
            "seconds": s.seconds if s.seconds is not None else
            round(time.time() - s.started) if s.state == "running" and s.started else None,
            "counts": ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v}" for k, v in s.counts.items()),
        } for s in stages])
        st.dataframe(table, hide_index=True, height=min(38 + 35 * len(stages), 300),
                     column_config={"seconds": st.column_config.NumberColumn(format="%.0f s")})


build = demo_job(path, active_only=True)


@st.fragment(run_every=REFRESH_S if build is not None else None)
def overview() -> None:
    building = demo_job(path, active_only=True)
    if building is not None:
        demo_build(building)
        if snapshot_info(path) is None:
            st.info("The first corpus is being ingested; the pages show the workspace as soon as it is in.",
                    icon=":material/hourglass_top:")
            return
        # Redrawn every few seconds on a 2-core machine the build needs: a snapshot already read is not read again.
        cached = st.session_state.get(CACHE_KEY)
        if cached is not None and cached[0] == snapshot_info(path):
            w.snapshot_banner(path, cached[0])
            status, flow, stale, runs, fate = cached[1]
            draw(status, flow, stale, runs.copy(), fate)  # draw() adds columns to its runs
            return
    with w.read_ws() as ws:
        status = workspace_status(ws)
        flow = funnel(ws)
        stale = stale_steps(ws)
        runs = pd.DataFrame(ws.runs(limit=200))
        fate = pd.DataFrame(fate_by_role(ws))
        read_from = ws.snapshot_of
    st.session_state[CACHE_KEY] = (read_from, (status, flow, stale, runs, fate)) if read_from else None
    draw(status, flow, stale, runs.copy(), fate)


def draw(status: dict[str, Any], flow: Funnel, stale: list[StaleStep], runs: pd.DataFrame,
         fate: pd.DataFrame) -> None:
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Documents", f"{status['documents']:,}")
    c2.metric("Current (after filters)", f"{status['current_documents']:,}")
    c3.metric("Corpora", len(status["corpora"]))
    c4.metric("Ingest errors", f"{status['ingest_errors']:,}")
    st.caption(f"Workspace `{status['workspace']}` · tokenizer `{status['tokenizer']}` · schema "
               + ", ".join(f"{k} v{v}" for k, v in status["schema"].items()))

    st.subheader("The flow")
    st.caption("The curation steps in their declared order; each step sees only what the steps before it left, so "
               "the same recipe gives the same corpus and the same counts every time. A document is counted at the "
               "first step that dropped it. Benchmarks are held out of the flow.")
    if stale:
        st.warning("Stale: " + "; ".join(f"**{s.step}** ran before **{s.because}** was applied again" for s in stale)
                   + ". Re-run the stale steps in flow order to re-derive them.", icon=":material/update:")
    if flow.documents:
        unit = st.radio("Count", ["documents", "tokens"], horizontal=True, key="flow_unit",
                        help="Tokens need `studio tokens` (uncounted documents add none).")
        suffix = "" if unit == "documents" else "tokens"
        names = ["In"] + [s.label + (" (stale)" if s.stale else "" if s.run_id else " (not run)")
                          for s in flow.stages]
        values = [flow.documents - flow.dropped_outside if unit == "documents" else flow.tokens] + [
            s.documents_out if unit == "documents" else s.tokens_out for s in flow.stages]
        dropped = [0] + [s.dropped if unit == "documents" else s.dropped_tokens for s in flow.stages]
        colours = ["#4c78a8"] + ["#e45756" if s.stale else "#bab0ac" if not s.run_id else "#4c78a8"
                                 for s in flow.stages]
        fig = go.Figure(go.Funnel(
            y=names, x=values, marker={"color": colours}, texttemplate="%{value:,}<br>%{percentInitial:.1%}",
            customdata=dropped, hovertemplate=f"%{{y}}<br>out: %{{x:,}} {suffix}<br>dropped here: "
                                              f"%{{customdata:,}} {suffix}<extra></extra>"))
        fig.update_layout(height=380, margin={"l": 10, "r": 10, "t": 10, "b": 10})
        st.plotly_chart(fig)
        table = pd.DataFrame([{
            "step": s.label, "run": s.run_id or "not run", "stale": s.stale,
            "documents in": s.documents_in, "dropped": s.dropped, "documents out": s.documents_out,
            "tokens in": s.tokens_in, "tokens dropped": s.dropped_tokens, "tokens out": s.tokens_out,
        } for s in flow.stages])
        st.dataframe(table, hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="localized") for c in table.columns if c not in
            ("step", "run", "stale")})
        if flow.uncounted:
            st.caption(f"{flow.uncounted:,} documents have no token count yet (`studio tokens`).")
        if flow.dropped_outside:
            st.caption(f"{flow.dropped_outside:,} documents were dropped by a step outside the flow order.")

    if not fate.empty:
        st.subheader("Where documents stand, by role")
        fig = px.bar(fate, x="role", y="documents", color="fate", barmode="stack", height=320)
        st.plotly_chart(fig)

    st.subheader("Runs")
    if runs.empty:
        st.info("Nothing has run on this workspace yet: start with the Ingest page, or `studio demo`.")
    else:
        runs["seconds"] = (pd.to_datetime(runs["ended_at"]) - pd.to_datetime(runs["started_at"])).dt.total_seconds()
        runs["counts"] = runs["counts"].map(lambda c: ", ".join(f"{k}={v}" for k, v in json.loads(c).items()
                                                                if not isinstance(v, dict | list)) if c else "")
        st.dataframe(runs[["run_id", "step", "status", "active", "started_at", "ended_at", "seconds", "counts",
                           "error"]], hide_index=True, height=360)


overview()
