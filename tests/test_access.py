"""Access: the studio serves localhost unless told otherwise, a shared address needs sign-in (Streamlit's OIDC
`st.login`, `[auth]` in secrets.toml) or an explicit --no-auth, a signed-out session sees no workspace, and no
workspace or path outside the allowed roots can be named from the browser."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.config import REPO_ROOT, resolve_within_roots
from core.workspace import Workspace
from studio import access
from studio.cli import main as studio_main
from studio.commands import app as app_command

APP = str(REPO_ROOT / "studio" / "app.py")
AUTH = {  # the keys the README documents, with a provider's discovery URL (never fetched here)
    "redirect_uri": "https://studio.example.org/oauth2callback",
    "cookie_secret": "a-long-random-string-of-at-least-32-characters",
    "client_id": "studio",
    "client_secret": "s3cret",
    "server_metadata_url": "https://login.example.org/.well-known/openid-configuration",
}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """An empty, closed workspace (the app opens its own connections)."""
    path = tmp_path / "workspaces" / "team"
    Workspace.open(path).close()
    return path


@pytest.fixture
def secrets_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The only secrets file the CLI reads in these tests (absent until a test writes it)."""
    file = tmp_path / "secrets.toml"
    monkeypatch.setattr(access, "secrets_files", lambda: [file])
    return file


@pytest.fixture
def never_serve(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record a serve instead of starting Streamlit."""
    served: list[str] = []

    def fake_serve(workspace: Path, args: argparse.Namespace) -> int:
        served.append(args.host)
        return 0

    monkeypatch.setattr(app_command, "serve", fake_serve)
    return served


@pytest.mark.parametrize(("host", "shared"), [
    ("localhost", False), ("127.0.0.1", False), ("127.0.1.1", False), ("::1", False), ("[::1]", False),
    ("0.0.0.0", True), ("::", True), ("192.168.1.20", True), ("studio.example.org", True), ("", True),
])
def test_which_addresses_need_sign_in(host: str, shared: bool) -> None:
    problem = "sign-in is not configured"
    assert (access.bind_refusal(host, problem, no_auth=False) is not None) == shared
    assert access.bind_refusal(host, problem, no_auth=True) is None  # --no-auth allows any address
    assert access.bind_refusal(host, None, no_auth=False) is None  # so does working sign-in


def test_shared_bind_without_sign_in_is_refused(workspace: Path, secrets_file: Path, never_serve: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = studio_main(["app", str(workspace), "--host", "0.0.0.0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and never_serve == []
    assert len(err.splitlines()) == 1
    assert err.startswith("studio app: refusing to serve on 0.0.0.0 without sign-in: sign-in is not configured")
    assert "--no-auth" in err and str(secrets_file) in err


def test_demo_on_a_shared_address_is_refused_before_it_builds(tmp_path: Path, secrets_file: Path,
                                                              never_serve: list[str],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "demo"
    assert studio_main(["demo", str(target), "--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without sign-in" in capsys.readouterr().err
    assert not target.exists() and never_serve == []


def test_incomplete_sign_in_is_refused_with_the_missing_key(workspace: Path, secrets_file: Path,
                                                            never_serve: list[str],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    secrets_file.write_text("[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in AUTH.items() if k != "cookie_secret"))
    assert studio_main(["app", str(workspace), "--host", "0.0.0.0", "--port", "8600"]) == 2
    assert "[auth] lacks cookie_secret" in capsys.readouterr().err
    assert never_serve == []


def test_no_auth_serves_a_shared_address_and_says_so(workspace: Path, secrets_file: Path,
                                                     never_serve: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert studio_main(["app", str(workspace), "--host", "0.0.0.0", "--no-auth"]) == 0
    assert never_serve == ["0.0.0.0"]
    assert "without sign-in (--no-auth" in capsys.readouterr().err


def test_localhost_needs_nothing(workspace: Path, secrets_file: Path, never_serve: list[str]) -> None:
    assert studio_main(["app", str(workspace)]) == 0
    assert never_serve == ["localhost"]  # the default bind


def test_configured_sign_in_serves_a_shared_address(workspace: Path, secrets_file: Path,
                                                    never_serve: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    secrets_file.write_text("[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in AUTH.items()))
    monkeypatch.setattr(access, "authlib_installed", lambda: True)
    assert studio_main(["app", str(workspace), "--host", "0.0.0.0"]) == 0
    assert never_serve == ["0.0.0.0"]


@pytest.mark.parametrize(("auth", "problem"), [
    ({}, "sign-in is not configured"),
    ({**AUTH, "redirect_uri": "https://studio.example.org/"}, "redirect_uri must end with /oauth2callback"),
    ({k: v for k, v in AUTH.items() if k != "client_secret"}, "[auth] lacks client_secret"),
    ({"redirect_uri": AUTH["redirect_uri"], "cookie_secret": "x"}, "names no OpenID Connect provider"),
    ({"redirect_uri": AUTH["redirect_uri"], "cookie_secret": "x", "okta": {"client_id": "c"}},
     "[auth.okta] lacks client_secret, server_metadata_url"),
    ({"redirect_uri": AUTH["redirect_uri"], "cookie_secret": "x",
      "okta": {k: AUTH[k] for k in access.PROVIDER_KEYS}}, None),
    (AUTH, None),
], ids=["none", "redirect", "client-secret", "no-provider", "named-incomplete", "named", "default"])
def test_sign_in_settings_are_checked_as_streamlit_will(auth: dict, problem: str | None) -> None:
    found = access.sign_in_problem(auth, has_authlib=True)
    assert found == problem if problem is None else problem in found
    if problem is None:
        assert "Authlib" in access.sign_in_problem(auth, has_authlib=False)


def app_session(workspace: Path, monkeypatch: pytest.MonkeyPatch, user: dict | None,
                auth: dict | None = AUTH) -> AppTest:
    """The whole app (studio/app.py) in AppTest on `workspace`, with `[auth]` secrets and `st.user` as given."""
    monkeypatch.setenv("STUDIO_WORKSPACE", str(workspace))
    monkeypatch.setenv("STUDIO_WORKSPACES", str(workspace.parent))
    monkeypatch.setenv("STUDIO_ROOTS", str(workspace.parent))
    at = AppTest.from_file(APP, default_timeout=60)
    if auth is not None:
        at.secrets["auth"] = auth
    if user is not None:
        at.user = user
    return at.run()


def everything_shown(at: AppTest) -> str:
    return "\n".join(str(e.value) for kind in (at.title, at.markdown, at.caption, at.error, at.info)
                     for e in kind)


def test_signed_out_session_sees_only_the_sign_in_screen(workspace: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "authlib_installed", lambda: True)
    at = app_session(workspace, monkeypatch, {"is_logged_in": False})
    assert not at.exception
    assert [b.label for b in at.button] == ["Sign in"]
    shown = everything_shown(at)
    assert "sign in" in shown.lower()
    assert str(workspace) not in shown and workspace.name not in shown  # no workspace, not even its name
    assert not at.metric and not at.selectbox and not at.sidebar.button and not at.sidebar.caption


def test_signed_out_session_without_authlib_is_told_why(workspace: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "authlib_installed", lambda: False)
    at = app_session(workspace, monkeypatch, {"is_logged_in": False})
    assert not at.button and not at.metric
    assert any("Authlib" in e.value for e in at.error)


def test_signed_in_session_sees_the_pages(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = app_session(workspace, monkeypatch, {"is_logged_in": True, "email": "curator@example.org"})
    assert not at.exception
    assert any("Overview" in t.value for t in at.title)
    assert any("curator@example.org" in c.value for c in at.sidebar.caption)
    assert "sign_out" in [b.key for b in at.sidebar.button]
    assert any(str(workspace) in c.value for c in at.sidebar.caption)
    monkeypatch.setattr(access, "authlib_installed", lambda: True)
    at.sidebar.button(key="sign_out").click().run()  # st.logout: back to the sign-in screen
    assert [b.label for b in at.button] == ["Sign in"] and not at.title[0].value.endswith("Overview")


def test_a_workspace_outside_the_roots_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inside = tmp_path / "workspaces" / "ws"
    Workspace.open(inside).close()
    outside = tmp_path / "elsewhere" / "stolen"
    at = app_session(inside, monkeypatch, user=None, auth=None)  # a local studio: no sign-in
    folder = next(t for t in at.sidebar.text_input if t.label == "Folder")
    folder.set_value(str(inside.parent / ".." / "elsewhere" / "stolen")).run()
    next(b for b in at.sidebar.button if b.label == "Open / create").click().run()
    assert any("outside the folders this studio may read" in e.value for e in at.sidebar.error)
    assert not outside.exists(), "a refused path is never created"
    assert at.session_state["workspace"] == str(inside)

    folder = next(t for t in at.sidebar.text_input if t.label == "Folder")
    folder.set_value("second").run()  # a name: a new workspace under the workspaces folder, inside the roots
    next(b for b in at.sidebar.button if b.label == "Open / create").click().run()
    assert not at.exception
    assert at.session_state["workspace"] == str((inside.parent / "second").resolve())


def test_paths_outside_the_roots_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (tmp_path / "secret.jsonl").write_text("{}\n")
    os.symlink(tmp_path / "secret.jsonl", root / "data" / "link.jsonl")
    assert resolve_within_roots(root / "data", [root]) == (root / "data").resolve()
    for escape in (tmp_path / "secret.jsonl", root / ".." / "secret.jsonl", root / "data" / "link.jsonl", "/etc"):
        with pytest.raises(ValueError, match="outside the folders this studio may read"):
            resolve_within_roots(escape, [root])


@pytest.mark.browser
def test_a_served_studio_with_sign_in_shows_a_signed_out_browser_only_the_sign_in_screen(
        workspace: Path, tmp_path: Path, browser_page) -> None:
    import signal
    import socket
    import subprocess
    import sys
    import time

    home = tmp_path / "home"  # the server reads ~/.streamlit/secrets.toml: a home of the test's own
    (home / ".streamlit").mkdir(parents=True)
    (home / ".streamlit" / "secrets.toml").write_text(
        "[auth]\n" + "".join(f'{k} = "{v}"\n' for k, v in AUTH.items()), encoding="utf-8")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "app.log"
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "app", str(workspace), "--port", str(port),
                             "--host", "127.0.0.1"], cwd=REPO_ROOT, env=dict(os.environ, HOME=str(home)),
                            stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True)  # noqa: SIM115
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(0.3)
        page = browser_page(f"http://127.0.0.1:{port}")
        text = page.inner_text("[data-testid='stApp']")
        assert "sign in to open its workspaces" in text
        assert page.get_by_role("button", name="Sign in").count() == 1 or "Authlib" in text
        assert workspace.name not in text and "Overview" not in text and "Workspace" not in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
