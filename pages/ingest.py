"""Ingest: add corpora by upload or by server-side path, preview, choose text field and role, run, see errors."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import streamlit as st

from core.config import allowed_roots, resolve_within_roots, save_upload, upload_limit_mb
from core.ingest import IngestConfig, expand_sources, ingest_error_counts, ingest_errors, ingested_files
from core.readers import FORMATS, LAYOUTS, SourceError, preview_source
from core.steps import config_argv, field_default
from core.workspace import ROLES
from studio import widgets as w

st.title(":material/upload_file: Ingest")
path = w.require_workspace()
w.job_panel()

st.caption("Files are read in streaming batches and a file counts only once it is wholly in, so an interrupted "
           "ingest leaves nothing half-written; ingesting the same file again adds nothing. Skipped records are "
           "listed below with file, line and reason.")

source_tab, upload_tab = st.tabs([":material/folder: From a path on the server", ":material/upload: Upload"])
sources: list[str] = []
with source_tab:
    roots = allowed_roots()
    st.caption("Allowed folders: " + ", ".join(f"`{r}`" for r in roots))
    typed = st.text_input("File, folder or glob", key="ingest_path",
                          placeholder=str(roots[0] / "medquad" / "corpus_en_medquad_nih_paragraphs.jsonl"))
    pattern = st.text_input("Files inside folders (glob)", value="**/*", key="ingest_pattern")
    if typed:
        try:
            if typed.startswith("hf://"):
                sources = [typed]
            else:
                resolve_within_roots(Path(typed).parent if any(c in typed for c in "*?[") else typed)
                sources = [s for s in expand_sources([typed], pattern)
                           if resolve_within_roots(s)]
        except (SourceError, ValueError) as exc:
            st.error(str(exc), icon=":material/block:")
with upload_tab:
    uploads = st.file_uploader(f"Corpus files (up to {upload_limit_mb()} MB each; larger corpora by path)",
                               accept_multiple_files=True, key="ingest_uploads")
    if uploads:
        folder = path / "artifacts" / "uploads"
        saved = [str(save_upload(folder, up.name, up.getvalue()).path) for up in uploads]
        if not typed:
            sources = saved
        st.caption(f"Saved {len(saved)} file(s) into the workspace: " + ", ".join(Path(s).name for s in saved))

if not sources:
    st.info("Name a file or folder, or upload files, to preview and ingest them.", icon=":material/info:")
else:
    files = [s for s in sources if not s.startswith("hf://")]
    st.markdown(f"**{len(sources)} source(s)**: " + ", ".join(f"`{Path(s).name}`" for s in sources[:8])
                + (" …" if len(sources) > 8 else ""))
    col1, col2, col3 = st.columns(3)
    fmt = col1.selectbox("Format", FORMATS, help="auto: from the file name (.jsonl, .json, .parquet, .csv, .tsv, "
                                                 ".txt, .md; .gz and .zst are decompressed)")
    layout = col2.selectbox("Layout", LAYOUTS, help="text: one text field; alpaca / sharegpt: instruction data "
                                                    "(kept structured); mcq: benchmark items")
    encoding = col3.text_input("Encoding", value="", placeholder="detected", help="e.g. gb18030, utf-16")
    preview = None
    if files:
        try:
            from core.readers import ReadOptions

            preview = preview_source(Path(files[0]), ReadOptions(fmt=fmt, encoding=encoding or None), limit=8)
        except (SourceError, ValueError, UnicodeDecodeError) as exc:
            st.error(f"cannot preview {files[0]}: {exc}")
    if preview is not None:
        st.markdown(f"Preview of `{Path(files[0]).name}`: format **{preview.fmt}**, encoding "
                    f"**{preview.encoding or 'binary'}**, layout guessed **{preview.guessed_layout}**")
        st.dataframe(pd.DataFrame(preview.rows).astype(str), hide_index=True, height=240)
    col1, col2, col3 = st.columns(3)
    field_options = ["(automatic)"] + (preview.fields if preview else [])
    text_field = col1.selectbox("Text field", field_options, key="ingest_text_field",
                                help="A field name or dotted path; automatic takes text/content or the layout's "
                                     "fields")
    template = col2.text_input("…or a template", placeholder="{title}\n{answer}",
                               help="Builds the text from several fields")
    txt_unit = col3.selectbox("TXT/Markdown unit", ["paragraph", "file"])
    col1, col2 = st.columns(2)
    default_name = re.sub(r"[^\w]+", "_", Path(sources[0]).stem.split(".")[0]).strip("_").lower() or "corpus"
    corpus = col1.text_input("Corpus name", value=default_name)
    role = col2.selectbox("Role", ROLES, key="ingest_role", help="domain: the target domain's text; general: replay text that keeps "
                                              "general ability; instruction: SFT data; benchmark: held-out "
                                              "evaluation items")
    if st.button("Ingest", type="primary", key="ingest_run", icon=":material/play_arrow:", disabled=not corpus.strip()):
        config = IngestConfig(
            sources=sources, corpus=corpus.strip(), role=role, fmt=fmt, layout=layout, txt_unit=txt_unit,
            encoding=encoding or None, template=template.replace("\\n", "\n") if template else None,
            text_field=text_field if not template and text_field != "(automatic)" else None,
            pattern=pattern if any(Path(s).is_dir() for s in sources) else field_default(IngestConfig, "pattern"))
        w.start_job(["ingest", *config_argv(config)], f"Ingest into {corpus.strip()}")

st.divider()
st.subheader("Corpora")
with w.read_ws() as ws:
    corpora = pd.DataFrame(ws.corpora())
    errors = ingest_errors(ws)
    error_counts = ingest_error_counts(ws)
    files = ingested_files(ws)
if corpora.empty:
    st.info("No corpus yet.")
else:
    st.dataframe(corpora, hide_index=True, column_config={
        "documents": st.column_config.NumberColumn(format="localized"), "chars": st.column_config.NumberColumn(format="localized"),
        "tokens": st.column_config.NumberColumn(format="localized")})
with st.expander(f"Ingested files ({len(files)})"):
    st.dataframe(files, hide_index=True)

st.subheader(f"Ingest errors ({int(error_counts['records'].sum()) if not error_counts.empty else 0:,})")
if errors.empty:
    st.success("No record was skipped.", icon=":material/check_circle:")
else:
    st.dataframe(error_counts, hide_index=True)
    st.dataframe(errors, hide_index=True, height=300)
