"""`studio train`, `studio jobs`, `studio stop`, `studio resume`: training as jobs that outlive the command.

`train` checks the config and starts `accelerate launch` of the training script in its own process group; without
`--detach` it then follows the job's progress file (holding no workspace connection) until it ends. Ctrl-C leaves
the job running; `studio stop` checkpoints and ends it, `studio resume` continues it from that checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from core.jobs import (
    JOB_FILE,
    Job,
    cancel_step_job,
    get_job,
    list_jobs,
    list_step_jobs,
    resume_job,
    step_jobs_root,
    stop_job,
    wait_job,
)
from core.workspace import WorkspaceError
from studio.cli import CommandResult, Reporter, add_workspace_arguments


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train on an exported mix (CPT, SFT or DPO) as a background job",
        description="Check a training config (TOML) and launch it with `accelerate launch` as a job of the "
                    "workspace: output in WORKSPACE/artifacts/jobs/JOB (metrics.jsonl, checkpoints, model/).")
    add_workspace_arguments(p)
    p.add_argument("--config", metavar="FILE", help="the training config (TOML); see --write-preset")
    p.add_argument("--detach", action="store_true", help="return once the job has started")
    p.add_argument("--dry-run", action="store_true", help="check the config and estimate tokens, steps and time")
    p.add_argument("--write-preset", metavar="NAME",
                   help="write a preset config to --config FILE and stop (CPT, 'Post-pretraining (conservative)', "
                        "SFT, DPO)")
    p.add_argument("--mix", default="", help="the mix for --write-preset (a mix name or an export folder)")
    p.set_defaults(handler=train_command)

    p = sub.add_parser("jobs", help="list the workspace's jobs (training and others) with their status",
                       description="Every job of the workspace, newest first; a job whose process vanished is "
                                   "marked failed with its log tail.")
    add_workspace_arguments(p)
    p.add_argument("--kind", help="only jobs of this kind (e.g. train)")
    p.set_defaults(handler=jobs_command)

    p = sub.add_parser("stop", help="stop a running job: it saves a checkpoint and exits cleanly")
    add_workspace_arguments(p)
    p.add_argument("job", help="the job id (see `studio jobs`)")
    p.set_defaults(handler=stop_command)

    p = sub.add_parser("resume", help="resume a stopped or failed job from its last checkpoint")
    add_workspace_arguments(p)
    p.add_argument("job", help="the job id (see `studio jobs`)")
    p.add_argument("--detach", action="store_true", help="return once the job has restarted")
    p.set_defaults(handler=resume_command)


def _job_line(job: Job) -> str:
    progress = job.progress() if job.active else {}
    where = f" {progress.get('message')}" if progress.get("message") else ""
    return f"{job.job_id:34} {job.status:9} {job.label[:40]:40}{where}"


def _follow(workspace: Path, job: Job, report: Reporter) -> Job:
    def show(current: Job) -> None:
        progress = current.progress()
        eta = progress.get("eta_s")
        suffix = f", ETA {int(eta)} s" if isinstance(eta, int | float) and eta > 0 else ""
        report(float(progress.get("fraction", -1.0)), f"{progress.get('message', 'starting')}{suffix}")

    try:
        return wait_job(workspace, job.job_id, poll_s=1.0, on_progress=show)
    except KeyboardInterrupt:
        print(f"\nthe job keeps running: `studio jobs {workspace}` to watch it, "
              f"`studio stop {workspace} {job.job_id}` to stop it", file=sys.stderr)
        return get_job(workspace, job.job_id)


def _outcome(job: Job, started: str) -> CommandResult:
    lines = [f"{started} job {job.job_id}: {job.status}", f"output: {job.output_dir}"]
    result = job.result() or {}
    if job.status in ("finished", "stopped"):
        lines.append(f"model: {result.get('model', job.output_dir + '/model')} (step {result.get('step')} of "
                     f"{result.get('max_steps')})")
        if result.get("model_averaged"):
            lines.append(f"averaged with the base: {result['model_averaged']}")
    if job.status == "failed" and job.error:
        lines.append(job.error)
    return CommandResult(job.to_dict(), lines, exit_code=1 if job.status == "failed" else 0)


def train_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    from core.train.config import config_to_toml, preset_config

    if not args.config:
        raise ValueError("--config FILE is required")
    path = Path(args.config)
    if args.write_preset:
        config = preset_config(args.write_preset, mix=args.mix)
        path.write_text(config_to_toml(config), encoding="utf-8")
        return CommandResult({"config": str(path), "preset": args.write_preset},
                             [f"wrote preset {args.write_preset!r} to {path}"])
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    workspace = args.workspace.expanduser().resolve()
    if args.dry_run:
        from core.train.launch import estimate, eta_text

        est = estimate(workspace, text)
        return CommandResult({"estimate": est.to_dict()}, [
            f"{est.steps:,} optimizer steps of {est.tokens_per_step:,} tokens (at most)"
            + (f"; {est.tokens:,} training tokens" if est.tokens else f"; {est.examples:,} examples"),
            f"time: {eta_text(est.seconds)} ({est.rate_source})"])
    from core.train.launch import launch_training

    report(-1.0, "checking the config and launching")
    job = launch_training(workspace, text)
    if args.detach:
        return _outcome(job, "started")
    return _outcome(_follow(workspace, job, report), "training")


def jobs_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    workspace = args.workspace.expanduser().resolve()
    steps = [j for j in list_step_jobs(workspace) if args.kind in (None, j.kind)]  # `studio <step>` jobs
    try:
        recorded, note = list_jobs(workspace, args.kind), []
    except WorkspaceError as exc:  # a step job holds the workspace (one writer): its jobs table waits
        if not any(j.active for j in steps):
            raise
        recorded, note = [], [f"(jobs recorded in the workspace not listed: {str(exc).splitlines()[0]})"]
    jobs = sorted([*steps, *recorded], key=lambda j: j.created_at or datetime.min, reverse=True)
    lines = [_job_line(j) for j in jobs] + note or ["no jobs yet"]
    return CommandResult({"jobs": [j.to_dict() for j in jobs]}, lines)


def stop_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    workspace = args.workspace.expanduser().resolve()
    if (step_jobs_root(workspace) / args.job / JOB_FILE).exists():  # a `studio <step>` job: cancelled
        job = cancel_step_job(workspace, args.job)
        return CommandResult(job.to_dict(), [f"job {job.job_id}: {job.status} (its unfinished work is rolled back)"])
    job = stop_job(workspace, args.job)
    return CommandResult(job.to_dict(), [f"job {job.job_id}: {job.status} (it checkpoints and exits at the end of "
                                         "its current step)"])


def resume_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    workspace = args.workspace.expanduser().resolve()
    job = resume_job(workspace, args.job)
    if args.detach:
        return _outcome(job, "resumed")
    return _outcome(_follow(workspace, job, report), "resumed")
