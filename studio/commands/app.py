"""`studio app` (the browser studio on a workspace) and `studio demo` (build the demo workspace and serve the app on
it at once: the build runs as a background job that the Overview page shows filling in)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from core.config import REPO_ROOT, data_root, workspaces_root
from core.demo import (
    DEFAULT_RECIPE,
    DEMO_JOB_KIND,
    STAGES_NAME,
    build_demo,
    demo_data_folder,
    demo_job,
    load_recipe,
)
from core.jobs import JOB_DIR_ENV, Job, get_step_job, launch_step_job
from core.parallel import set_parent_death_signal
from core.workspace import DB_NAME, Workspace, WorkspaceBusy
from studio.access import SignInRequired, bind_refusal, is_loopback, read_auth_settings, sign_in_problem
from studio.cli import CommandResult, Reporter, add_workspace_arguments

APP_FILE = REPO_ROOT / "studio" / "app.py"
SERVER_STOP_S = 10.0  # how long a stopping server may take before it is killed


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("app", help="start the browser studio on a workspace")
    add_workspace_arguments(p)
    _add_server_arguments(p)
    p.set_defaults(handler=app_command)

    p = sub.add_parser("demo", help="build the demo workspace from the shared data and serve the studio on it at once "
                                    "(the build runs on as a background job the Overview page shows)")
    p.add_argument("workspace", type=Path, nargs="?", default=None,
                   help="workspace folder (default: workspaces/demo in the checkout)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--progress-file", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, default=None,
                   help="the public data folder (default: $STUDIO_DATA, else ../shared/data)")
    p.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE, help="demo recipe (TOML)")
    p.add_argument("--no-app", action="store_true",
                   help="build the workspace here, in the foreground, and serve nothing")
    p.add_argument("--no-steps", action="store_true", help="ingest only; skip the recipe's curation steps")
    _add_server_arguments(p)
    p.set_defaults(handler=demo_command)


def _add_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="localhost",
                   help="address to serve on (default localhost; 0.0.0.0 shares it on the network, which needs "
                        "sign-in configured in .streamlit/secrets.toml or --no-auth)")
    p.add_argument("--no-auth", action="store_true",
                   help="serve a shared address without sign-in: anyone who reaches the port can read and change "
                        "the workspaces")
    p.add_argument("--max-upload-mb", type=int, default=None, help="largest upload the Ingest page accepts")


def check_access(args: argparse.Namespace) -> None:
    """Refuse, with the reason, to serve a shared address without working sign-in unless --no-auth says so."""
    if is_loopback(args.host):
        return
    problem = sign_in_problem(read_auth_settings())
    refusal = bind_refusal(args.host, problem, args.no_auth)
    if refusal:
        raise SignInRequired(refusal)
    if problem:  # --no-auth said so; working sign-in, where configured, still applies
        print(f"studio: serving {args.host} without sign-in (--no-auth; {problem}): anyone who reaches port "
              f"{args.port} can read and change the workspaces", file=sys.stderr)


def serve(workspace: Path, args: argparse.Namespace) -> int:
    """Run Streamlit in the foreground on `workspace` until interrupted."""
    env = dict(os.environ, STUDIO_WORKSPACE=str(workspace.resolve()))
    if args.max_upload_mb:
        env["STUDIO_UPLOAD_MB"] = str(args.max_upload_mb)
    roots = dict.fromkeys(str(p) for p in (data_root(), workspaces_root(), workspace.resolve().parent))
    env.setdefault("STUDIO_ROOTS", os.pathsep.join(roots))
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.headless", "true",
           "--server.port", str(args.port), "--server.address", args.host, "--browser.gatherUsageStats", "false",
           "--server.maxUploadSize", env.get("STUDIO_UPLOAD_MB", "200")]
    print(f"studio: serving {workspace} at http://{args.host}:{args.port} (Ctrl-C stops)", file=sys.stderr)
    # The server dies with this process: SIGTERM, SIGINT and SIGHUP are passed on to it (and waited for), and a
    # SIGKILL of this process, which cannot be passed on, reaches it as the kernel's parent-death signal.
    # With --json, stdout is the one JSON object: the server's own banner goes to stderr.
    server = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, preexec_fn=set_parent_death_signal,  # noqa: PLW1509
                              stdout=sys.stderr if getattr(args, "json", False) else None)
    stopping: list[int] = []

    def forward(signum: int, frame: object) -> None:
        stopping.append(signum)
        with contextlib.suppress(ProcessLookupError):
            server.send_signal(signal.SIGTERM if signum == signal.SIGHUP else signum)

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, forward) for sig in handled}
    try:
        while True:
            try:
                code = server.wait(timeout=SERVER_STOP_S if stopping else None)
                break
            except subprocess.TimeoutExpired:  # asked to stop and still serving: end it
                server.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if server.poll() is None:
            server.kill()
            server.wait()
    if stopping:
        print(f"studio: stopped the server ({signal.Signals(stopping[0]).name})", file=sys.stderr)
        return 0 if stopping[0] == signal.SIGINT else 128 + stopping[0]
    return code


def app_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    check_access(args)
    # Migrate first, so the app opens a current schema; only `init` and `demo` create a workspace. A workspace a job
    # writes (the demo's build) is served as it is: the job migrated it, and the pages read its published snapshot.
    try:
        Workspace.open(args.workspace, create=False, wait_s=2.0).close()
    except WorkspaceBusy as exc:
        print(f"studio app: {exc}; serving it meanwhile (the pages read the snapshot it publishes)", file=sys.stderr)
    code = serve(args.workspace, args)
    return CommandResult({"workspace": str(args.workspace), "exit": code}, ["studio app stopped"], code)


def demo_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    workspace = (args.workspace or workspaces_root() / "demo").expanduser().resolve()
    if args.no_app:
        return build_demo_here(workspace, args, report)
    check_access(args)  # before the build, so a refused address costs nothing
    job, reused = start_demo_job(workspace, args)
    print(f"studio demo: {'re-attached to the running' if reused else 'started the'} build job {job.job_id} "
          f"(log: {job.log_path}); it runs on if the app stops. The Overview page shows it filling in.",
          file=sys.stderr)
    code = serve(workspace, args)
    job = get_step_job(workspace, job.job_id)
    data = {"workspace": str(workspace), "job_id": job.job_id, "job_status": job.status, "job_log": job.log_path,
            "reused_job": reused, "exit": code}
    lines = ["studio demo stopped serving"]
    if job.active:
        lines.append(f"the build job {job.job_id} runs on (log: {job.log_path}); `studio demo` or `studio app "
                     f"{workspace}` shows it again")
    else:
        lines.append(f"the build job {job.job_id} {job.status}")
    return CommandResult(data, lines, code)


def start_demo_job(workspace: Path, args: argparse.Namespace) -> tuple[Job, bool]:
    """The running demo build of the workspace (re-attached, never started twice), or a new one launched as a step
    job: `studio demo WORKSPACE --no-app` in its own process group, so stopping the app leaves it running.
    Returns the job and whether it was already running."""
    running = demo_job(workspace, active_only=True)
    if running is not None:
        return running, True
    data = demo_data_folder(args.data)  # a wrong folder or recipe is said here, not in the job's log
    recipe = args.recipe.expanduser().resolve()
    load_recipe(recipe)
    if not (workspace / DB_NAME).exists():
        Workspace.open(workspace).close()  # the app opens an existing, current workspace; the job fills it
    argv = [DEMO_JOB_KIND, "--data", str(data), "--recipe", str(recipe), "--no-app",
            *(["--no-steps"] if args.no_steps else [])]
    return launch_step_job(workspace, argv, label="demo build: ingest and the recipe's steps"), False


def build_demo_here(workspace: Path, args: argparse.Namespace, report: Reporter) -> CommandResult:
    """The whole build in this process (`--no-app`; also what the demo job runs), with each step's wall time."""
    started = time.monotonic()
    job_dir = os.environ.get(JOB_DIR_ENV)
    with Workspace.open(workspace) as ws:
        result = build_demo(ws, args.data, args.recipe, report, steps=not args.no_steps,
                            stages_file=Path(job_dir) / STAGES_NAME if job_dir else None)
    seconds = round(time.monotonic() - started, 1)
    data = {"workspace": result.workspace, "documents_added": result.documents_added, "errors": result.errors,
            "corpora": result.corpora, "steps": result.steps, "seconds": seconds,
            "snapshots": [{"after": after, "seconds": s} for after, s in result.snapshots]}
    lines = [f"demo workspace {result.workspace}: {result.documents_added:,} documents added, "
             f"{result.errors:,} skipped records (see ingest_errors)"]
    for c in result.corpora:
        lines.append(f"  {c['corpus']:32} {c['role']:12} +{c['documents_added']:>7,}  "
                     f"({c['already_present']:,} already present, {c['errors']:,} errors)  {c['seconds']:.0f} s")
    for s in result.steps:
        lines.append(f"  step {s.get('stage', s['step'])} ({s['seconds']:.0f} s): "
                     + ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("step", "stage", "seconds")))
    ingest_seconds = sum(c["seconds"] for c in result.corpora)
    lines.append(f"  wall time: {seconds:.0f} s in all (ingest {ingest_seconds:.0f} s, "
                 + ", ".join(f"{s.get('stage', s['step'])} {s['seconds']:.0f} s" for s in result.steps) + ")")
    if result.snapshots:
        lines.append(f"  read snapshots published: {len(result.snapshots)}, "
                     f"{sum(s for _, s in result.snapshots):.1f} s in all")
    return CommandResult(data, lines)
