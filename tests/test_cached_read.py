"""A page's remembered reads (`widgets.cached_read`): a rerun reads nothing again while the workspace is unchanged,
and any write to the workspace (by this process or a job's) makes the next rerun read afresh."""

from __future__ import annotations

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from core.workspace import Workspace

CALLS: list[str] = []


def corpus_names(ws: Workspace, role: str) -> list[str]:
    """The read the page remembers: counted, so the test sees whether it ran."""
    CALLS.append(role)
    return [c["name"] for c in ws.corpora() if c["role"] == role]


def _script() -> None:
    import streamlit as st
    from test_cached_read import corpus_names

    from studio import widgets as w

    st.write("names=" + ",".join(w.cached_read(corpus_names, "domain")))


def _ingest(ws_path: Path, corpus: str) -> None:
    from core.ingest import IngestConfig, ingest

    source = ws_path.parent / f"{corpus}.jsonl"
    source.write_text("".join(json.dumps({"text": f"{corpus} document {i} about hypertension"}) + "\n"
                              for i in range(3)), encoding="utf-8")
    with Workspace.open(ws_path) as ws:
        ingest(ws, IngestConfig(sources=[str(source)], corpus=corpus, role="domain"))


def test_reruns_reuse_a_read_until_the_workspace_changes(tmp_path: Path) -> None:
    ws_path = tmp_path / "ws"
    _ingest(ws_path, "first")
    CALLS.clear()
    at = AppTest.from_function(_script, default_timeout=60)
    at.session_state["workspace"] = str(ws_path)
    at.run()
    assert not at.exception
    assert at.markdown[0].value == "names=first"
    at.run()
    at.run()
    assert CALLS == ["domain"]  # two reruns, no second read

    _ingest(ws_path, "second")  # a write, as a job would make it
    at.run()
    assert at.markdown[0].value == "names=first,second"
    assert CALLS == ["domain", "domain"]
