"""The studio in the browser: `studio app WORKSPACE` (or `streamlit run studio/app.py`).

One page per step of the flow, in flow order; the sidebar picks, creates and opens a workspace.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `streamlit run studio/app.py` puts only studio/ on the path
    sys.path.insert(0, str(REPO_ROOT))

from core.config import allowed_roots, resolve_within_roots, workspaces_root  # noqa: E402
from core.workspace import DB_NAME, Workspace, WorkspaceError  # noqa: E402
from studio.access import login_providers, sign_in_problem  # noqa: E402
from studio.widgets import WORKSPACE_KEY, workspace_path  # noqa: E402

# (file under pages/, title, icon): the flow, in order. Only pages that work are listed.
PAGES: list[tuple[str, str, str]] = [
    ("home.py", "Overview", ":material/dashboard:"),
    ("ingest.py", "Ingest", ":material/upload_file:"),
    ("corpus.py", "Corpus", ":material/library_books:"),
    ("dedup.py", "Deduplication", ":material/content_copy:"),
    ("quality.py", "Quality", ":material/verified:"),
    ("terms.py", "Terminology", ":material/spellcheck:"),
    ("recall.py", "Recall", ":material/target:"),
    ("mix.py", "Mix", ":material/blender:"),
    ("train.py", "Train", ":material/model_training:"),
    ("evaluate.py", "Evaluate", ":material/fact_check:"),
    ("report.py", "Report", ":material/summarize:"),
]


def known_workspaces() -> list[Path]:
    root = workspaces_root()
    roots = allowed_roots()
    found = sorted(p.parent for p in root.glob(f"*/{DB_NAME}")
                   if any(p.resolve().is_relative_to(r) for r in roots)) if root.is_dir() else []
    current = workspace_path()
    if current is not None and current not in found:
        found.insert(0, current)
    return found


def workspace_sidebar() -> None:
    with st.sidebar:
        st.markdown("### :material/database: Workspace")
        options = known_workspaces()
        current = workspace_path()
        if options:
            index = options.index(current) if current in options else 0
            choice = st.selectbox("Open", options, index=index, format_func=lambda p: f"{p.name}  ({p.parent})",
                                  key="workspace_choice")
            if choice != current:
                st.session_state[WORKSPACE_KEY] = str(choice)
                st.rerun()
        with st.expander("New or other workspace"):
            typed = st.text_input("Folder", placeholder=str(workspaces_root() / "my-workspace"),
                                  help="A new folder is created as a workspace; an existing one is opened "
                                       "(its schema is migrated forward, nothing is lost).")
            if st.button("Open / create", icon=":material/create_new_folder:", disabled=not typed):
                path = Path(typed).expanduser()
                if not path.is_absolute():
                    path = workspaces_root() / path
                try:
                    path = resolve_within_roots(path)  # before the open, which would create the folder
                    Workspace.open(path, wait_s=2.0).close()
                except (WorkspaceError, ValueError) as exc:
                    st.error(str(exc))
                else:
                    st.session_state[WORKSPACE_KEY] = str(path.resolve())
                    st.session_state.pop("workspace_choice", None)  # else the picker's old choice reopens the old one
                    st.rerun()
        if current is not None:
            st.caption(f"`{current}`")


def sign_in_settings() -> dict | None:
    """The `[auth]` secrets the server runs with; None where sign-in is not configured (a local studio)."""
    if not st.secrets.load_if_toml_exists():
        return None
    auth = st.secrets.get("auth")
    return dict(auth) if auth else None


def sign_in_gate() -> None:
    """With sign-in configured, a session that has not signed in sees the sign-in screen and nothing else: no
    workspace, no page. Streamlit's `st.login` does the OpenID Connect flow and keeps the identity cookie."""
    auth = sign_in_settings()
    if auth is None:
        return
    if st.user.get("is_logged_in"):
        with st.sidebar:
            st.caption(f"Signed in as {st.user.get('email') or st.user.get('name') or 'a user'}")
            st.button("Sign out", icon=":material/logout:", on_click=st.logout, key="sign_out")
        return
    st.title(":material/lock: Studio")
    st.markdown("This studio is shared: sign in to open its workspaces.")
    problem = sign_in_problem(auth)
    if problem:
        st.error(f"Sign-in cannot start: {problem}. Ask whoever runs this studio to fix `.streamlit/secrets.toml`.",
                 icon=":material/error:")
    else:
        for provider in login_providers(auth):
            label = "Sign in" if provider == "default" else f"Sign in with {provider}"
            st.button(label, icon=":material/login:", key=f"sign_in_{provider}", on_click=st.login,
                      args=() if provider == "default" else (provider,))
    st.stop()


def main() -> None:
    st.set_page_config(page_title="Studio", page_icon=":material/biotech:", layout="wide")
    sign_in_gate()
    if WORKSPACE_KEY not in st.session_state and workspace_path() is not None:
        st.session_state[WORKSPACE_KEY] = str(workspace_path())
    pages = [st.Page(str(REPO_ROOT / "pages" / file), title=title, icon=icon) for file, title, icon in PAGES]
    navigation = st.navigation(pages)
    workspace_sidebar()
    navigation.run()


main()
