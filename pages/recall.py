"""Benchmarks, recall and leakage: choose benchmarks, pool, k, floor and cap and run the recall; each candidate's
best similarity with floor and cap as movable lines and live counts; coverage per subject; the documents right at
the cap beside the item they resemble; the n-gram contamination table with its evidence."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from core.benchmarks import benchmarks, flagged_item_counts, item_with_answer
from core.corpus import corpus_roles, document_text
from core.decontam import DECONTAM_MODES, DecontamConfig, contamination_evidence
from core.decontam import STEP as DECONTAM_STEP
from core.recall import (
    ITEM_TEXTS,
    RecallConfig,
    benchmark_stats,
    candidate_similarities,
    documents_at_cap,
    shared_spans,
    subject_stats,
    what_if,
)
from core.recall import STEP as RECALL_STEP
from core.steps import job_argv
from core.workspace import active_run
from studio import widgets as w

RECALL_DEFAULTS, DECONTAM_DEFAULTS = RecallConfig(), DecontamConfig()  # widgets' initial values

st.title(":material/target: Benchmarks and recall")
st.caption("Eval-driven selection: training documents close to the benchmark items, above a similarity floor and "
           "below a leakage cap (a hard exclusion), against a random control set of the same size and length; "
           "and the n-gram check that proves no benchmark item leaked into training data.")
w.require_workspace()
w.job_panel()

with w.read_ws() as ws:
    registered = benchmarks(ws)
    corpora = list(corpus_roles(ws).items())
    recall = active_run(ws, RECALL_STEP)
    decontam = active_run(ws, DECONTAM_STEP)
    flags = flagged_item_counts(ws)
recall_run = recall.run_id if recall else None

bench_names = [c for c, r in corpora if r == "benchmark"]
pool_names = [c for c, r in corpora if r != "benchmark"]
if not bench_names:
    st.info("No benchmark yet: import one with `studio bench-import WORKSPACE FILE --name NAME --kind domain` "
            "(or ingest a corpus with role 'benchmark').", icon=":material/info:")
    st.stop()

# --- benchmarks --------------------------------------------------------------------------------------------------
with st.expander("Benchmarks", expanded=recall_run is None):
    table = pd.DataFrame([{"benchmark": b["corpus"], "kind": b["kind"], "items": b["items"],
                           "subjects": len(b["subjects"]),
                           "largest subjects": ", ".join(list(b["subjects"])[:4])} for b in registered])
    if not flags.empty:
        pivot = flags.pivot_table(index="benchmark", columns="flag", values="items", fill_value=0)
        pivot.columns = [f"items with a {c} copy" for c in pivot.columns]
        table = table.merge(pivot, left_on="benchmark", right_index=True, how="left").fillna(0)
    st.dataframe(table, hide_index=True)
    unregistered = sorted(set(bench_names) - {b["corpus"] for b in registered})
    if unregistered:
        st.caption(f"Not registered yet (counted as domain on first use): {', '.join(unregistered)}")

# --- run ---------------------------------------------------------------------------------------------------------
previous = recall.params if recall else {}
with st.form("recall_form"):
    st.markdown("**Run the recall**")
    c1, c2 = st.columns(2)
    chosen_bench = c1.multiselect("Benchmarks", bench_names,
                                  default=[b for b in previous.get("benchmarks", bench_names) if b in bench_names])
    chosen_pool = c2.multiselect("Pool (current documents of these corpora)", pool_names,
                                 default=[p for p in previous.get("pool", pool_names) if p in pool_names])
    c1, c2, c3, c4 = st.columns(4)
    k = c1.number_input("k neighbours per item", 1, 1000, int(previous.get("k", RECALL_DEFAULTS.k)))
    floor = c2.slider("Floor (cosine)", 0.0, 1.0, float(previous.get("floor", RECALL_DEFAULTS.floor)), 0.01)
    cap = c3.slider("Leakage cap (cosine)", 0.0, 1.0, float(previous.get("cap", RECALL_DEFAULTS.cap)), 0.01)
    item_text = c4.selectbox("Item text embedded", ITEM_TEXTS,
                             index=ITEM_TEXTS.index(previous.get("item_text", RECALL_DEFAULTS.item_text)))
    c1, c2, c3 = st.columns(3)
    max_items = c1.number_input("Items per benchmark (0 = all)", 0, 1_000_000,
                                int(previous.get("max_items_per_benchmark") or 0))
    pool_sample = c2.number_input("Pool sample (0 = all)", 0, 10_000_000, int(previous.get("pool_sample") or 0),
                                  help="Embedding is the slow part (~30-60 documents/s on 2 cores; cached)")
    seed = c3.number_input("Seed (control set, samples)", 0, 2**31 - 1, int(previous.get("seed", RECALL_DEFAULTS.seed)))
    if st.form_submit_button("Run recall", icon=":material/play_arrow:", type="primary"):
        if not chosen_bench or not chosen_pool or floor >= cap:
            st.error("Choose at least one benchmark and one pool corpus, with the floor below the cap.")
        else:
            config = RecallConfig(benchmarks=chosen_bench, pool=chosen_pool, k=int(k), floor=floor, cap=cap,
                                  item_text=item_text, seed=int(seed), max_items_per_benchmark=int(max_items) or None,
                                  pool_sample=int(pool_sample) or None)
            w.start_job(job_argv("recall", config), "Recall")

# --- the latest recall -----------------------------------------------------------------------------------------
st.subheader("Recall")
if recall_run is None:
    st.info("No recall run yet.", icon=":material/info:")
else:
    with w.read_ws() as ws:
        candidates = candidate_similarities(ws, recall_run)
    params, counts = recall.params, recall.counts
    st.caption(f"Run {recall_run}: {counts.get('items', 0):,} items of {', '.join(params.get('benchmarks', []))} "
               f"against {counts.get('pool_documents', 0):,} documents ({counts.get('index_kind')} search); "
               f"k {params.get('k')}, floor {params.get('floor')}, cap {params.get('cap')}.")
    m = st.columns(4)
    m[0].metric("Recalled documents", f"{counts.get('recalled_documents', 0):,}",
                f"{counts.get('recalled_tokens', 0):,} tokens", delta_color="off")
    m[1].metric("Control documents", f"{counts.get('control_documents', 0):,}",
                f"{counts.get('control_tokens', 0):,} tokens", delta_color="off")
    m[2].metric("Excluded by the cap", f"{counts.get('excluded_by_cap', 0):,}")
    m[3].metric("Items with a near copy", f"{counts.get('items_flagged_near', 0):,}")

    st.markdown("**What if: move the floor and the cap** (counts from the stored search results, no re-embedding)")
    c1, c2 = st.columns(2)
    live_floor = c1.slider("Floor", 0.0, 1.0, float(params.get("floor", 0.75)), 0.01, key="whatif_floor")
    live_cap = c2.slider("Cap", 0.0, 1.0, float(params.get("cap", 0.95)), 0.01, key="whatif_cap")
    with w.read_ws() as ws:
        live = what_if(ws, recall_run, live_floor, max(live_cap, live_floor + 1e-6), int(params.get("k", 50)))
    m = st.columns(4)
    m[0].metric("Would be recalled", f"{live['recalled_documents']:,}")
    m[1].metric("Items with a hit", f"{live['items_with_hit']:,}")
    m[2].metric("Would be excluded (≥ cap)", f"{live['excluded_by_cap']:,}")
    m[3].metric("Candidates between floor and cap", f"{live['candidates_between']:,}")
    st.plotly_chart(w.threshold_histogram(candidates, "best_similarity", [live_floor, live_cap], color="corpus",
                                          title="Each candidate's best cosine to any benchmark item",
                                          x_label="best cosine similarity", log_y=True), key="recall_hist")

    with w.read_ws() as ws:
        per_bench = pd.DataFrame(benchmark_stats(ws, recall_run))
        per_subject = pd.DataFrame(subject_stats(ws, recall_run))
    st.markdown("**Per benchmark**")
    st.dataframe(per_bench, hide_index=True)
    if not per_subject.empty:
        per_subject["coverage"] = per_subject["items_with_hit"] / per_subject["items"]
        fig = px.bar(per_subject.sort_values(["benchmark", "coverage"]), x="coverage", y="subject",
                     color="benchmark", orientation="h", hover_data=["items", "items_with_hit", "hits_per_item",
                                                                    "median_best_similarity"],
                     title="Coverage per subject: share of items with at least one recalled document",
                     height=max(320, 18 * len(per_subject)))
        fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), xaxis_range=[0, 1])
        st.plotly_chart(fig, key="coverage")

    st.markdown(f"**Documents right at the cap ({live_cap:.2f})** beside the benchmark item each resembles; "
                "shared word runs highlighted")
    with w.read_ws() as ws:
        near = documents_at_cap(ws, recall_run, live_cap, limit=6)
    for row in near:
        verdict = "excluded" if row["similarity"] >= live_cap else "kept"
        with st.container(border=True):
            st.markdown(f"cosine **{row['similarity']:.3f}** ({verdict}) · document `{row['doc_id']}` of "
                        f"{row['corpus']} · {row['benchmark']} item {row['item_id']} ({row['subject']})")
            doc_spans, item_spans = shared_spans(row["text"][:4000], row["item_text"])
            left, right = st.columns(2)
            with left:
                w.show_html(w.highlight_spans(row["text"][:4000], doc_spans))
            with right:
                w.show_html(w.highlight_spans(row["item_text"], item_spans))
                st.caption(f"gold answer: {row['answer']}")

# --- decontamination ---------------------------------------------------------------------------------------------
st.subheader("Contamination (n-gram overlap)")
with st.form("decontam_form"):
    c1, c2, c3, c4 = st.columns(4)
    d_bench = c1.multiselect("Benchmarks", bench_names, default=bench_names, key="d_bench")
    d_corpora = c2.multiselect("Corpora to check", pool_names, default=pool_names, key="d_corpora")
    d_n = c3.number_input("n (words; characters for Chinese)", 5, 50, DECONTAM_DEFAULTS.n)
    d_mode = c4.selectbox("Mode", DECONTAM_MODES,
                          help=f"cut: remove each overlap with {DECONTAM_DEFAULTS.margin_chars} characters each side "
                               f"at export; drop a document cut into more than {DECONTAM_DEFAULTS.max_pieces} pieces")
    if st.form_submit_button("Run the contamination check", icon=":material/policy:"):
        config = DecontamConfig(benchmarks=d_bench, corpora=d_corpora, n=int(d_n), mode=d_mode)
        w.start_job(job_argv("decontam", config), "Contamination check")

if decontam is None:
    st.info("No contamination check yet.", icon=":material/info:")
else:
    run_id, d_params, checked = decontam.run_id, decontam.params, decontam.counts
    with w.read_ws() as ws:
        evidence = contamination_evidence(ws, run_id)
    st.caption(f"Run {run_id}: {checked.get('documents_checked', 0):,} documents of "
               f"{len(d_params.get('corpora') or [])} corpora against {checked.get('items_checked', 0):,} items, "
               f"{d_params.get('n')}-grams, mode {d_params.get('mode')}: "
               f"{checked.get('documents_contaminated', 0):,} contaminated, {checked.get('documents_dropped', 0):,} "
               f"dropped, {checked.get('items_flagged', 0):,} items found in training text.")
    if evidence.empty:
        st.success("No document shares an n-gram with a benchmark item.", icon=":material/check_circle:")
    else:
        st.dataframe(evidence[["doc_id", "corpus", "benchmark", "item_id", "subject", "chars", "span_text"]],
                     hide_index=True)
        choice = st.selectbox("Show the evidence of", evidence.index,
                              format_func=lambda i: f"{evidence.at[i, 'doc_id']} ({evidence.at[i, 'corpus']}) ↔ "
                                                    f"{evidence.at[i, 'benchmark']} {evidence.at[i, 'item_id']}")
        row = evidence.loc[choice]
        with w.read_ws() as ws:
            doc_text = document_text(ws, row["doc_id"]) or ""
            item_text = item_with_answer(ws, row["item_doc_id"]) or ""
        spans = [(int(r.span_start), int(r.span_end)) for r in evidence[evidence.doc_id == row["doc_id"]].itertuples()]
        left, right = st.columns(2)
        with left:
            st.caption("training document")
            w.show_html(w.highlight_spans(doc_text, spans))
        with right:
            st.caption("benchmark item")
            _, item_spans = shared_spans(doc_text, item_text, min_tokens=int(d_params.get("n", 13)))
            w.show_html(w.highlight_spans(item_text, item_spans))
