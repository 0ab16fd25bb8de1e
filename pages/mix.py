"""Mix: the recipe (components, shares in tokens, budget, curriculum phases, validation carve-out), live
accounting of requested versus available tokens, sample documents per component, saved recipes, and the export
as a background job with its files to download."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.config import save_upload
from core.mix import (
    INSTRUCTION_FORMATS,
    INTERLEAVE,
    MIX_COLUMNS,
    ON_SHORT,
    PRESETS,
    SOURCES,
    Component,
    MixExportConfig,
    MixRecipe,
    Phase,
    PresetMixConfig,
    ValidationConfig,
    load_recipe,
    mixable_corpora,
    preset_recipe,
    preview_mix,
    recent_mixes,
    recipe_toml,
    save_recipe,
)
from core.steps import config_argv, param_info
from core.workspace import WorkspaceError
from studio import widgets as w

DOWNLOAD_LIMIT_BYTES = 200 * 1024 * 1024  # larger files are named by path (a download holds them in memory)
ROLE_CHOICES = ["", "domain", "general", "instruction"]

st.title(":material/blender: Mix")
st.caption("What the model trains on: components drawn from the current (filtered) corpora, with shares in "
           "tokens of a budget. Short components are up-sampled up to a repeat cap; validation sets are held "
           "out before sampling; decontamination runs on the final mix at export.")
path = w.require_workspace()
w.job_panel()

corpora = w.cached_read(mixable_corpora)
with w.read_ws() as ws:
    mixes = pd.DataFrame(recent_mixes(ws, limit=20), columns=list(MIX_COLUMNS))
if corpora.empty:
    st.info("No corpora to mix yet: ingest domain, general or instruction data first.", icon=":material/info:")
    st.stop()
recipes_dir = path / "artifacts" / "recipes"


def saved_recipes() -> list[Path]:
    return sorted(recipes_dir.glob("*.toml")) if recipes_dir.is_dir() else []


# --- choosing a recipe -----------------------------------------------------------------------------------------
if "mix_recipe" not in st.session_state:
    st.session_state["mix_recipe"] = preset_recipe("MIP 80/10/10", 1_000_000, name="mix")
    st.session_state["mix_version"] = 0
recipe: MixRecipe = st.session_state["mix_recipe"]

with st.container(border=True):
    c1, c2, c3 = st.columns([3, 3, 1])
    starts = [f"preset: {name}" for name in PRESETS] + [f"saved: {p.stem}" for p in saved_recipes()]
    start = c1.selectbox("Start from", starts, key="mix_start", index=starts.index("preset: MIP 80/10/10"),
                         help="Presets from common practice; saved recipes live in the workspace's "
                              "artifacts/recipes folder (TOML).")
    # The preset step's own fields (`studio mix --write-preset --domain-source`, the recipe's mix step)
    source_info, share_info = param_info(PresetMixConfig, "domain_source"), param_info(PresetMixConfig, "source_share")
    domain_source = c1.selectbox("Domain text from (presets)", list(SOURCES), key="mix_domain_source",
                                 index=list(SOURCES).index(source_info.default), help=source_info.meta["help"])
    source_share = c1.number_input("Part of the domain share from that set", 0.0, 1.0, float(share_info.default),
                                   0.05, key="mix_source_share", help=share_info.meta["help"],
                                   disabled=domain_source == "corpora")
    uploaded = c2.file_uploader("or load a recipe file (TOML)", type=["toml"], key="mix_upload")
    if c3.button("Load", icon=":material/restart_alt:", width="stretch"):
        try:
            if uploaded is not None:
                new = load_recipe(save_upload(recipes_dir, uploaded.name, uploaded.getvalue(), "recipe").path)
            elif start.startswith("preset: "):
                new = PresetMixConfig(preset=start.removeprefix("preset: "), total_tokens=recipe.total_tokens,
                                      mix_name=recipe.name, domain_source=domain_source, source_share=source_share,
                                      overrides={"seed": recipe.seed}).recipe()
            else:
                new = load_recipe(recipes_dir / f"{start.removeprefix('saved: ')}.toml")
        except (ValueError, FileNotFoundError) as exc:
            st.error(str(exc))
        else:
            st.session_state["mix_recipe"] = recipe = new
            st.session_state["mix_version"] += 1
            st.rerun()
version = st.session_state["mix_version"]


def key(name: str) -> str:
    return f"mix_{name}_{version}"  # a loaded recipe starts the widgets afresh


# --- the recipe ------------------------------------------------------------------------------------------------
st.subheader("Recipe")
c1, c2, c3, c4 = st.columns(4)
name = c1.text_input("Name", recipe.name, key=key("name"), help="The export folder's name")
total_tokens = c2.number_input("Token budget", min_value=1_000, value=int(recipe.total_tokens), step=100_000,
                               key=key("total"))
seed = c3.number_input("Seed", value=int(recipe.seed), step=1, key=key("seed"))
max_repeats = c4.number_input("Max repeats", min_value=1.0, value=float(recipe.max_repeats), step=1.0,
                              key=key("repeats"), help="A short component is up-sampled at most this many times")

st.markdown("**Components** — each draws from the listed corpora, or from every corpus of its role; *recalled* "
            "and *control* narrow it to the recall step's set or its random control.")
corpus_names = corpora["name"].tolist()
components_frame = pd.DataFrame([{
    "name": c.name, "role": c.role or (c.name if c.name in ROLE_CHOICES and not c.corpora else ""),
    "corpora": ", ".join(c.corpora), "source": c.source,
    "max repeats": c.max_repeats} for c in recipe.components])
edited = st.data_editor(
    components_frame, num_rows="dynamic", hide_index=True, key=key("components"), width="stretch",
    column_config={
        "name": st.column_config.TextColumn(required=True),
        "role": st.column_config.SelectboxColumn(options=ROLE_CHOICES),
        "corpora": st.column_config.TextColumn(help="comma-separated corpus names; empty: every corpus of the role"
                                                    f" ({', '.join(corpus_names)})"),
        "source": st.column_config.SelectboxColumn(options=list(SOURCES), required=True),
        "max repeats": st.column_config.NumberColumn(min_value=1.0, help="empty: the recipe's max repeats")})

shares_before = {c.name: c.share for c in recipe.components}
rows = [r for r in edited.to_dict("records") if str(r.get("name") or "").strip()]
st.markdown("**Shares of the budget, in tokens** (normalised over the components)")
share_cols = st.columns(max(len(rows), 1))
components: list[Component] = []
for col, row in zip(share_cols, rows, strict=False):
    comp_name = str(row["name"]).strip()
    share = col.slider(comp_name, 0.0, 100.0, 100.0 * shares_before.get(comp_name, 0.0), step=0.5,
                       format="%.1f%%", key=key(f"share_{comp_name}"))
    repeats = row.get("max repeats")
    components.append(Component(
        name=comp_name, share=share / 100.0, role=row.get("role") or None,
        corpora=[c.strip() for c in str(row.get("corpora") or "").split(",") if c.strip()],
        source=row.get("source") or "corpora",
        max_repeats=None if repeats is None or pd.isna(repeats) else float(repeats)))

with st.expander("Curriculum phases", expanded=bool(recipe.phases)):
    st.caption("Optional: consecutive stretches of training, each a fraction of the budget with its own shares "
               "(for example basic terminology, then pathology, then clinical reasoning). Without phases the "
               "shares above hold throughout.")
    phase_frame = pd.DataFrame([{"phase": p.name, "fraction": p.fraction,
                                 **{c.name: p.shares.get(c.name, 0.0) for c in components}}
                                for p in recipe.phases], columns=["phase", "fraction", *[c.name for c in components]])
    phase_edit = st.data_editor(phase_frame, num_rows="dynamic", hide_index=True, key=key("phases"),
                                width="stretch")
    phases = [Phase(name=str(r["phase"]), fraction=float(r["fraction"] or 0),
                    shares={c.name: float(r.get(c.name) or 0) for c in components if float(r.get(c.name) or 0) > 0})
              for r in phase_edit.to_dict("records") if str(r.get("phase") or "").strip() not in ("", "None")]

with st.expander("Ordering, validation, export"):
    c1, c2, c3 = st.columns(3)
    window = c1.number_input("Window (documents)", min_value=1, value=int(recipe.window), key=key("window"),
                             help="Every window of this many documents is checked against the shares")
    interleave = c2.selectbox("Interleave by", INTERLEAVE, index=INTERLEAVE.index(recipe.interleave),
                              key=key("interleave"),
                              help="tokens: each component's tokens track its share everywhere; documents: "
                                   "no window lacks a component")
    on_short = c3.selectbox("When a component is short", ON_SHORT, index=ON_SHORT.index(recipe.on_short),
                            key=key("on_short"),
                            help="shrink: smaller budget, shares hold; allow: shares drift; error: stop")
    c1, c2, c3 = st.columns(3)
    validation_sets = c1.multiselect("Validation sets (held out)", ["domain", "general", "instruction"],
                                     default=recipe.validation.sets, key=key("val_sets"))
    validation_tokens = c2.number_input("Validation tokens per set", min_value=0,
                                        value=int(recipe.validation.tokens), step=10_000, key=key("val_tokens"))
    instruction_format = c3.selectbox("Instruction records as", INSTRUCTION_FORMATS,
                                      index=INSTRUCTION_FORMATS.index(recipe.instruction_format),
                                      key=key("instruction_format"))
    c1, c2 = st.columns(2)
    formats = c1.multiselect("Pretraining text as", ["jsonl", "parquet"], default=recipe.formats,
                             key=key("formats"))
    decontaminate = c2.checkbox("Decontaminate against every benchmark at export", value=recipe.decontaminate,
                                key=key("decontaminate"))

current = MixRecipe(
    name=name.strip(), seed=int(seed), total_tokens=int(total_tokens), components=components, phases=phases,
    window=int(window), max_repeats=float(max_repeats), on_short=on_short, interleave=interleave,
    validation=ValidationConfig(sets=list(validation_sets), tokens=int(validation_tokens)),
    formats=list(formats), instruction_format=instruction_format, decontaminate=decontaminate,
    decontam=recipe.decontam, count_missing_tokens=recipe.count_missing_tokens)
try:
    current.validate()
except ValueError as exc:
    st.error(f"The recipe is not valid yet: {exc}", icon=":material/error:")
    st.stop()
st.session_state["mix_recipe_current"] = current

# --- live accounting -------------------------------------------------------------------------------------------
st.subheader("Requested versus available tokens")
try:
    plan, samples_by_component = w.cached_read(preview_mix, current, 4)
except WorkspaceError as exc:
    st.error(str(exc), icon=":material/error:")
    st.stop()

# the unit in the label, the figure short: "1,000,000 tokens" is cut to "1,000,000 to…" in a quarter of 1400 px
held_out = sum(v["tokens"] for v in plan.validation.values())
m1, m2, m3, m4 = st.columns(4)
m1.metric("Requested tokens", w.token_figure(plan.requested_tokens), help=f"{plan.requested_tokens:,} tokens")
m2.metric("Planned tokens", w.token_figure(plan.planned_tokens), f"{plan.scale - 1:+.1%}" if plan.scale < 1 else None,
          delta_color="inverse", help=f"{plan.planned_tokens:,} tokens")
m3.metric("Validation tokens held out", w.token_figure(held_out), help=f"{held_out:,} tokens")
m4.metric("Components short", sum(c.short for c in plan.components))
for warning in plan.warnings:
    st.warning(warning, icon=":material/warning:")

names = [c.name for c in plan.components]
once = [min(c.planned_tokens, c.available_tokens) for c in plan.components]
repeated = [max(c.planned_tokens - c.available_tokens, 0) for c in plan.components]
unused = [max(c.available_tokens - c.planned_tokens, 0) for c in plan.components]
figure = go.Figure([
    go.Bar(name="drawn once", x=names, y=once, marker_color="#2b6cb0"),
    go.Bar(name="up-sampled repeats", x=names, y=repeated, marker_color="#dd6b20"),
    go.Bar(name="available, not drawn", x=names, y=unused, marker_color="#cbd5e0"),
    go.Scatter(name="requested", x=names, y=[c.requested_tokens for c in plan.components], mode="markers",
               marker={"symbol": "diamond", "size": 14, "color": "#c53030"}),
])
figure.update_layout(barmode="stack", height=380, margin=dict(l=10, r=10, t=30, b=10), yaxis_title="tokens",
                     legend_orientation="h")
st.plotly_chart(figure, width="stretch", key="mix_accounting_chart")
st.dataframe(pd.DataFrame([{
    "component": c.name, "share": c.share, "requested": c.requested_tokens, "available": c.available_tokens,
    "documents": c.available_documents, "planned": c.planned_tokens, "repeats": c.repeats,
    "max repeats": c.max_repeats, "short": c.short, "uncounted": c.uncounted_documents,
    "benchmark copies left out": c.benchmark_copies, "taken by an earlier component": c.claimed_elsewhere}
    for c in plan.components]), hide_index=True, width="stretch",
    column_config={"share": st.column_config.NumberColumn(format="percent"),
                   "repeats": st.column_config.NumberColumn(format="%.2fx"),
                   **{k: st.column_config.NumberColumn(format="localized")
                      for k in ("requested", "available", "documents", "planned")}})
if plan.uncounted_documents:
    st.info(f"{plan.uncounted_documents:,} documents have no token count yet; the export counts them first.",
            icon=":material/info:")
if len(plan.phase_targets) > 1:
    st.caption("Tokens per phase and component: " + "; ".join(
        f"{p}: " + ", ".join(f"{c} {t:,}" for c, t in ts.items()) for p, ts in plan.phase_targets.items()))

st.markdown("**Validation carve-out** (held out before sampling; never in training, nor any exact copy)")
if plan.validation:
    st.dataframe(pd.DataFrame([{"set": k, **v} for k, v in plan.validation.items()]), hide_index=True)
else:
    st.caption("No validation set (none of the chosen roles is drawn).")

# --- samples ---------------------------------------------------------------------------------------------------
st.subheader("Sample documents")
tabs = st.tabs(names)
for tab, comp_name in zip(tabs, names, strict=True):
    with tab:
        samples = samples_by_component.get(comp_name, [])
        if not samples:
            st.caption("No documents.")
        for doc in samples:
            with st.expander(f"{doc['corpus']} · {doc['tokens']:,} tokens · {doc['doc_id']}"):
                st.text(doc["text"])

# --- saving and exporting --------------------------------------------------------------------------------------
st.subheader("Save and export")
c1, c2, c3 = st.columns(3)
recipe_file = recipes_dir / f"{current.name}.toml"
if c1.button("Save recipe", icon=":material/save:", width="stretch"):
    save_recipe(current, recipe_file)
    st.success(f"Saved {recipe_file}")
c2.download_button("Download recipe (TOML)", recipe_toml(current), file_name=f"{current.name}.toml",
                   mime="application/toml", icon=":material/download:", width="stretch")
job = w.current_job(path)
if c3.button("Export mix", type="primary", icon=":material/output:", width="stretch",
             disabled=bool(job and job.running)):
    save_recipe(current, recipe_file)
    w.start_job(["mix", *config_argv(MixExportConfig(recipe=str(recipe_file)))], f"Export mix {current.name}")
st.caption(f"Exports go to `{path / 'artifacts' / 'exports' / current.name}`; the same recipe and seed give a "
           "byte-identical export.")

# --- exports ---------------------------------------------------------------------------------------------------
st.subheader("Exports")
if mixes.empty:
    st.caption("No mix exported yet.")
else:
    st.dataframe(mixes, hide_index=True, width="stretch")
    chosen = st.selectbox("Export", mixes["mix_id"].tolist(), key="mix_export_choice",
                          format_func=lambda m: f"{m} ({mixes.set_index('mix_id').loc[m, 'name']})")
    folder = Path(mixes.set_index("mix_id").loc[chosen, "export_dir"])
    manifest_path = folder / "manifest.json"
    if not manifest_path.exists():
        st.caption(f"`{folder}` no longer holds this export (a later export of the same name replaced it).")
    else:
        manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest["run"]["run_id"] != chosen:
            st.caption(f"`{folder}` now holds a later export of this name ({manifest['run']['run_id']}).")
        d = manifest["decontamination"]
        e1, e2, e3, e4 = st.columns(4)
        e1.metric("Documents", f"{manifest['budget']['exported_documents']:,}")
        e2.metric("Tokens", f"{manifest['budget']['exported_tokens']:,}")
        # short value, the words in the label: a quarter-width metric cuts "0 dropped, 0 cut" to "0 dropped, 0…"
        e3.metric("Decontamination: dropped / cut", f"{d['dropped_documents']:,} / {d['cut_documents']:,}"
                  if d["enabled"] else "off")
        e4.metric(f"Worst window ({manifest['window']['size']} docs)",
                  f"{manifest['window']['max_share_deviation']:.1%} off")
        st.dataframe(pd.DataFrame([{"component": k, **{f: v[f] for f in (
            "share_requested", "share_exported", "tokens", "documents", "unique_documents", "max_copies",
            "short")}} for k, v in manifest["components"].items()]), hide_index=True, width="stretch")
        if d["enabled"] and d["examples"]:
            with st.expander("What decontamination removed"):
                st.dataframe(pd.DataFrame(d["examples"]), hide_index=True, width="stretch")
                st.json(d["item_matches_by_benchmark"])
        st.markdown("**Files**")
        for key_name, entry in manifest["files"].items():
            file_path = folder / entry["file"]
            f1, f2 = st.columns([3, 1])
            f1.markdown(f"`{entry['file']}` · {entry['rows']:,} rows · {entry['bytes'] / 1e6:,.1f} MB · "
                        f"sha256 `{entry['sha256'][:12]}…`")
            if entry["bytes"] <= DOWNLOAD_LIMIT_BYTES and file_path.exists():
                f2.download_button("Download", file_path.read_bytes(), file_name=entry["file"],
                                   key=f"mix_dl_{chosen}_{key_name}", icon=":material/download:")
            else:
                f2.caption(f"`{file_path}`")
        with open(manifest_path, "rb") as fh:
            st.download_button("Download manifest.json", fh.read(), file_name="manifest.json",
                               key=f"mix_dl_manifest_{chosen}", icon=":material/download:")
