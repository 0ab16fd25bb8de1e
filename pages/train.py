"""Train: a config form with presets (the TOML it writes is shown and editable), a dry-run estimate, launch as a
job that outlives the browser, live curves (loss, domain and general validation perplexity, learning rate,
tokens/s), progress with ETA, the log tail, Stop and Resume, past jobs and two jobs' curves overlaid."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.config import data_root
from core.jobs import Job, JobError, get_job, list_jobs, resume_job, stop_job
from core.train.config import (
    DISTRIBUTED_MODES,
    METHODS,
    PRECISIONS,
    PRESETS,
    SCHEDULES,
    STAGES,
    ConfigError,
    TrainConfig,
    config_to_toml,
    default_eval_tokens,
    parse_config,
    preset_config,
)
from core.train.launch import (
    JOB_KIND,
    available_mixes,
    estimate,
    eta_text,
    job_summary,
    launch_training,
    metrics_frame,
    model_card,
)
from core.workspace import WorkspaceError
from studio import widgets as w

OTHER = "another export folder…"
STATUS_ICONS = {"running": ":material/progress_activity:", "stopping": ":material/pending:",
                "queued": ":material/schedule:", "finished": ":material/check_circle:",
                "stopped": ":material/pause_circle:", "failed": ":material/error:"}

st.title(":material/model_training: Train")
st.caption("Continued pretraining, SFT or DPO on an exported mix, run by `accelerate launch` as a job of the "
           "workspace: it keeps running when this tab closes or the app restarts, and this page re-attaches to it. "
           "Stop saves a checkpoint and a usable model; Resume continues from it with the same data order, "
           "optimizer and schedule.")
path = w.require_workspace()

with w.read_ws() as ws:
    mixes = available_mixes(ws)


def look(job_id: str | None = None) -> list[Job]:
    """Jobs reconciled with their processes (recorded when the workspace is free, else shown as found)."""
    try:
        return [get_job(path, job_id)] if job_id else list_jobs(path, JOB_KIND)
    except WorkspaceError:
        with w.read_ws() as busy:
            return [get_job(busy, job_id)] if job_id else list_jobs(busy, JOB_KIND)


jobs = look()


# --- charts ---------------------------------------------------------------------------------------------------
def curves(frames: dict[str, pd.DataFrame]) -> list[tuple[str, go.Figure]]:
    """Loss, validation perplexity, learning rate and tokens/s, one trace per job (and per validation set)."""
    panels = [("Training loss", [("loss", "")]),
              ("Validation perplexity", [("domain_val_ppl", "domain"), ("general_val_ppl", "general")]),
              ("Learning rate", [("learning_rate", "")]), ("Tokens/s", [("tokens_per_s", "")])]
    out = []
    for title, series in panels:
        fig = go.Figure()
        for name, frame in frames.items():
            for column, label in series:
                if column not in frame:
                    continue
                part = frame[["step", column]].dropna()
                if part.empty:
                    continue
                trace_name = " ".join(x for x in (name if len(frames) > 1 else "", label) if x) or column
                fig.add_trace(go.Scatter(x=part["step"], y=part[column], mode="lines+markers", name=trace_name,
                                         marker={"size": 4}))
        fig.update_layout(title=title, height=260, margin={"l": 10, "r": 10, "t": 40, "b": 10}, xaxis_title="step",
                          showlegend=len(fig.data) > 1, legend={"orientation": "h", "y": -0.3})
        # Steps are whole numbers: no 1.5 ticks on a short run, no negative axis when one point is logged.
        last_step = max((max(trace.x) for trace in fig.data if len(trace.x)), default=0)
        fig.update_xaxes(rangemode="nonnegative", tickformat="d", **({"dtick": 1} if last_step <= 10 else {}))
        if title == "Validation perplexity":
            fig.update_yaxes(type="log")
        out.append((title, fig))
    return out


def show_curves(frames: dict[str, pd.DataFrame], key: str) -> None:
    if all(f.empty for f in frames.values()):
        st.caption("No step logged yet.")
        return
    figures = curves(frames)
    for row in (figures[:2], figures[2:]):
        columns = st.columns(2)
        for column, (title, fig) in zip(columns, row, strict=True):
            column.plotly_chart(fig, key=f"{key}_{title}", width="stretch")


def act(action: Callable[[Path, str], Job], job_id: str, scope: str) -> None:
    """Stop or resume a job from a button; say why when it cannot, else redraw."""
    try:
        action(path, job_id)
    except (JobError, WorkspaceError) as exc:
        st.error(str(exc))
    else:
        st.rerun(scope=scope)


def job_panel(job_id: str) -> None:
    """One job, live while it runs: progress with ETA, curves, log tail, Stop; Resume once stopped or failed."""
    job = look(job_id)[0]

    @st.fragment(run_every=2.0 if job.active else None)
    def panel() -> None:
        current = look(job_id)[0]
        progress = current.progress()
        with st.container(border=True):
            head, buttons = st.columns([4, 1])
            head.markdown(f"{STATUS_ICONS.get(current.status, '')} **{current.label}** · `{current.job_id}` · "
                          f"**{current.status}**")
            if current.active:
                if buttons.button("Stop", icon=":material/stop_circle:", key=f"stop_{job_id}",
                                  disabled=current.status == "stopping",
                                  help="Saves a checkpoint and a usable model at the end of the current step"):
                    act(stop_job, job_id, "fragment")
                fraction = float(progress.get("fraction", -1.0))
                eta = progress.get("eta_s")
                st.progress(min(max(fraction, 0.0), 1.0),
                            text=f"{progress.get('message', 'starting')}"
                                 + (f" · ETA {eta_text(eta)}" if isinstance(eta, int | float) else ""))
            elif current.status in ("stopped", "failed") and buttons.button(
                    "Resume", icon=":material/play_circle:", key=f"resume_{job_id}",
                    help="Continue from the last checkpoint"):
                act(resume_job, job_id, "app")
            card = model_card(current)
            if current.status == "failed" and current.error:
                st.error(current.error.splitlines()[0], icon=":material/error:")
            elif card is not None:
                note = ("complete" if card.get("complete") else
                        f"from the checkpoint at step {card.get('step')}: usable, and resumable")
                st.caption(f"Model: `{current.output_dir}/model` ({note})")
            show_curves({current.job_id: metrics_frame(current)}, key=f"live_{job_id}")
            with st.expander("Log tail", expanded=current.status == "failed"):
                st.code(current.log_tail(40) or "(no output yet)", language=None)
            with st.expander("Config"):
                st.code(current.config, language="toml")
        if job.active and not current.active:
            st.rerun(scope="app")  # it ended while watched: redraw the page with its final figures

    panel()


# --- running and recent jobs ------------------------------------------------------------------------------------
active = [j for j in jobs if j.active]
if active:
    st.subheader("Running")
    for job in active:
        job_panel(job.job_id)

# --- the form -----------------------------------------------------------------------------------------------------
st.subheader("New training job")


def form_config() -> TrainConfig:
    c1, c2, c3 = st.columns(3)
    preset = c1.selectbox("Preset", list(PRESETS), key="train_preset",
                          help="From common practice: CPT (lr 2e-5, warmup 0.1, cosine, 1 epoch, weight decay "
                               "0.01, clip 1.0), conservative post-pretraining (lr 1e-5, warmup 0.03, weight decay "
                               "0.1), SFT (lr 2e-5, 3 epochs), DPO (lr 5e-7, beta 0.1).")
    base = preset_config(preset)
    stage = c2.selectbox("Stage", STAGES, index=STAGES.index(base.stage), key=f"train_stage_{preset}")
    method = c3.selectbox("Method", METHODS, key="train_method",
                          help="full fine-tuning, LoRA adapters, or freezing the bottom blocks (a forgetting guard)")
    m1, m2 = st.columns(2)
    model = m1.text_input("Model", "bundled:smollm2", key="train_model",
                          help="bundled:smollm2 (SmolLM2-135M), a Hugging Face id or a local folder")
    names = [m["name"] for m in mixes] + [OTHER]
    mix_choice = m2.selectbox("Mix", names, key="train_mix",
                              help="An exported mix of this workspace (its training text and its domain and "
                                   "general validation sets)")
    mix = (st.text_input("Export folder", key="train_mix_folder", placeholder="/path/to/export (with manifest.json)")
           if mix_choice == OTHER else mix_choice)
    data = ""
    if stage in ("sft", "dpo"):
        default = (str(data_root() / "llamafactory" / "pref_en_general_dpo_demo.json") if stage == "dpo" else "")
        data = st.text_input("Preference file" if stage == "dpo" else "Instruction file (empty: the mix's export)",
                             default, key=f"train_data_{stage}",
                             help="DPO: sharegpt-style conversations + chosen + rejected; SFT: alpaca or sharegpt")
    r1, r2, r3, r4 = st.columns(4)
    learning_rate = r1.number_input("Learning rate", 1e-8, 1.0, base.learning_rate, format="%.1e",
                                    key=f"train_lr_{preset}")
    max_steps = r2.number_input("Max steps (0: epochs)", 0, 10_000_000, 0, key="train_max_steps")
    epochs = r3.number_input("Epochs", 0.0, 100.0, base.epochs, 0.5, key=f"train_epochs_{preset}")
    block_size = r4.number_input("Block size (tokens)", 8, 131_072, 512, key="train_block")
    r5, r6, r7, r8 = st.columns(4)
    batch_size = r5.number_input("Batch size (per device)", 1, 4096, 4, key="train_batch")
    grad_accum = r6.number_input("Gradient accumulation", 1, 4096, 1, key="train_accum")
    eval_steps = r7.number_input("Evaluate every (steps)", 1, 1_000_000, 50, key="train_eval_steps")
    save_steps = r8.number_input("Checkpoint every (steps)", 1, 1_000_000, 100, key="train_save_steps")
    config = TrainConfig(stage=stage, model=model, mix=mix or "", data=data, method=method,
                         learning_rate=float(learning_rate), max_steps=int(max_steps), epochs=float(epochs),
                         block_size=int(block_size), batch_size=int(batch_size), grad_accum=int(grad_accum),
                         eval_steps=int(eval_steps), save_steps=int(save_steps), warmup=base.warmup,
                         schedule=base.schedule, weight_decay=base.weight_decay, max_grad_norm=base.max_grad_norm,
                         dpo=base.dpo)
    if method == "lora":
        l1, l2, l3, l4 = st.columns(4)
        config.lora.r = int(l1.number_input("LoRA rank", 1, 1024, 16, key="train_lora_r"))
        config.lora.alpha = int(l2.number_input("LoRA alpha", 1, 4096, 32, key="train_lora_alpha"))
        config.lora.dropout = float(l3.number_input("LoRA dropout", 0.0, 0.9, 0.05, key="train_lora_dropout"))
        config.lora.target_modules = [t.strip() for t in l4.text_input(
            "Target modules", ",".join(config.lora.target_modules), key="train_lora_targets").split(",") if t.strip()]
    if method == "freeze":
        f1, f2 = st.columns(2)
        config.freeze.fraction = float(f1.slider("Freeze the bottom share of the blocks", 0.0, 1.0, 0.5, 0.05,
                                                 key="train_freeze_fraction"))
        config.freeze.embeddings = f2.checkbox("Freeze the embeddings", True, key="train_freeze_embed")
    g1, g2 = st.columns(2)
    config.ewc.enabled = g1.checkbox("EWC penalty (Fisher on the general validation text)", key="train_ewc")
    if config.ewc.enabled:
        config.ewc.strength = float(g1.number_input("EWC lambda", 0.0, 1e9, 100.0, key="train_ewc_lambda"))
    config.average.enabled = g2.checkbox("Average with the base model after training", key="train_average")
    if config.average.enabled:
        config.average.alpha = float(g2.slider("Base model's share (alpha)", 0.0, 1.0, 0.3, 0.05,
                                               key="train_average_alpha"))
    if stage == "dpo":
        config.dpo.beta = float(st.number_input("DPO beta", 0.001, 10.0, config.dpo.beta, key="train_dpo_beta"))
    with st.expander("Advanced"):
        a1, a2, a3, a4 = st.columns(4)
        config.schedule = a1.selectbox("Schedule", SCHEDULES, index=SCHEDULES.index(config.schedule),
                                       key="train_schedule",
                                       help="cosine to a floor; progressive: warmup, plateau, cosine")
        config.warmup = float(a2.number_input("Warmup share", 0.0, 0.9, config.warmup, key=f"train_warmup_{preset}"))
        config.min_lr_ratio = float(a3.number_input("Floor (share of the lr)", 0.0, 1.0, 0.1, key="train_floor"))
        config.decay_share = float(a4.number_input("Progressive: cosine share", 0.01, 1.0, 0.3, key="train_decay"))
        b1, b2, b3, b4 = st.columns(4)
        config.weight_decay = float(b1.number_input("Weight decay", 0.0, 1.0, config.weight_decay,
                                                    key=f"train_wd_{preset}"))
        config.max_grad_norm = float(b2.number_input("Gradient clipping", 0.0, 100.0, config.max_grad_norm,
                                                     key="train_clip"))
        config.precision = b3.selectbox("Precision", PRECISIONS, key="train_precision",
                                        help="auto: bf16 on a GPU that supports it, fp32 otherwise")
        config.seed = int(b4.number_input("Seed", 0, 2**31 - 1, 42, key="train_seed"))
        d1, d2, d3, d4 = st.columns(4)
        config.gradient_checkpointing = d1.checkbox("Gradient checkpointing", key="train_ckpt")
        config.trust_remote_code = d2.checkbox("Trust remote code", key="train_remote_code",
                                               help="Runs the model repository's own Python code: only for "
                                                    "models you trust")
        config.eval_tokens = int(d3.number_input("Validation tokens per set", 8, 10_000_000, default_eval_tokens(),
                                                 key="train_eval_tokens",
                                                 help="scored on both validation sets at step 0 and every "
                                                      "eval_steps (the estimate counts it)"))
        config.logging_steps = int(d4.number_input("Log every (steps)", 1, 10_000, 1, key="train_logging"))
        e1, e2 = st.columns(2)
        config.distributed.mode = e1.selectbox("Distribution (Accelerate)", DISTRIBUTED_MODES,
                                               key="train_distributed",
                                               help="DDP, FSDP or DeepSpeed ZeRO-2/3: the Accelerate config is "
                                                    "generated and saved in the job's folder")
        config.distributed.num_processes = int(e2.number_input("Processes (GPUs)", 1, 4096, 1, key="train_procs"))
        extra = st.text_area("Any other TrainingArguments (TOML, the [trainer] table)", "", key="train_extra",
                             placeholder='optim = "adamw_torch_fused"\ndataloader_num_workers = 2')
        if extra.strip():
            import tomllib

            try:
                config.trainer = tomllib.loads(extra)
            except tomllib.TOMLDecodeError as exc:
                st.error(f"[trainer]: {exc}")
    return config


try:
    generated = config_to_toml(form_config())
except (ConfigError, ValueError) as exc:
    st.error(str(exc))
    st.stop()
digest = hashlib.sha1(generated.encode()).hexdigest()[:10]
text = st.text_area("Config (TOML): launched as shown; edits here win until the form changes", generated,
                    height=260, key=f"train_toml_{digest}")
go1, go2, _ = st.columns([1, 1, 3])
if go1.button("Estimate", icon=":material/calculate:", key="train_estimate"):
    try:
        est = estimate(path, text)
    except (ConfigError, ValueError, WorkspaceError) as exc:
        st.error(str(exc))
    else:
        st.info(f"{est.steps:,} steps of up to {est.tokens_per_step:,} tokens"
                + (f" ({est.tokens:,} training tokens)" if est.tokens else f" ({est.examples:,} examples)")
                + f"; time: **{eta_text(est.seconds)}** ({est.rate_source})"
                + (f", of which validation {eta_text(est.validation_seconds)} ({est.validation_passes} passes, "
                   f"{est.validation_tokens:,} tokens)" if est.validation_seconds else "") + ".",
                icon=":material/calculate:")
if go2.button("Launch", type="primary", icon=":material/rocket_launch:", key="train_launch"):
    try:
        parse_config(text)
        with st.spinner("checking the model and the data"):
            launched = launch_training(path, text)
    except (ConfigError, ValueError, WorkspaceError, OSError) as exc:
        st.error(str(exc).splitlines()[0], icon=":material/error:")
    else:
        st.session_state["train_watch"] = launched.job_id
        st.rerun()
st.caption("Command line: `studio train WORKSPACE --config FILE` with the TOML above; `studio jobs`, "
           "`studio stop`, `studio resume` act on the same jobs.")

# --- past jobs ------------------------------------------------------------------------------------------------------
ended = [j for j in jobs if not j.active]
if not ended:
    st.stop()
st.subheader("Past jobs")
table = pd.DataFrame([job_summary(j) for j in ended])
st.dataframe(table[["job_id", "status", "label", "steps", "loss", "domain_val_ppl", "general_val_ppl",
                    "tokens_per_s", "created_at"]], hide_index=True,
             column_config={"loss": st.column_config.NumberColumn(format="%.4f"),
                            "domain_val_ppl": st.column_config.NumberColumn("domain ppl", format="%.2f"),
                            "general_val_ppl": st.column_config.NumberColumn("general ppl", format="%.2f"),
                            "tokens_per_s": st.column_config.NumberColumn("tokens/s", format="%.0f")})
ids = [j.job_id for j in ended]
watched = st.session_state.get("train_watch")
pick = st.selectbox("Open a job", ids, index=ids.index(watched) if watched in ids else 0, key="train_open")
job_panel(pick)

st.subheader("Compare two jobs")
c1, c2 = st.columns(2)
first = c1.selectbox("Job A", ids, key="train_cmp_a")
second = c2.selectbox("Job B", ids, index=min(1, len(ids) - 1), key="train_cmp_b")
by_id: dict[str, Job] = {j.job_id: j for j in ended}
show_curves({jid: metrics_frame(by_id[jid]) for jid in dict.fromkeys([first, second])}, key="compare")
folders = {jid: Path(by_id[jid].output_dir) for jid in (first, second)}
st.caption(" · ".join(f"`{jid}`: `{folder}`" for jid, folder in folders.items()))
