"""The training script: `accelerate launch core/train/run.py JOB_DIR`, started by `core.train.launch` as a job.

It reads `JOB_DIR/config.toml` and `JOB_DIR/resolved.json` (paths the launcher resolved), trains, and writes only
files: `metrics.jsonl`, `progress.json`, checkpoints under `checkpoints/`, the model under `model/` (with its
tokenizer and `studio_model.json`), for LoRA the adapter under `adapter/`, with averaging `model_averaged/`, and
`result.json`. SIGTERM checkpoints and exits cleanly; with `STUDIO_JOB_RESUME=1` it continues from the last
checkpoint (same data order, optimizer, scheduler and RNG state).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script by accelerate launch: the repository must be importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from core.jobs import RESUME_ENV, register_process, write_progress, write_result  # noqa: E402
from core.train.config import TrainConfig, parse_config  # noqa: E402
from core.train.metrics import read_metrics, truncate_metrics  # noqa: E402

STUDIO_MODEL_NAME = "studio_model.json"
RESOLVED_NAME = "resolved.json"
# Seconds to sleep after each step: lets tests and demos watch a tiny model train (never set by the page).
THROTTLE_ENV = "STUDIO_TRAIN_STEP_DELAY"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


# The Trainer writes a checkpoint's files in place and its trainer_state.json last: a checkpoint folder without it is
# one a kill interrupted, whose weights or optimizer state may be half written (resuming from it fails).
CHECKPOINT_DONE = "trainer_state.json"
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")
# Folders save_model / save_averaged write before renaming them into place: left over only by a kill.
TMP_FOLDERS = ("model.tmp", "adapter.tmp", "model_averaged.tmp")


def _checkpoints(job_dir: Path) -> list[tuple[int, Path]]:
    folder = job_dir / "checkpoints"
    found = [(int(m.group(1)), p) for p in (folder.iterdir() if folder.is_dir() else [])
             if (m := CHECKPOINT_RE.fullmatch(p.name)) and p.is_dir()]
    return sorted(found)


def last_checkpoint(job_dir: Path) -> str | None:
    """The newest complete checkpoint (one the Trainer finished writing), or None. A newer folder a kill left
    half written is passed over, so a resume continues from the last checkpoint that can be read."""
    complete = [path for _, path in _checkpoints(job_dir) if (path / CHECKPOINT_DONE).is_file()]
    return str(complete[-1]) if complete else None


def checkpoint_step(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


def load_checkpoint(trainer: Any, checkpoint: str) -> None:
    """The checkpoint's weights (or adapter) and trainer state into `trainer`, without training."""
    from transformers.trainer_callback import TrainerState

    trainer._load_from_checkpoint(checkpoint)
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / CHECKPOINT_DONE))


def remove_half_written(job_dir: Path) -> list[str]:
    """Remove what a killed attempt left half written (checkpoint folders without their trainer state, the
    temporary model folders), so a resumed job neither reads nor leaves them; returns their names."""
    removed = []
    for _, path in _checkpoints(job_dir):
        if not (path / CHECKPOINT_DONE).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"checkpoints/{path.name}")
    for name in TMP_FOLDERS:
        if (job_dir / name).exists():
            shutil.rmtree(job_dir / name, ignore_errors=True)
            removed.append(name)
    return removed


def _replace_folder(tmp: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def model_card(config: TrainConfig, resolved: dict[str, Any], job_dir: Path, status: str, step: int,
               max_steps: int, **extra: Any) -> dict[str, Any]:
    metrics = read_metrics(job_dir)
    last_val = {}
    for record in metrics:
        last_val.update({k: v for k, v in record.items() if k.endswith("_val_loss") or k.endswith("_val_ppl")})
    losses = [r["loss"] for r in metrics if r.get("loss") is not None]
    return {
        "format": "studio-model/1", "job_id": os.environ.get("STUDIO_JOB_ID", job_dir.name), "status": status,
        "usable": True, "complete": status == "finished", "step": step, "max_steps": max_steps,
        "stage": config.stage, "method": config.method, "base_model": config.model,
        "base_model_path": resolved["model_path"], "mix": config.mix or None, "export": resolved.get("export"),
        "manifest_sha256": resolved.get("manifest_sha256"), "data": resolved.get("data"),
        "final_loss": losses[-1] if losses else None, "validation": last_val,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"), **extra}


def save_model(prepared: Any, config: TrainConfig, resolved: dict[str, Any], job_dir: Path, status: str) -> Path:
    """The usable model under `model/` (merged for LoRA, the adapter under `adapter/`), saved by rank 0."""
    trainer = prepared.trainer
    step = trainer.state.global_step
    final = job_dir / "model"
    tmp = job_dir / "model.tmp"
    if config.method == "lora":
        trainer.save_model(str(job_dir / "adapter.tmp"))
        if is_main_process():
            prepared.tokenizer.save_pretrained(str(job_dir / "adapter.tmp"))
            _replace_folder(job_dir / "adapter.tmp", job_dir / "adapter")
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(str(tmp))
    else:
        trainer.save_model(str(tmp))
    if is_main_process():
        prepared.tokenizer.save_pretrained(str(tmp))
        card = model_card(config, resolved, job_dir, status, step, prepared.max_steps,
                          frozen_parameters=len(prepared.frozen),
                          adapter=str(job_dir / "adapter") if config.method == "lora" else None)
        (tmp / STUDIO_MODEL_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
        _replace_folder(tmp, final)
    return final


def save_averaged(config: TrainConfig, resolved: dict[str, Any], job_dir: Path, step: int, max_steps: int) -> Path:
    """alpha * base + (1 - alpha) * trained, saved as its own model so the report can compare both."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.train.callbacks import average_weights

    trained = AutoModelForCausalLM.from_pretrained(str(job_dir / "model"), dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(resolved["model_path"], dtype=torch.float32,
                                                trust_remote_code=config.trust_remote_code)
    averaged = average_weights(base.state_dict(), trained.state_dict(), config.average.alpha)
    trained.load_state_dict(averaged)
    tmp = job_dir / "model_averaged.tmp"
    trained.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(job_dir / "model")).save_pretrained(str(tmp))
    card = model_card(config, resolved, job_dir, "finished", step, max_steps, averaged_with_base=True,
                      average_alpha=config.average.alpha,
                      average_rule="alpha * base + (1 - alpha) * trained")
    (tmp / STUDIO_MODEL_NAME).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    _replace_folder(tmp, job_dir / "model_averaged")
    return job_dir / "model_averaged"


def train(job_dir: Path, resume: bool = False) -> dict[str, Any]:
    """Train the job in `job_dir` in this process; returns what `result.json` says."""
    from core.train.recipes import build_trainer

    job_dir = Path(job_dir).resolve()
    config = parse_config((job_dir / "config.toml").read_text(encoding="utf-8"))
    resolved = json.loads((job_dir / RESOLVED_NAME).read_text(encoding="utf-8"))
    register_process(job_dir)
    if resume and is_main_process() and (removed := remove_half_written(job_dir)):
        print(f"removed what the interrupted attempt left half written: {', '.join(removed)}", flush=True)
    checkpoint = last_checkpoint(job_dir) if resume else None
    elapsed_before = 0.0
    if is_main_process():
        if checkpoint is not None:
            step = checkpoint_step(checkpoint)
            elapsed_before = truncate_metrics(job_dir, step)
            print(f"resuming from {checkpoint} (step {step})", flush=True)
        else:
            if resume:
                print("no checkpoint to resume from: starting over", flush=True)
            (job_dir / "metrics.jsonl").unlink(missing_ok=True)
        write_progress(job_dir, -1.0, "loading the model and the data")
    started = time.time()
    prepared = build_trainer(config, resolved, job_dir, elapsed_before,
                             float(os.environ.get(THROTTLE_ENV, "0") or 0))
    if is_main_process():
        write_progress(job_dir, 0.0, f"training, {prepared.max_steps:,} steps", max_steps=prepared.max_steps)
    if checkpoint is not None and checkpoint_step(checkpoint) >= prepared.max_steps:
        # Killed after its last checkpoint, before its model was saved: nothing is left to train (the Trainer,
        # resumed there, would take one step past max_steps before it checks), so the checkpoint is the model.
        print(f"{Path(checkpoint).name} is the last step: nothing left to train", flush=True)
        load_checkpoint(prepared.trainer, checkpoint)
    else:
        prepared.trainer.train(resume_from_checkpoint=checkpoint)
    step = prepared.trainer.state.global_step
    status = "stopped" if prepared.stop.stopped_at is not None else "finished"
    save_model(prepared, config, resolved, job_dir, status)
    averaged = None
    if status == "finished" and config.average.enabled and is_main_process():
        averaged = str(save_averaged(config, resolved, job_dir, step, prepared.max_steps))
    result = {"status": status, "step": step, "max_steps": prepared.max_steps, "model": str(job_dir / "model"),
              "model_averaged": averaged, "seconds": round(time.time() - started, 1),
              "frozen_parameters": prepared.frozen[:50]}
    if is_main_process():
        message = (f"stopped at step {step:,}: checkpoint saved, model usable, resumable" if status == "stopped"
                   else f"finished {step:,} steps")
        write_progress(job_dir, step / max(prepared.max_steps, 1), message, step=step,
                       max_steps=prepared.max_steps, eta_s=0)
        write_result(job_dir, status, **{k: v for k, v in result.items() if k != "status"})
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: run.py JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(argv[0])
    try:
        result = train(job_dir, resume=os.environ.get(RESUME_ENV) == "1")
    except BaseException as exc:
        traceback.print_exc()
        if is_main_process():
            write_result(job_dir, "failed", error=f"{type(exc).__name__}: {exc}".strip()[:2000])
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
