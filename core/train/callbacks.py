"""What the studio adds to transformers' Trainer and TRL's trainers: validation loss on the mix's domain and general
held-out text, `metrics.jsonl`, a stop signal that checkpoints and exits cleanly, EWC, layer freezing and weight
averaging with the base model."""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from core.jobs import stop_requested, write_progress
from core.train.metrics import METRICS_NAME


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


# --- validation loss --------------------------------------------------------------------------------------------
@torch.no_grad()
def block_loss(model: torch.nn.Module, blocks: list[list[int]], batch_size: int) -> float:
    """Mean next-token loss over packed blocks (every block the same length, so the mean of means is exact)."""
    if not blocks:
        return float("nan")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(blocks), batch_size):
            ids = torch.tensor(blocks[start:start + batch_size], dtype=torch.long, device=device)
            out = model(input_ids=ids, labels=ids)
            total += float(out.loss) * len(ids)
            count += len(ids)
    finally:
        if was_training:
            model.train()
    return total / count


class ValidationLossCallback(TrainerCallback):
    """Every `eval_steps` (and before the first step): loss and perplexity on each held-out set, so the curve shows
    domain perplexity falling and general perplexity rising while it happens."""

    def __init__(self, sets: dict[str, list[list[int]]], eval_steps: int, batch_size: int) -> None:
        self.sets = sets
        self.eval_steps = eval_steps
        self.batch_size = batch_size
        self.pending: dict[str, float] = {}

    def measure(self, model: torch.nn.Module) -> dict[str, float]:
        out = {}
        for name, blocks in self.sets.items():
            loss = block_loss(model, blocks, self.batch_size)
            out[f"{name}_val_loss"] = loss
            out[f"{name}_val_ppl"] = math.exp(min(loss, 50.0))
        return out

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == 0 and model is not None:
            self.pending = self.measure(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        if model is not None and (state.global_step % self.eval_steps == 0 or state.global_step >= state.max_steps):
            self.pending.update(self.measure(model))
            control.should_log = True
        return control


class MetricsCallback(TrainerCallback):
    """One JSON line per logging step (rank 0): step, epoch, loss, learning rate, grad norm, tokens/s, the
    validation losses when measured, elapsed and ETA; and the job's progress file."""

    def __init__(self, job_dir: Path, validation: ValidationLossCallback | None, tokens_per_step: int | None,
                 extra: Callable[[], dict[str, float]] | None = None, elapsed_before: float = 0.0) -> None:
        self.job_dir = Path(job_dir)
        self.path = self.job_dir / METRICS_NAME
        self.validation = validation
        self.tokens_per_step = tokens_per_step
        self.extra = extra
        self.elapsed_before = elapsed_before
        self.start = time.time()
        self.last_time = self.start
        self.last_step = 0
        self.last_tokens = 0
        self.step_times: list[float] = []

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.start = self.last_time = time.time()
        self.last_step = state.global_step
        self.last_tokens = state.num_input_tokens_seen or 0
        if state.is_world_process_zero and state.global_step == 0 and self.validation and self.validation.pending:
            self._write({"step": 0, "epoch": 0.0, **self.validation.pending, "elapsed": self.elapsed_before})
            self.validation.pending = {}

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001, ANN201
        if not state.is_world_process_zero:
            return
        logs = dict(logs or {})
        if "train_loss" in logs:  # the summary line at the end is not a step
            return
        now = time.time()
        steps = state.global_step - self.last_step
        if self.tokens_per_step:
            tokens = steps * self.tokens_per_step
        else:
            tokens = (state.num_input_tokens_seen or 0) - self.last_tokens
        rate = tokens / (now - self.last_time) if steps > 0 and now > self.last_time else None
        if steps > 0:
            self.step_times.append((now - self.last_time) / steps)
            self.step_times = self.step_times[-20:]
        self.last_time, self.last_step = now, state.global_step
        self.last_tokens = state.num_input_tokens_seen or 0
        elapsed = self.elapsed_before + (now - self.start)
        per_step = sum(self.step_times) / len(self.step_times) if self.step_times else None
        eta = per_step * max(state.max_steps - state.global_step, 0) if per_step else None
        record: dict[str, Any] = {
            "step": state.global_step, "epoch": round(state.epoch or 0.0, 4), "loss": logs.get("loss"),
            "learning_rate": logs.get("learning_rate"), "grad_norm": logs.get("grad_norm"), "tokens_per_s": rate,
            "elapsed": round(elapsed, 2), "eta": round(eta, 1) if eta is not None else None}
        for key, value in logs.items():  # TRL's own figures (rewards/chosen, ...) come along
            if key not in record and isinstance(value, int | float):
                record[key] = value
        if self.extra:
            record.update(self.extra())
        if self.validation and self.validation.pending:
            record.update(self.validation.pending)
            self.validation.pending = {}
        self._write(record)
        write_progress(self.job_dir, state.global_step / max(state.max_steps, 1),
                       f"step {state.global_step:,} of {state.max_steps:,}", step=state.global_step,
                       max_steps=state.max_steps, eta_s=record["eta"], elapsed_s=record["elapsed"],
                       loss=record["loss"])

    def _write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(clean) + "\n")


class StopCallback(TrainerCallback):
    """SIGTERM/SIGINT (or the job's stop file) ends training at the next step boundary: a checkpoint is saved and
    the trainer returns, so the stopped job leaves a usable model and resumes from exactly there."""

    def __init__(self, job_dir: Path, throttle_s: float = 0.0) -> None:
        self.job_dir = Path(job_dir)
        self.requested = False
        self.stopped_at: int | None = None
        self.throttle_s = throttle_s
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.requested = True

    def _agreed(self) -> bool:
        wanted = self.requested or stop_requested(self.job_dir)
        if _distributed():  # every rank must stop at the same step
            flag = torch.tensor([1.0 if wanted else 0.0])
            if torch.cuda.is_available():
                flag = flag.cuda()
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            wanted = bool(flag.item() > 0)
        return wanted

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if self.throttle_s:
            time.sleep(self.throttle_s)
        if self._agreed() and state.global_step < state.max_steps:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step
        return control


# --- forgetting guards ------------------------------------------------------------------------------------------
def freeze_layers(model: torch.nn.Module, fraction: float, embeddings: bool) -> list[str]:
    """Freeze the bottom `fraction` of the transformer blocks (and the embeddings); returns the frozen names."""
    layers = _decoder_layers(model)
    count = int(round(fraction * len(layers)))
    frozen_ids = set()
    for layer in list(layers)[:count]:
        for p in layer.parameters():
            p.requires_grad_(False)
            frozen_ids.add(id(p))
    if embeddings:
        for p in model.get_input_embeddings().parameters():
            p.requires_grad_(False)
            frozen_ids.add(id(p))
    return [name for name, p in model.named_parameters() if id(p) in frozen_ids]


def _decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and (n is None or len(module) == n):
            return module
    raise ValueError("cannot find the model's transformer blocks to freeze")


class EWC:
    """Elastic weight consolidation: a penalty lambda/2 * sum_i F_i (theta_i - theta*_i)^2 pulling trainable weights
    back to the start model where the Fisher diagonal F (estimated on general text) says they matter."""

    def __init__(self, model: torch.nn.Module, blocks: list[list[int]], strength: float, batches: int,
                 batch_size: int) -> None:
        self.strength = strength
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.anchor = {n: p.detach().clone() for n, p in self.params.items()}
        self.fisher = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.last_penalty = 0.0
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        used = 0
        for start in range(0, min(len(blocks), batches * batch_size), batch_size):
            ids = torch.tensor(blocks[start:start + batch_size], dtype=torch.long, device=device)
            model.zero_grad(set_to_none=True)
            model(input_ids=ids, labels=ids).loss.backward()
            for n, p in self.params.items():
                if p.grad is not None:
                    self.fisher[n] += p.grad.detach() ** 2
            used += 1
        model.zero_grad(set_to_none=True)
        if was_training:
            model.train()
        if used:
            for n in self.fisher:
                self.fisher[n] /= used
        # Normalised so lambda means the same for any model size: the mean Fisher entry is 1.
        mean = torch.cat([f.flatten() for f in self.fisher.values()]).mean() if self.fisher else torch.tensor(0.0)
        if float(mean) > 0:
            for n in self.fisher:
                self.fisher[n] /= mean

    def penalty(self, model: torch.nn.Module) -> torch.Tensor:
        total = None
        for n, p in model.named_parameters():
            key = n.removeprefix("module.")
            if key in self.fisher:
                term = (self.fisher[key].to(p.device) * (p - self.anchor[key].to(p.device)) ** 2).sum()
                total = term if total is None else total + term
        value = 0.5 * self.strength * total if total is not None else torch.tensor(0.0)
        self.last_penalty = float(value.detach())
        return value


def with_ewc(trainer_class: type) -> type:
    """`trainer_class` whose loss carries the EWC penalty when `self.ewc` is set (Trainer, SFTTrainer, DPOTrainer)."""

    class EWCTrainer(trainer_class):  # type: ignore[misc, valid-type]
        ewc: EWC | None = None

        def compute_loss(self, model, inputs, return_outputs=False, **kwargs):  # noqa: ANN001, ANN201
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kwargs)
            if self.ewc is None or not model.training:
                return result
            if return_outputs:
                loss, outputs = result
                return loss + self.ewc.penalty(model), outputs
            return result + self.ewc.penalty(model)

    EWCTrainer.__name__ = f"EWC{trainer_class.__name__}"
    return EWCTrainer


@torch.no_grad()
def average_weights(base: dict[str, torch.Tensor], trained: dict[str, torch.Tensor],
                    alpha: float) -> dict[str, torch.Tensor]:
    """alpha * base + (1 - alpha) * trained for every floating tensor (others kept as trained)."""
    out = {}
    for name, value in trained.items():
        if name in base and value.is_floating_point() and base[name].shape == value.shape:
            out[name] = (alpha * base[name].to(torch.float32) + (1 - alpha) * value.to(torch.float32)).to(value.dtype)
        else:
            out[name] = value
    return out
