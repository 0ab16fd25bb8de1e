"""Evaluate: lm-evaluation-harness scores of a model (and a baseline) on the workspace's benchmarks, letter and
cloze formulations, perplexity on the mix's validation sets; runs as a background job, cached per model."""

from __future__ import annotations

import streamlit as st

from core.benchmarks import benchmarks
from core.evaluate import EvalConfig, item_table, perplexity_table, score_table
from core.steps import config_argv
from studio import widgets as w

st.title(":material/fact_check: Evaluate")
st.caption("Scores are lm-evaluation-harness's own (its `hf` model on tasks generated from the benchmark tables): "
           "**letter** is MMLU's prompt scored on ' A'..' D' (acc), **cloze** scores each answer text (acc, acc_norm). "
           "Every score has a 95 % bootstrap interval; unchanged model, items and settings are never scored twice.")
path = w.require_workspace()
w.job_panel()

with w.read_ws() as ws:
    registered = benchmarks(ws)
    scores = score_table(ws)
    perplexity = perplexity_table(ws)

if not registered:
    st.info("No benchmarks yet: import one on the Recall page or with `studio bench-import`.", icon=":material/info:")
    st.stop()

with st.form("evaluate"):
    c1, c2 = st.columns(2)
    model = c1.text_input("Model", value="bundled:smollm2",
                          help="bundled:smollm2, a model or adapter folder, a job's model folder, or a local hub id")
    baseline = c2.text_input("Baseline (optional)", value="",
                             help="Compared with the model: domain gain, retention, McNemar")
    chosen = st.multiselect("Benchmarks", [b["corpus"] for b in registered],
                            default=[b["corpus"] for b in registered],
                            format_func=lambda n: f"{n} ({next(b['kind'] for b in registered if b['corpus'] == n)})")
    c3, c4, c5, c6 = st.columns(4)
    formulation = c3.radio("Formulation", ["both", "letter", "cloze"], horizontal=True)
    shots = c4.number_input("Shots", 0, 5, 0, help="few-shot exemplars per subject (the MMLU dev set)")
    limit = c5.number_input("Items per benchmark (0 = all)", 0, 100_000, 100, step=50,
                            help="a seeded sample, the same for every model")
    with_ppl = c6.checkbox("Perplexity", value=True, help="on the latest mix's validation sets")
    submitted = st.form_submit_button("Evaluate", type="primary", icon=":material/play_arrow:")
if submitted:
    config = EvalConfig(model=model.strip(), baseline=baseline.strip() or None, benchmarks=list(chosen) or None,
                        formulation=formulation, shots=int(shots), limit=int(limit) or None, perplexity=with_ppl)
    argv = ["eval", *config_argv(config), "--items-out", str(path / "artifacts" / "eval" / "items.jsonl")]
    w.start_job(argv, f"Evaluate {model.strip()}")
st.caption("Command line: `studio eval WORKSPACE --model PATH_OR_ID [--baseline PATH_OR_ID] [--benchmarks ...] "
           "[--formulation letter|cloze|both] [--shots K] [--limit N] [--items-out FILE]`")

st.subheader("Scores")
if scores.empty:
    st.info("Nothing evaluated yet.", icon=":material/info:")
else:
    shown = scores.drop(columns=["cache_key"])
    st.dataframe(shown, hide_index=True, width="stretch",
                 column_config={"acc": st.column_config.NumberColumn(format="percent"),
                                "acc_norm": st.column_config.NumberColumn(format="percent")})
    labels = {r.cache_key: f"{r.model} · {r.benchmark} · {r.formulation} · {r.shots}-shot"
              for r in scores.itertuples()}
    key = st.selectbox("Items of", list(labels), format_func=labels.get)
    with w.read_ws() as ws:
        items = item_table(ws, key)
    st.dataframe(items.drop(columns=["context"]), hide_index=True, width="stretch", height=300)
    st.download_button("Download these items (JSONL)", items.to_json(orient="records", lines=True, force_ascii=False),
                       file_name="items.jsonl", icon=":material/download:")

st.subheader("Perplexity on the validation sets")
if perplexity.empty:
    st.info("No perplexity yet (it needs a mix with validation sets).", icon=":material/info:")
else:
    st.dataframe(perplexity, hide_index=True, width="stretch")
