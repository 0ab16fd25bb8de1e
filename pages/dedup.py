"""Deduplication: run exact, MinHash or semantic dedup as a background job; review the stored pair similarities
with a movable threshold (counts from stored pairs, nothing recomputed), the pairs either side of it with their
differences highlighted, and the clusters, largest first."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.dedup import (
    DEFAULT_THRESHOLDS,
    POLICIES,
    POLICY_ALIASES,
    SCOPES,
    DedupConfig,
    boundary_pairs,
    candidate_probability,
    cluster_members,
    clusters,
    normalisation_preview,
    optimal_bands_rows,
    step_name,
    stored_pairs,
    what_if,
)
from core.embed import EmbedConfig
from core.embed import describe_path as describe_embed_path
from core.steps import job_argv
from core.text import NormalisationConfig
from core.workspace import ROLES, active_run
from studio import widgets as w

METHOD_LABELS = {"exact": "Exact (normalised text)", "minhash": "Near-duplicates (MinHash)",
                 "semantic": "Semantic (embeddings)"}
SCOPE_LABELS = {"all": "across all corpora and roles", "role": "within each role", "corpus": "within each corpus"}
POLICY_LABELS = {"first": "first ingested", "longest": "longest", "best_quality": "best quality score"}
DEFAULTS = DedupConfig()  # the widgets' initial values, where no run has set them

st.title(":material/content_copy: Deduplication")
st.caption("Duplicates inflate some content, waste compute and leak evaluation data. Each method finds pairs "
           "with a similarity, clusters the pairs at or above the threshold, keeps one document per cluster and "
           "drops the others; every drop names the method, the kept document and the similarity.")
w.require_workspace()
w.job_panel()

with w.read_ws() as ws:
    corpora = ws.corpora()
    runs = {m: active_run(ws, step_name(m)) for m in METHOD_LABELS}

method = st.segmented_control("Method", list(METHOD_LABELS), format_func=METHOD_LABELS.get, default="minhash",
                              key="dedup_method") or "minhash"
run = runs[method]
previous = run.params if run else {}


# --- parameters and the run button -----------------------------------------------------------------------------
def s_curve(threshold: float, num_perm: int, bands: int, rows: int) -> go.Figure:
    grid = np.linspace(0, 1, 201)
    fig = go.Figure(go.Scatter(x=grid, y=candidate_probability(grid, bands, rows), mode="lines",
                               name=f"{bands} bands × {rows} rows"))
    fig.add_vline(x=threshold, line_dash="dash", line_color="#d62728", annotation_text=f"threshold {threshold:g}")
    fig.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="true Jaccard similarity",
                      yaxis_title="P(candidate pair)", title=f"LSH S-curve, {num_perm} permutations")
    return fig


with st.expander("Run " + METHOD_LABELS[method], expanded=run is None):
    c1, c2, c3 = st.columns(3)
    scope = c1.selectbox("Duplicates may be found", SCOPES, format_func=SCOPE_LABELS.get,
                         index=SCOPES.index(previous.get("scope", "all")), key=f"dedup_scope_{method}")
    previous_policy = previous.get("policy", "first")
    policy = c2.selectbox("Keep per cluster", POLICIES, format_func=POLICY_LABELS.get,
                          index=POLICIES.index(POLICY_ALIASES.get(previous_policy, previous_policy)),
                          key=f"dedup_policy_{method}",
                          help="'best quality score' needs the quality step to have run")
    roles = c3.multiselect("Roles", ROLES, default=previous.get("roles", list(DEFAULTS.roles)),
                           key=f"dedup_roles_{method}")
    names = [c["name"] for c in corpora if c["role"] in roles]
    chosen = st.multiselect("Only these corpora (empty: all of the roles)", names,
                            default=[c for c in previous.get("corpora", []) if c in names],
                            key=f"dedup_corpora_{method}")
    config = DedupConfig(method=method, scope=scope, policy=policy, roles=roles, corpora=chosen)

    if method == "exact":
        norm = previous.get("normalisation", {})
        k1, k2, k3, k4 = st.columns(4)
        nfkc = k1.checkbox("Unicode NFKC", norm.get("unicode_nfkc", True), key="dedup_nfkc")
        fold = k2.checkbox("Fold case", norm.get("casefold", True), key="dedup_case")
        punct = k3.checkbox("Remove punctuation", norm.get("strip_punctuation", True), key="dedup_punct")
        space = k4.checkbox("Collapse whitespace", norm.get("fold_whitespace", True), key="dedup_space")
        cfg = NormalisationConfig(unicode_nfkc=nfkc, casefold=fold, strip_punctuation=punct, fold_whitespace=space)
        sample = st.text_input("Try the normalisation", "Fever: ＴＲＥＡＴ the cause,  not   the symptom!",
                               key="dedup_norm_sample")
        st.markdown(f"Hashed as: `{normalisation_preview(sample, cfg)}` ({cfg.describe()})")
        config.normalisation = cfg
    elif method == "minhash":
        m1, m2, m3 = st.columns(3)
        threshold = m1.slider("Jaccard threshold", 0.5, 0.99,
                              float(previous.get("threshold", DEFAULT_THRESHOLDS["minhash"])), 0.01,
                              key="dedup_mh_threshold")
        num_perm = m2.select_slider("Permutations", [64, 128, 256], value=int(previous.get("num_perm", DEFAULTS.num_perm)),
                                    key="dedup_mh_perm")
        ngram = m3.number_input("Shingle size (words; characters for Chinese/Japanese)", 1, 20,
                                int(previous.get("ngram", DEFAULTS.ngram)), key="dedup_mh_ngram")
        bands, rows = optimal_bands_rows(round(threshold, 2), num_perm)
        st.plotly_chart(s_curve(threshold, num_perm, bands, rows), key="dedup_s_curve")
        st.caption(f"{bands} bands × {rows} rows, solved to balance missed pairs above the threshold against "
                   f"needless candidates below it. A pair at Jaccard {threshold:g} becomes a candidate with "
                   f"probability {float(candidate_probability(threshold, bands, rows)):.2f}; every candidate is "
                   "then verified with the signatures' Jaccard estimate, so a band collision alone never drops a "
                   "document.")
        config.threshold, config.num_perm, config.ngram = threshold, num_perm, int(ngram)
    else:
        s1, s2, s3 = st.columns(3)
        threshold = s1.slider("Cosine threshold", 0.80, 0.999,
                              float(previous.get("threshold", DEFAULT_THRESHOLDS["semantic"])), 0.005,
                              key="dedup_sem_threshold")
        model = s2.text_input("Model (sentence-transformers id or path)", previous.get("embed_model", DEFAULTS.embed_model),
                              key="dedup_sem_model")
        max_tokens = s3.number_input("Truncate at tokens", 16, 512, int(previous.get("max_tokens", DEFAULTS.max_tokens)),
                                     key="dedup_sem_tokens")
        st.caption("Embeddings are cached per model, text and inference path: only documents never embedded are "
                   "computed. Inference path on this CPU: "
                   f"{describe_embed_path(EmbedConfig(model=model, max_tokens=int(max_tokens)))}.")
        config.threshold, config.embed_model, config.max_tokens = threshold, model, int(max_tokens)
    if st.button(f"Run {method} dedup", type="primary", icon=":material/play_arrow:", key="dedup_run"):
        w.start_job(job_argv("dedup", config), f"{METHOD_LABELS[method]} dedup")

if run is None:
    st.info(f"No {METHOD_LABELS[method].lower()} run yet: set the parameters above and run it.",
            icon=":material/info:")
    st.stop()

# --- what the run did -------------------------------------------------------------------------------------------
counts = run.counts
params = run.params
st.subheader("Result")
a, b, c, d = st.columns(4)
a.metric("Documents examined", f"{counts.get('documents', 0):,}")
b.metric("Dropped", f"{counts.get('dropped', 0):,}")
c.metric("Clusters", f"{counts.get('clusters', 0):,}")
d.metric("Threshold", f"{params.get('threshold', 1.0):g}")
role_of = {x["name"]: x["role"] for x in corpora}
by_corpus = counts.get("dropped_by_corpus", {})
if by_corpus:
    table = pd.DataFrame([{"corpus": k, "role": role_of.get(k, ""), "dropped": v} for k, v in by_corpus.items()])
    st.dataframe(table.sort_values("dropped", ascending=False), hide_index=True)
kept_policy = params.get("policy", "first")
st.caption(f"Run `{run.run_id}`: {SCOPE_LABELS.get(params.get('scope', 'all'))}, keeping the "
           f"{POLICY_LABELS.get(POLICY_ALIASES.get(kept_policy, kept_policy))} document of each cluster.")

pairs = None
if method != "exact":  # exact duplicates have no threshold to move: their pairs (one per copy) are not read
    pairs = w.cached_read(stored_pairs, run.run_id).to_pandas()

# --- the movable threshold --------------------------------------------------------------------------------------
if pairs is not None and len(pairs):
    st.subheader("Similarity of the stored pairs")
    floor = float(params.get("floor", pairs["similarity"].min()))
    applied = float(params.get("threshold", DEFAULT_THRESHOLDS[method]))
    moved = st.slider("Move the threshold", floor, 1.0, applied, 0.005, key=f"dedup_moved_{method}",
                      help="Counts below come from the pairs stored by the run (down to the floor); nothing is "
                           "recomputed. Apply the new value with the button to record it.")
    would = w.cached_read(what_if, run.run_id, moved)
    histogram = w.threshold_histogram(pairs, "similarity", [moved], title="Pairs by similarity",
                                      x_label="Jaccard estimate" if method == "minhash" else "cosine", bins=50)
    histogram.update_layout(yaxis_title="pairs")
    st.plotly_chart(histogram, key="dedup_hist")
    st.markdown(f"At **{moved:.3f}**: **{would:,}** documents would be dropped "
                f"({would - counts.get('dropped', 0):+,} against the applied {applied:g}); "
                f"{int((pairs['similarity'] >= moved).sum()):,} of {len(pairs):,} stored pairs are at or above it.")
    if method == "minhash":
        st.caption(f"Pairs below the applied threshold are stored down to {floor:g}, but LSH surfaces them only "
                   "with the probability the S-curve gives: the count there is a lower bound. Apply a lower "
                   "threshold to search them fully.")
    if abs(moved - applied) > 1e-9 and st.button(f"Apply {moved:.3f}", icon=":material/done_all:",
                                                 key="dedup_apply"):
        # The applied run again at the moved threshold (its LSH shape solved anew for it).
        again = DedupConfig(method=method, threshold=moved, **{
            k: params[k] for k in ("scope", "policy", "roles", "corpora", "num_perm", "ngram", "embed_model",
                                   "max_tokens") if k in params})
        w.start_job(job_argv("dedup", again), f"{METHOD_LABELS[method]} dedup at {moved:g}")

    # --- pairs either side of the line --------------------------------------------------------------------------
    st.subheader("Pairs at the threshold")
    st.caption("Red: only in the first text; green: only in the second.")
    edge = w.cached_read(boundary_pairs, run.run_id, moved, 3)
    for side, title in (("above", "Just above (dropped)"), ("below", "Just below (kept)")):
        st.markdown(f"**{title}**")
        if not edge[side]:
            st.caption("no stored pair on this side")
        for pair in edge[side]:
            html_a, html_b = w.diff_html(pair["text_a"][:3000], pair["text_b"][:3000])
            with st.container(border=True):
                st.markdown(f"similarity **{pair['similarity']:.3f}** · `{pair['doc_a']}` ({pair['corpus_a']}) "
                            f"vs `{pair['doc_b']}` ({pair['corpus_b']})")
                left, right = st.columns(2)
                with left:
                    w.show_html(html_a)
                with right:
                    w.show_html(html_b)

# --- clusters -------------------------------------------------------------------------------------------------------
st.subheader("Clusters, largest first")
biggest = w.cached_read(clusters, run.run_id, 200)
if not biggest:
    st.caption("No cluster: nothing was dropped.")
    st.stop()
frame = pd.DataFrame([{"kept document": x["kept_doc"], "size": x["size"], "lowest similarity": x["min_similarity"],
                       "corpora": x["corpora"], "kept text": x["kept_text"][:120]} for x in biggest])
st.dataframe(frame, hide_index=True, height=240)
pick = st.selectbox("Open a cluster", [x["kept_doc"] for x in biggest],
                    format_func=lambda k: f"{k} ({next(x['size'] for x in biggest if x['kept_doc'] == k)} documents)",
                    key=f"dedup_cluster_{method}")
members = w.cached_read(cluster_members, run.run_id, pick)
kept_text = next((m["text"] for m in members if m["is_kept"]), "")
for member in members[:20]:
    label = "kept" if member["is_kept"] else f"dropped, similarity to kept {member['similarity_to_kept']:.3f}"
    with st.expander(f"{member['doc_id']} ({member['corpus']}): {label}", expanded=member["is_kept"]):
        if member["is_kept"]:
            st.text(member["text"][:3000])
        else:
            _, html_b = w.diff_html(kept_text[:3000], member["text"][:3000])
            w.show_html(html_b)
if len(members) > 20:
    st.caption(f"{len(members) - 20:,} more members not shown")
