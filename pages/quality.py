"""Quality: heuristic signals (Gopher, C4, FineWeb), perplexity and the composite score, per corpus, with a
movable threshold per rule, kept/dropped counts from stored values, documents either side of the threshold,
and applying the filter as a background job."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from core.corpus import HISTOGRAM_SAMPLE_ROWS
from core.perplexity import describe_path as describe_perplexity_path
from core.quality import (
    DEFAULT_PRESETS,
    DEFAULT_ROLES,
    FILTER_STEP,
    PARTS,
    PRESETS,
    RULES,
    QualityFilterConfig,
    QualityScoreConfig,
    QualityStepConfig,
    Rule,
    composite_summary,
    corpus_summary,
    documents_near_threshold,
    filter_preview,
    scored_documents,
    set_weights,
    signal_distribution,
)
from core.quality_signals import SIGNAL_BY_NAME
from core.steps import job_argv
from core.workspace import ROLES, active_run
from studio import widgets as w

st.title(":material/verified: Quality")
st.caption("Heuristic rules (Gopher quality and repetition, C4, FineWeb, flagged words), language-model "
           "perplexity and a composite score. Every raw value is stored per document, so moving a threshold "
           "here only re-reads stored numbers; applying writes one decision per dropped document.")
w.require_workspace()
w.job_panel()

OVERRIDES = "quality_overrides"

with w.read_ws() as ws:
    scored = scored_documents(ws)
    applied_run = active_run(ws, FILTER_STEP)
applied = applied_run.params if applied_run else None

# the thresholds the applied filter moved, one entry per language group
applied_thresholds: dict[str, float] = {}
for name, value in ((applied or {}).get("thresholds") or {}).items():
    base, _, only = name.partition("@")
    for group in ([only] if only else ["latin", "zh"]):
        applied_thresholds[f"{base}@{group}"] = float(value)
if OVERRIDES not in st.session_state:
    st.session_state[OVERRIDES] = dict(applied_thresholds)  # start from the filter as applied now
applied_presets = [p for p in (applied or {}).get("rules", []) if p in PRESETS]

# --- scoring -----------------------------------------------------------------------------------------------------
with st.expander("Compute signals and perplexity", expanded=not scored):
    c1, c2, c3 = st.columns(3)
    score_roles = c1.multiselect("Roles", list(ROLES), default=list(DEFAULT_ROLES), key="quality_score_roles")
    with_ppl = c2.checkbox("Also measure perplexity (SmolLM2-135M)", value=False, key="quality_with_ppl")
    sample = c2.number_input("Perplexity sample per corpus", 0, 100_000, 32, step=8, key="quality_ppl_sample",
                             help="About 500 tokens/s on 2 CPU cores: 32 documents of 256 tokens per corpus take "
                                  "about 15 s per corpus. 0 measures every document.")
    max_tokens = c3.number_input("Truncate to tokens", 16, 4096, 256, step=16, key="quality_max_tokens")
    if with_ppl:
        st.caption(f"Perplexity inference path on this CPU: {describe_perplexity_path()}.")
    if st.button("Score documents", type="primary" if not scored else "secondary", key="quality_score_button"):
        scoring = (QualityScoreConfig(roles=score_roles or list(DEFAULT_ROLES), perplexity=True,
                                      max_tokens=int(max_tokens), sample_per_corpus=int(sample) or None)
                   if with_ppl else QualityScoreConfig(roles=score_roles or list(DEFAULT_ROLES)))
        w.start_job(job_argv("quality", QualityStepConfig(score=scoring)),
                    "Quality scoring" + (" with perplexity" if with_ppl else ""))

if not scored:
    st.info("No document has quality signals yet: score the documents above.", icon=":material/info:")
    st.stop()

# --- rules and the threshold being moved ---------------------------------------------------------------------------
c1, c2 = st.columns([3, 2])
presets = c1.multiselect("Rule presets applied", list(PRESETS), default=applied_presets or list(DEFAULT_PRESETS),
                         key="quality_presets")
roles = c2.multiselect("Filter corpora of role", list(ROLES), default=list(DEFAULT_ROLES), key="quality_roles")
chosen_rules = [r for r in RULES if r.preset in presets]
if not chosen_rules:
    st.warning("Choose at least one preset.", icon=":material/warning:")
    st.stop()

c1, c2, c3 = st.columns([3, 1, 1])


def rule_label(r: Rule) -> str:
    """The rule with the thresholds that hold now: the applied filter's where it moved them (saying so and what
    the default is), else the defaults."""
    def both(latin: float | None, zh: float | None) -> str:
        return f"{latin:g}" + (f", Chinese {zh:g}" if zh != latin else "")

    now = [applied_thresholds.get(f"{r.name}@{g}", r.threshold(g)) for g in ("latin", "zh")]
    if now == [r.latin, r.zh]:
        return f"{r.preset} / {r.name} (keep if {r.keep_if} {both(r.latin, r.zh)})"
    return f"{r.preset} / {r.name} (keep if {r.keep_if} {both(*now)} as applied; default {both(r.latin, r.zh)})"


rule = c1.selectbox("Rule", chosen_rules, key="quality_rule", format_func=rule_label)
group = c2.radio("Language group", ["latin", "zh"], horizontal=True, key="quality_group",
                 format_func=lambda g: "Latin script" if g == "latin" else "Chinese")
keep_share = c3.number_input("Random keep share", 0.0, 0.5, 0.05, step=0.01, key="quality_keep_share",
                             help="Share of would-be drops kept anyway (recorded as random_keep): a slightly "
                                  "noisy corpus trains more robust models.")
signal = SIGNAL_BY_NAME.get(rule.signal)
st.caption(signal.description if signal else
           ("per-token perplexity of the first tokens under the language model" if rule.signal == "perplexity"
            else "weighted mean of relevance, fluency, informativeness and safety (see below)"))

# every stored value in scope, sorted per corpus: a sample for the slider's range and the histogram, and the
# exact per-corpus counts below at whatever threshold the slider holds
distribution = w.cached_read(signal_distribution, rule.signal, roles or list(DEFAULT_ROLES), (), group)
values = distribution.sample(HISTOGRAM_SAMPLE_ROWS)
key = f"{rule.name}@{group}"
default_thr = st.session_state[OVERRIDES].get(key, rule.threshold(group))
if values.empty:
    st.info(f"No stored {rule.signal} value for {group} documents in scope"
            + (" (measure perplexity above)" if rule.signal == "perplexity" else "") + ".", icon=":material/info:")
    threshold = default_thr
else:
    log_scale = rule.signal in ("word_count", "perplexity", "c4_sentence_count")
    lo, hi = float(values["value"].quantile(0.001)), float(values["value"].quantile(0.999))
    lo, hi = min(lo, default_thr), max(hi, default_thr)
    if hi <= lo:
        hi = lo + 1.0
    step = 1.0 if rule.signal in ("word_count", "stop_word_count", "c4_sentence_count") else (hi - lo) / 200
    threshold = st.slider(f"Threshold for {rule.name} ({group})", lo, hi, float(default_thr), step=step,
                          key=f"quality_thr_{key}")
    if threshold != rule.threshold(group):
        st.session_state[OVERRIDES][key] = threshold
    else:
        st.session_state[OVERRIDES].pop(key, None)
    clipped = values[(values["value"] >= lo) & (values["value"] <= hi)]
    st.plotly_chart(w.threshold_histogram(clipped, "value", threshold, color="corpus", x_label=rule.signal,
                                          log_x=log_scale and lo > 0, bins=80,
                                          title=f"{rule.signal} per corpus ({group}); keep if {rule.keep_if} "
                                                f"{threshold:g}"))
    by_corpus = distribution.counts(rule.keep_if, threshold)
    by_corpus.columns = ["corpus", "documents", "kept by this rule"]
    by_corpus["dropped by this rule"] = by_corpus["documents"] - by_corpus["kept by this rule"]
    st.dataframe(by_corpus, hide_index=True)

overrides = dict(st.session_state[OVERRIDES])
if overrides:
    st.caption("Moved thresholds: " + ", ".join(f"`{k}` = {v:g}" for k, v in overrides.items()))
    if st.button("Reset thresholds", key="quality_reset"):
        st.session_state[OVERRIDES] = {}
        for k in list(st.session_state):
            if k.startswith("quality_thr_"):
                del st.session_state[k]
        st.rerun()

# --- live counts with every chosen rule -----------------------------------------------------------------------------
cfg = QualityFilterConfig(rules=presets, thresholds=overrides, roles=roles or list(DEFAULT_ROLES),
                          keep_share=keep_share)
preview = w.cached_read(filter_preview, cfg)
st.subheader("All chosen rules together")
m1, m2, m3, m4 = st.columns(4)
m1.metric("Documents", f"{preview.documents:,}")
m2.metric("Kept", f"{preview.documents - preview.dropped:,}")
m3.metric("Dropped", f"{preview.dropped:,}")
m4.metric("Kept at random", f"{preview.randomly_kept:,}", f"{keep_share:.0%} of would-be drops", delta_color="off")
st.dataframe(pd.DataFrame(preview.corpora)[["corpus", "documents", "scored", "kept", "dropped", "randomly_kept"]],
             hide_index=True)
if preview.by_rule:
    st.caption("Drops by first failed rule: " + ", ".join(f"{k} {v:,}" for k, v in preview.by_rule.items()))
if applied:
    st.caption(f"Applied now: presets {', '.join(applied.get('rules', []))}; moved thresholds "
               f"{json.dumps(applied.get('thresholds', {}))}; keep share {applied.get('keep_share')}.")

# the filter's scope is the command line's --role (the scoring's): one scope for both
apply_config = QualityStepConfig(filter=cfg, score=QualityScoreConfig(roles=list(cfg.roles)))
apply_argv = [*job_argv("quality", apply_config), "--stored-only", "--apply"]
w.apply_filter_button(preview.dropped, apply_argv, f"Quality filter ({', '.join(presets)})", "quality filter",
                      key="quality_apply_button")

# --- documents either side of the threshold --------------------------------------------------------------------------
st.subheader("Documents either side of the threshold")
in_scope = sorted(distribution.values)
corpus = st.selectbox("Corpus", in_scope, key="quality_near_corpus")
if corpus and not values.empty:
    near = w.cached_read(documents_near_threshold, rule.signal, threshold, rule.keep_if, corpus, group, 3)
    left, right = st.columns(2)
    for column, side, title in ((left, "dropped", "Just failing: dropped"), (right, "kept", "Just passing: kept")):
        with column:
            st.markdown(f"**{title}**")
            if not near[side]:
                st.caption("no document of this corpus on this side")
            for doc in near[side]:
                st.markdown(f"`{doc['doc_id']}` {rule.signal} = **{doc['value']:.4g}**")
                w.show_html(w.highlight_spans(doc["text"][:1500], []))

# --- composite --------------------------------------------------------------------------------------------------------
st.subheader("Composite score")
summary = w.cached_read(composite_summary)
per_corpus = pd.DataFrame(w.cached_read(corpus_summary, roles or list(DEFAULT_ROLES)))
st.caption("relevance: share of same-language documents with lower terminology density (0 without terms); "
           "fluency: 1 - percentile of perplexity within the language group; informativeness: 0.5 length "
           "(saturating at 200 words) + 0.25 lexical diversity + 0.25 compressibility; safety: 1 - flagged-word "
           "ratio / 0.045. Missing parts are left out and the weights renormalised per document.")
for note in summary["notes"]:
    st.info(note, icon=":material/info:")
cols = st.columns(len(PARTS) + 1)
weights = {part: cols[i].number_input(part, 0.0, 1.0, float(summary["weights"][part]), step=0.05,
                                      key=f"quality_weight_{part}") for i, part in enumerate(PARTS)}
if weights != summary["weights"] and cols[-1].button("Save weights", key="quality_save_weights"):
    if sum(weights.values()) <= 0:
        st.error("At least one weight must be above 0.", icon=":material/error:")
    else:
        with w.write_ws() as ws:
            set_weights(ws, weights)
        st.rerun()
st.dataframe(per_corpus, hide_index=True,
             column_config={"median_perplexity": st.column_config.NumberColumn(format="%.1f"),
                            "median_composite": st.column_config.NumberColumn(format="%.3f")})
