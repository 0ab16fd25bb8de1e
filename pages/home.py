"""Overview: what the workspace holds, the flow as a funnel in its declared order, and every step that ran."""

from __future__ import annotations

import json

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.corpus import workspace_status
from core.flow import fate_by_role, funnel, stale_steps
from studio import widgets as w

st.title(":material/dashboard: Overview")
w.require_workspace()
w.job_panel()

with w.read_ws() as ws:
    status = workspace_status(ws)
    flow = funnel(ws)
    stale = stale_steps(ws)
    runs = pd.DataFrame(ws.runs(limit=200))
    fate = pd.DataFrame(fate_by_role(ws))

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
