"""Corpus: counts per corpus, role and language; length and token histograms; search; a document viewer with its
provenance and every decision ever taken on it."""

from __future__ import annotations

import json

import pandas as pd
import plotly.express as px
import streamlit as st

from core.corpus import SEARCH_LIMIT, document, language_counts, length_sample, search_documents
from studio import widgets as w

st.title(":material/library_books: Corpus")
w.require_workspace()
w.job_panel()

with w.read_ws() as ws:
    counts = language_counts(ws)
if counts.empty:
    st.info("No documents yet: ingest a corpus first.", icon=":material/info:")
    st.stop()

by_role = counts.groupby("role", as_index=False)[["documents", "current", "chars", "tokens"]].sum()
cols = st.columns(len(by_role))
for col, row in zip(cols, by_role.itertuples(), strict=True):
    col.metric(f"{row.role}", f"{int(row.current):,} docs", f"{int(row.documents - row.current):,} dropped",
               delta_color="off")

left, right = st.columns([3, 2])
with left:
    st.plotly_chart(px.bar(counts, x="corpus", y="documents", color="language", height=360,
                           title="Documents per corpus and language", hover_data=["role", "current", "tokens"]))
with right:
    st.dataframe(counts, hide_index=True, height=360,
                 column_config={c: st.column_config.NumberColumn(format="localized")
                                for c in ("documents", "current", "chars", "tokens", "untokenised")})

st.subheader("Lengths")
corpora = sorted(counts["corpus"].unique())
chosen = st.multiselect("Corpora", corpora, default=corpora[: min(6, len(corpora))], key="corpus_hist")
measure = st.radio("Measure", ["characters", "tokens"], horizontal=True, key="corpus_measure")
if chosen:
    with w.read_ws() as ws:
        lengths = length_sample(ws, chosen, measure)
    if lengths.empty:
        st.info("No token counts yet: run `studio tokens WORKSPACE` (it is cached and runs once per document).")
    else:
        st.plotly_chart(w.threshold_histogram(lengths, "length", color="corpus", log_x=True,
                                              x_label=measure, title=f"Document length in {measure}"))

st.subheader("Search")
c1, c2, c3 = st.columns([3, 2, 1])
query = c1.text_input("Text contains", key="corpus_query", placeholder="e.g. hypertension, 高血压")
in_corpora = c2.multiselect("In corpora", corpora, key="corpus_search_in")
only_current = c3.checkbox("Current only", value=False, key="corpus_current_only")
results = pd.DataFrame()
if query:
    with w.read_ws() as ws:
        results = search_documents(ws, query, in_corpora, only_current, limit=SEARCH_LIMIT)
    st.caption(f"{len(results):,} match(es){f' (first {SEARCH_LIMIT})' if len(results) == SEARCH_LIMIT else ''}")
    st.dataframe(results, hide_index=True, height=260)

st.subheader("Document")
if query and st.session_state.get("_corpus_last_query") != query:
    # A new search opens its first match in the viewer.
    st.session_state["_corpus_last_query"] = query
    st.session_state["corpus_doc_id"] = results["doc_id"].iloc[0] if not results.empty else ""
doc_id = st.text_input("Document id", key="corpus_doc_id", help="From the search above, or any doc_id")
if doc_id:
    with w.read_ws() as ws:
        d = document(ws, doc_id.strip())
        history = pd.DataFrame(ws.document_history(doc_id.strip()))
    if d is None:
        st.warning(f"No document {doc_id!r} in this workspace.")
    else:
        left, right = st.columns([3, 2])
        with left:
            st.markdown(f"**{d['corpus']}** ({d['role']}, {d['kind']}, language {d['language']})")
            st.text_area("Text", d["text"], height=320, disabled=True, label_visibility="collapsed")
            if d["record"]:
                with st.expander("Structured record"):
                    st.json(json.loads(d["record"]))
        with right:
            st.markdown("**Provenance**")
            st.table(pd.DataFrame({
                "": ["file", "line / row", "byte offset", "characters", "tokens", "content hash", "repairs",
                     "ingest run"],
                "value": [d["source_file"], d["source_line"], d["byte_offset"], d["char_count"], d["token_count"],
                          d["content_hash"], d["repairs"] or "none", d["run_id"]]}).astype(str))
            st.markdown("**Decisions**")
            if history.empty:
                st.success("No step has decided on this document: it is in the current corpus.")
            else:
                counting = history[(history["active"]) & (history["status"] == "ok") & (history["verdict"] == "drop")]
                if counting.empty:
                    st.success("In the current corpus (no active drop).")
                else:
                    first = counting.iloc[-1]
                    st.error(f"Dropped by **{first['step']}**: {first['reason']} (score {first['score']})")
                st.dataframe(history, hide_index=True)
