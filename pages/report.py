"""Report: what training bought (domain gain) and what it cost (retention), per job, as one self-contained HTML
file (charts embedded, opens offline) and JSON; built as a background job, shown here."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import streamlit.components.v1 as components

from core.evaluate import RETENTION_TARGET, EvalConfig
from core.report import REPORT_SKIPS, ReportConfig, list_jobs, saved_reports
from core.steps import config_argv
from studio import widgets as w

st.title(":material/summarize: Report")
st.caption("Each job's model (and variants such as the averaged model) against its base: headline cards with 95 % "
           "intervals, scores by subject, perplexity before and after, training curves, flipped items, lineage.")
path = w.require_workspace()
w.job_panel()

with w.read_ws() as ws:
    jobs = list_jobs(ws)
    reports = saved_reports(ws)

if reports:
    shown = st.selectbox("Report", reports, format_func=lambda p: p.name)
    c1, c2 = st.columns(2)
    c1.download_button("Download HTML", shown.read_bytes(), file_name=shown.name, mime="text/html",
                       icon=":material/download:")
    if shown.with_suffix(".json").is_file():
        c2.download_button("Download JSON", shown.with_suffix(".json").read_bytes(), file_name=shown.stem + ".json",
                           mime="application/json", icon=":material/download:")
    components.html(shown.read_text(encoding="utf-8"), height=1400, scrolling=True)
else:
    st.info("No report yet: build one below.", icon=":material/info:")

with st.expander("Build a report", expanded=not reports, icon=":material/play_arrow:"):
    with st.form("report"):
        chosen = st.multiselect("Training jobs", jobs["job_id"].tolist(), help="jobs of the Train page")
        folders = st.text_input("or job output folders (comma-separated)", value="")
        c1, c2, c3, c4 = st.columns(4)
        min_gain = c1.number_input("Domain gain target (points)", -100.0, 100.0, 0.0, step=0.5)
        min_retention = c2.number_input("Retention target", 0.0, 2.0, RETENTION_TARGET, step=0.01)
        formulation = c3.radio("Formulation", ["both", "letter", "cloze"], horizontal=True)
        limit = c4.number_input("Items per benchmark (0 = all)", 0, 100_000, 100, step=50)
        name = st.text_input("Report file name", value="report")
        submitted = st.form_submit_button("Build report", type="primary", icon=":material/play_arrow:")
    if submitted:
        targets = chosen + [f.strip() for f in folders.split(",") if f.strip()]
        if not targets:
            st.error("Choose at least one job.", icon=":material/error:")
        else:
            out = path / "artifacts" / "reports" / f"{Path(name).stem or 'report'}.html"
            config = ReportConfig(jobs=targets, out=str(out), min_gain=min_gain / 100, min_retention=min_retention,
                                  scoring=EvalConfig(model="", formulation=formulation, limit=int(limit) or None))
            w.start_job(["report", *config_argv(config, skip=REPORT_SKIPS)], "Report")
    st.caption("Command line: `studio report WORKSPACE --jobs JOB,... --out FILE.html [--json]`")

