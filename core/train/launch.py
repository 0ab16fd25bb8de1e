"""Launching training as a job: check the config against real files before anything starts, write the Accelerate
config for the chosen distribution (none, DDP, FSDP, DeepSpeed ZeRO-2/3) and start `accelerate launch` of
`core/train/run.py` through `core.jobs`. Also the dry-run estimate and the read side the page and the report use.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.ingest import file_sha256
from core.jobs import Job, JobError, launch_job, list_jobs, resume_job
from core.models import ModelUnavailable, resolve_lm
from core.steps import Step
from core.train.config import ConfigError, TrainConfig, parse_config
from core.train.data import (
    VALIDATION_SETS,
    check_export,
    manifest_of,
    manifest_sha256,
    mix_content_sha256,
    preference_examples,
    resolve_export,
    sft_examples,
    sft_file,
)
from core.train.metrics import read_metrics
from core.train.run import RESOLVED_NAME, STUDIO_MODEL_NAME
from core.workspace import Workspace

JOB_KIND = "train"
ACCELERATE_CONFIG_NAME = "accelerate.yaml"
RUN_SCRIPT = Path(__file__).resolve().parent / "run.py"


def _workspace_path(ws: Workspace | str | Path) -> Path:
    return ws.path if isinstance(ws, Workspace) else Path(ws).expanduser().resolve()


def model_context(path: str, trust_remote_code: bool) -> int | None:
    """The model's context length, from its config; ConfigError when the model cannot be found."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model {path!r} cannot be loaded: {first}") from exc
    return getattr(cfg, "max_position_embeddings", None)


def resolve(config: TrainConfig, workspace: Workspace | Path | None) -> dict[str, Any]:
    """Paths the training process needs, resolved and checked here so bad input is refused before launch."""
    try:
        model_path = resolve_lm(config.model, with_model=True)
    except ModelUnavailable as exc:
        raise ConfigError(str(exc)) from exc
    if not Path(model_path).exists() and "/" not in config.model:
        raise ConfigError(f"model {config.model!r} is neither a folder nor a Hugging Face id")
    context = model_context(model_path, config.trust_remote_code)
    if context is not None and config.block_size > context:
        raise ConfigError(f"block_size {config.block_size} exceeds the model's context of {context} tokens")
    resolved: dict[str, Any] = {"model_path": model_path, "context": context, "export": None, "data": None}
    if config.mix:
        export = resolve_export(config.mix, workspace)
        check_export(export, config.stage)
        resolved.update(export=str(export), manifest_sha256=manifest_sha256(export),
                        mix_content_sha256=mix_content_sha256(export), mix_name=manifest_of(export).get("name"))
    if config.stage == "sft":
        path = sft_file(Path(resolved["export"]) if resolved["export"] else None, config.data)
        resolved["data"] = str(path)
        resolved["examples"] = len(sft_examples(path))
    elif config.stage == "dpo":
        path = Path(config.data).expanduser().resolve()
        resolved["data"] = str(path)
        resolved["data_sha256"] = file_sha256(path)
        resolved["examples"] = len(preference_examples(path))
    return resolved


def accelerate_config(config: TrainConfig, cuda: bool | None = None) -> dict[str, Any]:
    """The Accelerate config of `[distributed]`: the studio never runs its own distributed runtime."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    d = config.distributed
    base: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE", "debug": False, "num_machines": d.num_machines,
        "machine_rank": d.machine_rank, "num_processes": d.num_processes, "mixed_precision": d.mixed_precision,
        "main_training_function": "main", "rdzv_backend": "static", "same_network": True, "downcast_bf16": "no",
        "tpu_env": [], "tpu_use_cluster": False, "tpu_use_sudo": False, "use_cpu": not cuda,
    }
    if d.num_machines > 1:
        base.update(main_process_ip=d.main_process_ip, main_process_port=d.main_process_port)
    if d.mode == "none":
        base.update(distributed_type="NO", num_processes=1)
    elif d.mode == "ddp":
        base.update(distributed_type="MULTI_GPU" if cuda else "MULTI_CPU", gpu_ids="all")
    elif d.mode == "fsdp":
        base.update(distributed_type="FSDP", fsdp_config={
            "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "FULL_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_offload_params": False, "fsdp_activation_checkpointing": config.gradient_checkpointing})
    else:
        stage = 2 if d.mode == "deepspeed2" else 3
        base.update(distributed_type="DEEPSPEED", deepspeed_config={
            "zero_stage": stage, "gradient_accumulation_steps": config.grad_accum,
            "gradient_clipping": config.max_grad_norm, "offload_optimizer_device": "none",
            "offload_param_device": "none", "zero3_init_flag": stage == 3, "zero3_save_16bit_model": stage == 3})
    return base


def write_accelerate_config(config: TrainConfig, path: Path, cuda: bool | None = None) -> Path:
    """Write the YAML and read it back through Accelerate's own loader, so a bad one fails here, not at launch."""
    from accelerate.commands.config.config_args import load_config_from_file

    path.write_text(yaml.safe_dump(accelerate_config(config, cuda), sort_keys=False), encoding="utf-8")
    try:
        load_config_from_file(str(path))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the generated Accelerate config is invalid: {exc}") from exc
    return path


def launch_argv() -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            "{job_dir}/" + ACCELERATE_CONFIG_NAME, str(RUN_SCRIPT), "{job_dir}"]


def launch_training(ws: Workspace | str | Path, config_text: str, *, env: dict[str, str] | None = None,
                    reuse: bool = False) -> Job:
    """Check `config_text` (TOML) and start it as a `train` job; ConfigError with the reason when it cannot run.
    With `reuse`, a job with the same config and the same resolved inputs (model, mix manifest hash) that finished
    or is still running is returned instead: launching it again would only compute the same model again; one that
    was killed or stopped before it finished is resumed from its last checkpoint (a re-run of the recipe after a
    crash continues the training it asked for, and leaves no second job beside the first)."""
    config = parse_config(config_text)
    resolved = resolve(config, ws if isinstance(ws, Workspace) else _workspace_path(ws))
    if reuse and (same := same_training(ws, config_text, resolved)) is not None:
        return same
    if reuse and (unfinished := same_training(ws, config_text, resolved, ended=("failed", "stopped"))) is not None:
        return resume_job(ws, unfinished.job_id, env=env)

    def prepare(folder: Path) -> None:
        (folder / RESOLVED_NAME).write_text(json.dumps(resolved, indent=2), encoding="utf-8")
        write_accelerate_config(config, folder / ACCELERATE_CONFIG_NAME)

    label = f"{config.stage.upper()} {config.method} on {Path(config.mix).name or Path(config.data).name}"
    return launch_job(ws, JOB_KIND, config_text, launch_argv(), label=label, env=env, prepare=prepare)


def same_training(ws: Workspace | str | Path, config_text: str, resolved: dict[str, Any],
                  ended: tuple[str, ...] = ("finished",)) -> Job | None:
    """The newest running train job, or one that ended as one of `ended`, launched with `config_text` on the same
    `resolved` inputs. The mix is compared by content (`mix_content_sha256`), not by its manifest's hash, which
    names the run that wrote it: re-running the curation and the mix with nothing changed must not train again."""
    wanted = _comparable(resolved)
    for job in list_jobs(ws, JOB_KIND):
        if job.config != config_text or not (job.active or job.status in ended):
            continue
        try:
            if _comparable(json.loads((job.folder / RESOLVED_NAME).read_text(encoding="utf-8"))) == wanted:
                return job
        except (OSError, ValueError):
            continue
    return None


def _comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resolved.items() if k != "manifest_sha256"}


def latest_training(ws: Workspace | str | Path, mix: str | None = None) -> Job:
    """The newest train job (on mix `mix`, by name or export folder, when given); JobError when there is none."""
    for job in list_jobs(ws, JOB_KIND):
        try:
            if mix is None or parse_config(job.config).mix == mix:
                return job
        except ConfigError:  # a config this version no longer reads is not the one asked for
            continue
    raise JobError(f"no training job{f' on mix {mix!r}' if mix else ''} in this workspace")


def wait_for_latest_training(ws: Workspace | str | Path, mix: str | None, progress: Any) -> Job:
    """The newest train job on `mix`, once it has ended (the steps that read its models wait for it)."""
    from core.jobs import wait_job

    return wait_job(ws, latest_training(ws, mix).job_id, poll_s=2.0, on_progress=lambda j: progress(
        0.0, f"waiting for training job {j.job_id}: {j.progress().get('message', '')}"))


# --- the read side: estimates, figures, comparisons ---------------------------------------------------------------
@dataclass
class Estimate:
    tokens: int | None
    examples: int | None
    steps: int
    tokens_per_step: int | None
    seconds: float | None  # training and validation
    rate_tokens_per_s: float | None
    rate_source: str
    validation_passes: int = 0
    validation_tokens: int = 0  # scored in all, over every pass and both sets
    validation_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def measured_rate(ws: Workspace | str | Path, config: TrainConfig) -> tuple[float | None, str]:
    """Median tokens/s of this workspace's earlier jobs with the same model, stage and method."""
    rates = []
    for job in list_jobs(ws, JOB_KIND):
        try:
            other = parse_config(job.config)
        except ConfigError:
            continue
        if (other.model, other.stage, other.method) != (config.model, config.stage, config.method):
            continue
        rates += [r["tokens_per_s"] for r in read_metrics(job.folder) if r.get("tokens_per_s")]
    if not rates:
        return None, "no earlier job with this model, stage and method: the time is known after the first steps"
    return statistics.median(rates), f"median of {len(rates):,} logged steps of earlier jobs"


def estimate(ws: Workspace | str | Path, config_text: str) -> Estimate:
    """Tokens, steps and time of a config before launching it (time at the rate measured by earlier jobs)."""
    from core.train.recipes import steps_for, validation_blocks_per_set

    config = parse_config(config_text)
    workspace = ws if isinstance(ws, Workspace) else _workspace_path(ws)
    tokens = examples = None
    if config.stage == "cpt":
        export = resolve_export(config.mix, workspace)
        tokens = int(manifest_of(export).get("budget", {}).get("exported_tokens") or 0)
        examples = tokens // config.block_size
    else:
        export = resolve_export(config.mix, workspace) if config.mix else None
        path = (sft_file(export, config.data) if config.stage == "sft"
                else Path(config.data).expanduser())
        examples = len(sft_examples(path) if config.stage == "sft" else preference_examples(path))
    steps = steps_for(max(examples or 0, 1), config)
    per_step = config.batch_size * config.grad_accum * config.distributed.num_processes * config.block_size
    rate, source = measured_rate(ws, config)
    run_tokens = steps * per_step if config.stage == "cpt" else None
    seconds = run_tokens / rate if rate and run_tokens else None
    if rate and seconds is None and examples:
        # sft/dpo: tokens per example are not known in advance; count the block size as an upper bound
        seconds = steps * per_step / rate
    # Validation: both sets at step 0, every eval_steps and at the end, in whole blocks. A forward pass costs about a
    # third of a training step per token (the backward pass about twice the forward), hence rate x 3.
    passes = (1 + steps // config.eval_steps + (1 if steps % config.eval_steps else 0)) if config.mix else 0
    val_tokens = passes * len(VALIDATION_SETS) * validation_blocks_per_set(config) * config.block_size
    val_seconds = val_tokens / (3 * rate) if rate else None
    if seconds is not None and val_seconds is not None:
        seconds += val_seconds
    return Estimate(tokens=tokens, examples=examples, steps=steps, tokens_per_step=per_step,
                    seconds=seconds, rate_tokens_per_s=rate, rate_source=source, validation_passes=passes,
                    validation_tokens=val_tokens, validation_seconds=val_seconds)


def job_summary(job: Job) -> dict[str, Any]:
    """A job's final figures for tables: steps, last loss, validation perplexities, throughput."""
    metrics = read_metrics(job.folder)
    out: dict[str, Any] = {"job_id": job.job_id, "status": job.status, "label": job.label,
                           "created_at": job.created_at, "steps": None, "loss": None,
                           "domain_val_ppl": None, "general_val_ppl": None, "tokens_per_s": None}
    if metrics:
        out["steps"] = metrics[-1].get("step")
        losses = [r["loss"] for r in metrics if r.get("loss") is not None]
        out["loss"] = losses[-1] if losses else None
        for key in ("domain_val_ppl", "general_val_ppl"):
            values = [r[key] for r in metrics if r.get(key) is not None]
            out[key] = values[-1] if values else None
        rates = [r["tokens_per_s"] for r in metrics if r.get("tokens_per_s")]
        out["tokens_per_s"] = statistics.median(rates) if rates else None
    card = job.folder / "model" / STUDIO_MODEL_NAME
    out["model"] = str(card.parent) if card.exists() else None
    return out


def model_card(job: Job) -> dict[str, Any] | None:
    path = job.folder / "model" / STUDIO_MODEL_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def eta_text(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


def available_mixes(ws: Workspace) -> list[dict[str, Any]]:
    """The workspace's exported mixes, newest first (name, export folder, tokens), for choosing what to train on."""
    rows = ws.query(
        "SELECT m.name, m.export_dir, m.train_tokens, r.ended_at FROM mixes m JOIN runs r ON r.run_id = m.mix_id "
        "WHERE r.status = 'ok' ORDER BY r.ended_at DESC")
    seen: dict[str, dict[str, Any]] = {}
    for name, export_dir, tokens, ended in rows:
        if name not in seen and export_dir and (Path(export_dir) / "manifest.json").exists():
            seen[name] = {"name": name, "export_dir": export_dir, "train_tokens": tokens, "ended_at": ended}
    return list(seen.values())


def metrics_frame(job: Job):  # -> pandas.DataFrame
    """The job's metrics.jsonl as a frame (one row per logged step), with perplexities added."""
    import pandas as pd

    frame = pd.DataFrame(read_metrics(job.folder))
    if frame.empty:
        return frame
    if "loss" in frame:
        frame["train_ppl"] = frame["loss"].map(lambda v: math.exp(min(v, 50.0)) if v == v and v is not None else None)
    return frame


@dataclass
class TrainJobConfig:
    """Training as a recipe asks for it: a preset, any TrainConfig key as an override, and whether to wait."""

    preset: str = "CPT"
    wait: bool = False  # wait for the job to end (else the Train page shows it live)
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"recipe": False})

    def train_config(self) -> Any:
        from core.train.config import preset_config

        return preset_config(self.preset, **self.overrides)

    def validate(self) -> None:
        self.train_config()


@dataclass
class TrainJobResult:
    job_id: str
    status: str
    output_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_training_job(ws: Workspace, cfg: TrainJobConfig, progress: Any) -> TrainJobResult:
    """The demo's training: a short CPU CPT job on the demo mix, launched as a job the Train page shows live (or
    waited for with `wait = true`); the recipe's defaults size it to a few minutes on 2 cores."""
    from core.jobs import wait_job
    from core.train.config import config_to_toml

    job = launch_training(ws, config_to_toml(cfg.train_config()), reuse=True)
    state = job.status if job.status != "running" else "started" if job.attempts == 1 else \
        f"resumed (attempt {job.attempts})"
    progress(0.5, f"training job {job.job_id} {state}")
    if cfg.wait:  # the job's own progress, so the demo's log and stages say how far training is
        job = wait_job(ws, job.job_id, poll_s=2.0, on_progress=lambda j: progress(
            0.5 + 0.5 * max(float(j.progress().get("fraction") or 0.0), 0.0),
            f"training job {j.job_id}: {j.progress().get('message', '')}"))
    if job.status == "failed":  # say so here, not later as an evaluation that finds no model
        raise RuntimeError(f"training job {job.job_id} failed (log: {job.log_path})\n{job.log_tail(5)}")
    return TrainJobResult(job.job_id, job.status, job.output_dir)


def _recipe_configs(table: dict[str, Any]) -> dict[None, TrainJobConfig]:
    table = {k: v for k, v in table.items() if k != "name"}
    return {None: TrainJobConfig(preset=table.pop("preset", "CPT"), wait=bool(table.pop("wait", False)),
                                 overrides=table)}


REGISTERED_STEP = Step("train", TrainJobConfig, run_training_job, kind="job", recipe_configs=_recipe_configs)
