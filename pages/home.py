"""Overview: what the workspace holds and every step that ran on it."""

from __future__ import annotations

import json

import pandas as pd
import plotly.express as px
import streamlit as st

from studio import widgets as w
from studio.commands.workspace import status_data

st.title(":material/dashboard: Overview")
w.require_workspace()
w.job_panel()

with w.read_ws() as ws:
    status = status_data(ws)
    runs = ws.df("SELECT run_id, step, status, active, started_at, ended_at, "
                 "date_diff('millisecond', started_at, ended_at) / 1000.0 AS seconds, counts, error "
                 "FROM runs ORDER BY started_at DESC LIMIT 200")
    fate = ws.df("SELECT role, coalesce(dropped_by, 'kept') AS fate, count(*) AS documents FROM document_fate "
                 "GROUP BY ALL ORDER BY role, fate")

c1, c2, c3, c4 = st.columns(4)
c1.metric("Documents", f"{status['documents']:,}")
c2.metric("Current (after filters)", f"{status['current_documents']:,}")
c3.metric("Corpora", len(status["corpora"]))
c4.metric("Ingest errors", f"{status['ingest_errors']:,}")
st.caption(f"Workspace `{status['workspace']}` · tokenizer `{status['tokenizer']}` · schema "
           + ", ".join(f"{k} v{v}" for k, v in status["schema"].items()))

if not fate.empty:
    st.subheader("Where documents stand, by role")
    fig = px.bar(fate, x="role", y="documents", color="fate", barmode="stack", height=320)
    st.plotly_chart(fig)

st.subheader("Runs")
if runs.empty:
    st.info("Nothing has run on this workspace yet: start with the Ingest page, or `studio demo`.")
else:
    runs["counts"] = runs["counts"].map(lambda c: ", ".join(f"{k}={v}" for k, v in json.loads(c).items()
                                                            if not isinstance(v, dict | list)) if c else "")
    st.dataframe(pd.DataFrame(runs), hide_index=True, height=360)
