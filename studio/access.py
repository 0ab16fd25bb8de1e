"""Who may use a served studio: sign-in through Streamlit's OpenID Connect (`st.login`), configured in the
`[auth]` section of `.streamlit/secrets.toml`, and the check `studio app --host` makes before it serves.

The studio binds to localhost unless told otherwise; an address that other machines reach needs sign-in, or an
explicit `--no-auth`. This module reads the same secrets files the server will read and never imports
streamlit, so the CLI decides before it starts a server.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from core.config import REPO_ROOT

# Streamlit's own requirements (streamlit/auth_util.py: validate_auth_credentials, get_validated_redirect_uri).
SHARED_AUTH_KEYS = ("redirect_uri", "cookie_secret")
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
REDIRECT_PATH = "/oauth2callback"
AUTHLIB_MINIMUM = (1, 3, 2)
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class SignInRequired(ValueError):
    """Serving on a shared address without working sign-in; the message says why and what to do."""


def secrets_files() -> list[Path]:
    """Where the served app reads secrets: Streamlit's defaults, the user's and the project's (the server runs
    in the checkout), the later overriding the earlier."""
    return [Path.home() / ".streamlit" / "secrets.toml", REPO_ROOT / ".streamlit" / "secrets.toml"]


def read_auth_settings(files: list[Path] | None = None) -> dict[str, Any]:
    """The merged `[auth]` section of the secrets files ({} where none has one); ValueError for a file that is
    not valid TOML, since the server would not read it either."""
    auth: dict[str, Any] = {}
    for file in files if files is not None else secrets_files():
        if not file.is_file():
            continue
        try:
            section = tomllib.loads(file.read_text(encoding="utf-8")).get("auth")
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file} is not valid TOML: {exc}") from exc
        if isinstance(section, Mapping):
            auth.update(section)
    return auth


def login_providers(auth: Mapping[str, Any]) -> list[str]:
    """The providers a user can sign in with: "default" when `[auth]` itself names one, then each `[auth.NAME]`."""
    named = [name for name, value in auth.items() if isinstance(value, Mapping)]
    return (["default"] if any(key in auth for key in PROVIDER_KEYS) else []) + named


def authlib_installed() -> bool:
    """Streamlit's sign-in needs Authlib >= 1.3.2 (a dependency of the project; checked because an environment may lack it)."""
    try:
        version = metadata.version("Authlib")
    except metadata.PackageNotFoundError:
        return False
    parts = [int(p) for p in version.split(".")[:3] if p.isdigit()]
    return tuple(parts) >= AUTHLIB_MINIMUM


def sign_in_problem(auth: Mapping[str, Any], has_authlib: bool | None = None) -> str | None:
    """Why sign-in would not work with this `[auth]` section, in one clause; None when it would."""
    if not auth:
        return "sign-in is not configured (no [auth] section in " + " or ".join(map(str, secrets_files())) + ")"
    missing = [key for key in SHARED_AUTH_KEYS if not auth.get(key)]
    if missing:
        return f"[auth] lacks {', '.join(missing)}"
    if not str(auth["redirect_uri"]).rstrip("/").endswith(REDIRECT_PATH):
        return f"[auth] redirect_uri must end with {REDIRECT_PATH} (it is {auth['redirect_uri']})"
    providers = login_providers(auth)
    if not providers:
        return f"[auth] names no OpenID Connect provider ({', '.join(PROVIDER_KEYS)})"
    for name in providers:
        section = auth if name == "default" else auth[name]
        if "_" in name:
            return f"[auth.{name}]: Streamlit provider names may not contain '_'"
        lacking = [key for key in PROVIDER_KEYS if not section.get(key)]
        if lacking:
            where = "[auth]" if name == "default" else f"[auth.{name}]"
            return f"{where} lacks {', '.join(lacking)}"
    if not (authlib_installed() if has_authlib is None else has_authlib):
        return "sign-in needs Authlib>=1.3.2, which is not installed (bash .ci/install installs it)"
    return None


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable only from this machine; a name other than localhost counts as shared."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def bind_refusal(host: str, problem: str | None, no_auth: bool) -> str | None:
    """The one-line reason not to serve on `host`, or None: a loopback address, working sign-in (`problem` is
    None) or an explicit `--no-auth` may serve."""
    if is_loopback(host) or no_auth or problem is None:
        return None
    return (f"refusing to serve on {host or 'all interfaces'} without sign-in: {problem}; configure [auth] in "
            f".streamlit/secrets.toml (README: Serving to a team) or pass --no-auth to serve it open")
