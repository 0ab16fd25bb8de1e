"""Terminology: lexicons (bundled, uploaded, mined from the workspace and reviewed here, combined), density per corpus with a movable threshold, live
kept/dropped counts from stored values, documents either side of the threshold with their terms highlighted,
and applying the filter as a background job."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import streamlit as st

from core.config import clean_file_name, save_upload
from core.corpus import HISTOGRAM_SAMPLE_ROWS, corpus_roles
from core.lexicon_mine import (
    LANGUAGES,
    LexiconMineConfig,
    load_candidates,
    mining_runs,
    sample_densities,
    sample_documents,
    selection_lexicon,
    write_lexicon,
)
from core.steps import config_argv, job_argv
from core.terms import (
    DEFAULT_LEXICONS,
    FILTER_STEP,
    SCORE_STEP,
    TermFilterConfig,
    TermMatcher,
    TermScoreConfig,
    TermsStepConfig,
    bundled_lexicons,
    corpus_density_summary,
    density_table,
    documents_near_threshold,
    filter_preview,
    load_lexicons,
    parse_lexicon,
    scored_lexicon_specs,
)
from core.workspace import ROLES, active_run
from studio import widgets as w

st.title(":material/spellcheck: Terminology")
st.caption("Term hits per word (per character in Chinese) from a medical lexicon. Domain documents that hardly "
           "use the domain's vocabulary, or are too short or too long, are dropped; general corpora are scored "
           "too, for comparison.")
path = w.require_workspace()
w.job_panel()

upload_dir = path / "artifacts" / "lexicons"


@st.cache_resource(max_entries=4)
def matcher_for(specs: tuple[str, ...], stamp: tuple[float, ...]) -> TermMatcher:
    """The automaton for highlighting; `stamp` (file times) rebuilds it when a lexicon file changes."""
    return TermMatcher(load_lexicons(list(specs)))


def spec_label(spec: str) -> str:
    return spec if spec in bundled_lexicons() else f"{Path(spec).name} (uploaded)"


def spec_stamp(specs: list[str]) -> tuple[float, ...]:
    files = [bundled_lexicons().get(s, Path(s)) for s in specs]
    return tuple(f.stat().st_mtime if f.exists() else 0.0 for f in files)


# --- lexicons --------------------------------------------------------------------------------------------------
with w.read_ws() as ws:
    scoring = active_run(ws, SCORE_STEP)
    scored_specs = scored_lexicon_specs(ws)

with st.expander("Lexicons", expanded=scoring is None):
    uploaded_specs = sorted(str(p) for p in upload_dir.glob("*") if p.suffix.lower() in {".txt", ".csv"}) \
        if upload_dir.is_dir() else []
    available = list(bundled_lexicons()) + uploaded_specs
    default = [s for s in (scored_specs or list(DEFAULT_LEXICONS)) if s in available]
    chosen_specs = st.multiselect("Combine these lexicons", available, default=default, format_func=spec_label,
                                  key="terms_lexicons",
                                  help="Several lexicons are merged into one; a term in more than one keeps its "
                                       "highest weight.")
    rows = []
    for spec in available:
        try:
            lexicon = load_lexicons([spec])
            rows.append({"lexicon": spec_label(spec), "terms": len(lexicon),
                         "compound terms": sum(" " in t or (len(t) >= 3 and not t.isascii())
                                               for t in lexicon.weights),
                         "weighted": any(v != 1.0 for v in lexicon.weights.values()),
                         "examples": ", ".join(list(lexicon.spelling.values())[:6])})
        except (ValueError, OSError) as exc:
            rows.append({"lexicon": spec_label(spec), "terms": 0, "examples": f"unreadable: {exc}"})
    st.dataframe(pd.DataFrame(rows), hide_index=True)
    if chosen_specs:
        combined = load_lexicons(chosen_specs)
        st.caption(f"Combined: **{combined.name}**, {len(combined):,} terms.")

    upload = st.file_uploader("Upload a lexicon: TXT (one term a line, '#' comments) or CSV (term,weight)",
                              type=["txt", "csv"], key="terms_upload")
    if upload is not None:
        file_name = Path(clean_file_name(upload.name, "lexicon"))
        try:
            parsed = parse_lexicon(upload.getvalue().decode("utf-8-sig"), file_name.stem, file_name.suffix)
        except (ValueError, UnicodeDecodeError) as exc:
            st.error(f"{upload.name}: {exc}", icon=":material/error:")
        else:
            target, written = save_upload(upload_dir, upload.name, upload.getvalue(), "lexicon")
            if written:
                st.success(f"Saved {target.name}: {len(parsed):,} terms. Select it above to combine it.",
                           icon=":material/check_circle:")
                st.rerun()

    rescore = chosen_specs and (scoring is None or sorted(chosen_specs) != sorted(scored_specs))
    if st.button("Score all documents with this combination", disabled=not chosen_specs,
                 type="primary" if rescore else "secondary", key="terms_score_button"):
        argv = job_argv("terms", TermsStepConfig(score=TermScoreConfig(lexicons=list(chosen_specs))))
        w.start_job(argv, f"Terminology scoring ({' + '.join(map(spec_label, chosen_specs))})")

# --- mining a lexicon --------------------------------------------------------------------------------------------
@st.cache_data(max_entries=4, show_spinner=False)
def mining_sample(workspace: str, run_id: str, corpora: tuple[str, ...], per_corpus: int) -> pd.DataFrame:
    """A seeded sample per corpus, cached per mining run (`workspace` and `run_id` are the cache key)."""
    with w.read_ws() as ws:
        return sample_documents(ws, list(corpora), per_corpus=per_corpus)


with w.read_ws() as ws:
    all_corpora = pd.DataFrame(ws.corpora(), columns=["name", "role", "format", "source", "documents", "chars",
                                                      "tokens", "untokenised"])
    mined_runs = mining_runs(ws)

with st.expander("Mine a lexicon from the workspace's corpora", expanded=bool(mined_runs)):
    st.caption("Candidate terms (word 1-3-grams; jieba words and 2-4-character n-grams in Chinese) scored by the "
               "log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008): how much more "
               "often the domain corpora use a term than the general ones, and how sure that is (z). Weights "
               "(at most 1) come from the log-odds, so density keeps its meaning.")
    names = all_corpora["name"].tolist()
    by_role = all_corpora.groupby("role")["name"].apply(list).to_dict()
    k1, k2 = st.columns(2)
    mine_domain = k1.multiselect("Domain corpora", names, default=by_role.get("domain", []), key="mine_domain")
    mine_general = k2.multiselect("General corpora", names, default=by_role.get("general", []),
                                  key="mine_general")
    k3, k4, k5, k6 = st.columns(4)
    mine_min_df = k3.number_input("Minimum domain documents", 1, 1_000, LexiconMineConfig().min_df,
                                  key="mine_min_df")
    mine_top = k4.number_input("Terms per language (at most)", 10, 50_000, LexiconMineConfig().top, step=100,
                               key="mine_top")
    mine_language = k5.selectbox("Language", LANGUAGES, key="mine_language")
    mine_name = k6.text_input("Lexicon name", "mined", key="mine_name")
    mine_file = clean_file_name(mine_name, "mined", ".csv")
    mine_stem = Path(mine_file).stem
    mine_argv = ["lexicon-mine", *config_argv(LexiconMineConfig(
        domain=list(mine_domain), general=list(mine_general), out=str(upload_dir / mine_file),
        min_df=int(mine_min_df), top=int(mine_top), language=mine_language))]
    overlap = set(mine_domain) & set(mine_general)
    if overlap:
        st.warning(f"{', '.join(sorted(overlap))} is chosen as both domain and general.", icon=":material/warning:")
    if st.button("Mine candidates", disabled=not mine_domain or not mine_general or bool(overlap),
                 key="mine_button"):
        w.start_job(mine_argv, f"Lexicon mining ({', '.join(mine_domain)} against {', '.join(mine_general)})")
    st.caption(f"Command line: `studio {' '.join(mine_argv[:1])} WORKSPACE {' '.join(mine_argv[1:])}`")

    if mined_runs:
        latest = mined_runs[0]
        candidates = load_candidates(path, latest["run_id"])
        st.markdown(f"**{len(candidates):,} candidates** from run `{latest['run_id']}` "
                    f"(domain: {', '.join(latest['params'].get('domain', []))}; general: "
                    f"{', '.join(latest['params'].get('general', []))}).")
        s1, s2 = st.columns([3, 1])
        z_max = float(max(candidates["z"].max(), 1.0))
        cut = s1.slider("Accept candidates with a score (z) of at least", 0.0, round(z_max, 1),
                        float(LexiconMineConfig().min_z), step=0.1, key="mine_cut")
        mine_density = s2.number_input("Minimum density", 0.0, 1.0, 0.02, step=0.005, format="%.3f",
                                       key="mine_density")
        table = candidates.assign(accept=candidates["z"] >= cut)[
            ["accept", "term", "language", "z", "delta", "weight", "domain_count", "general_count", "domain_df",
             "general_df", "example"]]
        # Edits by hand start again from the cut-off when it moves (the key holds the cut-off).
        edited = st.data_editor(
            table, hide_index=True, key=f"mine_editor_{latest['run_id']}_{cut:.1f}",
            disabled=[c for c in table.columns if c != "accept"],
            column_config={"accept": st.column_config.CheckboxColumn("accept", help="in the saved lexicon"),
                           "z": st.column_config.NumberColumn("score (z)", format="%.2f"),
                           "delta": st.column_config.NumberColumn("log-odds", format="%.2f"),
                           "weight": st.column_config.NumberColumn(format="%.2f"),
                           "example": st.column_config.TextColumn("example context", width="large")})
        accepted = edited[edited["accept"]]
        sample_corpora = tuple(c for c in latest["params"].get("domain", []) + latest["params"].get("general", [])
                               if c in set(names))
        sample = mining_sample(str(path), latest["run_id"], sample_corpora, 300)
        densities = sample_densities(selection_lexicon(accepted), sample, mine_density,
                                     latest["params"].get("domain", []))
        by_role_kept = densities.groupby("side")["kept"].agg(["sum", "count"])
        n1, n2, n3, n4 = st.columns(4)
        n1.metric("Accepted terms", f"{len(accepted):,}")
        for column, role, word in ((n2, "domain", "kept"), (n3, "general", "dropped")):
            if role in by_role_kept.index:
                kept_n, total_n = int(by_role_kept.loc[role, "sum"]), int(by_role_kept.loc[role, "count"])
                shown_n = kept_n if word == "kept" else total_n - kept_n
                column.metric(f"{role.capitalize()} sample {word}", f"{shown_n:,} of {total_n:,}")
        n4.metric("Sampled documents", f"{len(densities):,}", "up to 300 per corpus, seeded", delta_color="off",
                  delta_arrow="off")
        per_corpus_kept = densities.groupby(["side", "corpus"])["kept"].agg(["sum", "count"]).reset_index()
        per_corpus_kept.columns = ["side", "corpus", "kept", "documents"]
        st.dataframe(per_corpus_kept, hide_index=True)
        st.plotly_chart(w.threshold_histogram(densities[densities["density"] <= 0.5], "density", mine_density,
                                              color="side", x_label="term density", bins=60, log_y=True,
                                              title="Density of the sampled documents under the accepted terms"))
        save_name = st.text_input("Save the accepted terms as", mine_stem, key="mine_save_name")
        save_file = clean_file_name(save_name, "mined", ".csv")
        if st.button(f"Save lexicon ({len(accepted):,} terms)", disabled=accepted.empty, type="primary",
                     key="mine_save_button"):
            saved = write_lexicon(upload_dir / save_file, dict(zip(accepted["term"], accepted["weight"],
                                                                          strict=True)),
                                  [f"saved from the Terminology page: {len(accepted):,} of {len(candidates):,} "
                                   f"candidates of mining run {latest['run_id']}"])
            st.success(f"Saved {saved.name}: {len(accepted):,} terms. Choose it under Lexicons to score with it.",
                       icon=":material/check_circle:")

if scoring is None:
    st.info("No document is scored yet: choose lexicons above and score all documents.",
            icon=":material/info:")
    st.stop()

st.caption(f"Scores from run `{scoring.run_id}` with lexicon **{scoring.params.get('lexicon')}** "
           f"({scoring.params.get('terms', 0):,} terms), {scoring.counts.get('documents', 0):,} documents.")

# --- filter settings -------------------------------------------------------------------------------------------
with w.read_ws() as ws:
    corpora = pd.DataFrame(list(corpus_roles(ws).items()), columns=["name", "role"])
    applied = active_run(ws, FILTER_STEP)
# The controls start from the filter as applied now (the demo lowers the minimum length), else the defaults.
defaults = TermFilterConfig()
if applied:
    applied_params = applied.params
    defaults = TermFilterConfig(**{k: applied_params[k] for k in vars(defaults) if k in applied_params})
c1, c2, c3 = st.columns([2, 2, 3])
min_density = c1.slider("Minimum density (hits per word / character)", 0.0, 0.2, defaults.min_density,
                        step=0.005, format="%.3f", key="terms_min_density")
min_words, max_words = c2.slider("Length in words", 0, 5_000, (defaults.min_words, defaults.max_words),
                                 step=10, key="terms_words")
min_chars, max_chars = c2.slider("Length in characters (Chinese)", 0, 8_000,
                                 (defaults.min_chars, defaults.max_chars), step=25, key="terms_chars")
roles = c3.multiselect("Filter corpora of role", list(ROLES), default=defaults.roles, key="terms_roles")
only_corpora = c3.multiselect("...or exactly these corpora", corpora["name"].tolist(), key="terms_corpora",
                              default=[c for c in defaults.corpora or [] if c in set(corpora["name"])])
cfg = TermFilterConfig(min_density=min_density, min_words=min_words, max_words=max_words, min_chars=min_chars,
                       max_chars=max_chars, roles=roles or ["domain"], corpora=only_corpora or None)

# --- live counts from stored values ----------------------------------------------------------------------------
preview = pd.DataFrame(w.cached_read(filter_preview, cfg).per_corpus)
summary = pd.DataFrame(w.cached_read(corpus_density_summary))
total = int(preview["documents"].sum()) if not preview.empty else 0
kept = int(preview["kept"].sum()) if not preview.empty else 0
m1, m2, m3, m4 = st.columns(4)
m1.metric("Documents filtered", f"{total:,}")
m2.metric("Kept", f"{kept:,}")
m3.metric("Dropped", f"{total - kept:,}")
if applied:
    applied_counts = applied.counts
    m4.metric("Applied now", f"{applied_counts.get('dropped', 0):,} dropped",
              f"density >= {applied_params.get('min_density')}", delta_color="off", delta_arrow="off")
else:
    m4.metric("Applied now", "nothing", "filter not applied yet", delta_color="off", delta_arrow="off")
if not preview.empty:
    preview["dropped"] = preview["documents"] - preview["kept"]
    st.dataframe(preview[["corpus", "role", "documents", "kept", "dropped", "too_short", "too_long",
                          "low_term_density"]], hide_index=True)

apply_config = TermsStepConfig(
    score=TermScoreConfig(lexicons=list(scored_specs)),
    filter=TermFilterConfig(min_density=min_density, min_words=int(min_words), max_words=int(max_words),
                            min_chars=int(min_chars), max_chars=int(max_chars), corpora=list(only_corpora) or None,
                            roles=list(roles or TermFilterConfig().roles)))
apply_argv = [*job_argv("terms", apply_config), "--apply"]
w.apply_filter_button(total - kept, apply_argv, f"Terminology filter (density >= {min_density:g})",
                      "terminology filter", key="terms_apply_button")

# --- histogram -------------------------------------------------------------------------------------------------
st.subheader("Density per corpus")
scope_names = preview["corpus"].tolist() if not preview.empty else []
general_names = corpora.loc[corpora["role"] == "general", "name"].tolist()
shown = st.multiselect("Corpora in the histogram", corpora["name"].tolist(),
                       default=list(dict.fromkeys(scope_names + general_names)), key="terms_hist_corpora")
if shown:
    values = w.cached_read(density_table, shown, HISTOGRAM_SAMPLE_ROWS)
    h1, h2 = st.columns([4, 1])
    clip = h1.slider("Show densities up to", 0.05, 1.0, 0.3, step=0.05, key="terms_clip")
    log_y = h2.checkbox("Log scale", value=True, key="terms_log_y",
                        help="General corpora pile up at density 0; a log scale keeps the domain curves visible.")
    st.plotly_chart(w.threshold_histogram(values[values["density"] <= clip], "density", min_density,
                                          color="corpus", x_label="term density", bins=80, log_y=log_y,
                                          title="Term hits per word (per character for Chinese)"))
    st.dataframe(summary[summary["corpus"].isin(shown)], hide_index=True,
                 column_config={"median_density": st.column_config.NumberColumn(format="%.4f"),
                                "mean_density": st.column_config.NumberColumn(format="%.4f"),
                                "share_with_hits": st.column_config.NumberColumn(format="percent")})

# --- documents either side of the threshold --------------------------------------------------------------------
st.subheader("Documents either side of the threshold")
candidates = scope_names or corpora["name"].tolist()
corpus = st.selectbox("Corpus", candidates, key="terms_near_corpus")
if corpus:
    near = w.cached_read(documents_near_threshold, corpus, min_density, 3, cfg)
    matcher = matcher_for(tuple(scored_specs), spec_stamp(scored_specs)) if scored_specs else None
    left, right = st.columns(2)
    for column, side, title in ((left, "below", "Just below: dropped"), (right, "above", "Just above: kept")):
        with column:
            st.markdown(f"**{title}**")
            if not near[side]:
                st.caption("no document within the length bounds on this side")
            for doc in near[side]:
                terms = json.loads(doc["terms"] or "{}")
                st.markdown(f"`{doc['doc_id']}` density **{doc['density']:.4f}** = {doc['hits']} hits / "
                            f"{doc['units']:,} {doc['unit']}s")
                if terms:
                    st.caption(", ".join(f"{t} x{n}" for t, n in terms.items()))
                spans = [(m.start, m.end) for m in matcher.matches(doc["text"])] if matcher else []
                w.show_html(w.highlight_spans(doc["text"], spans))
