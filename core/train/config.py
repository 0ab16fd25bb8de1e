"""The training config: one TOML file (the page writes the same one), parsed into typed dataclasses.

Top-level keys are interfaces (`stage`, `model`, `mix`, `data`, `method`, `learning_rate`, `max_steps` or
`epochs`, `block_size`, `batch_size`, `grad_accum`, `eval_steps`, `save_steps`, `seed`, ...); each method has its
table (`[lora]`, `[freeze]`, `[ewc]`, `[average]`, `[dpo]`), `[distributed]` sets the Accelerate launch and
`[trainer]` passes any other `transformers.TrainingArguments` field through. Unknown keys are refused by name.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

import tomli_w

STAGES = ("cpt", "sft", "dpo")
METHODS = ("full", "lora", "freeze")
SCHEDULES = ("cosine", "progressive", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DISTRIBUTED_MODES = ("none", "ddp", "fsdp", "deepspeed2", "deepspeed3")
# Validation tokens per set where no GPU is present: each validation pass scores both sets, at step 0 and every
# eval_steps, and 2 x 20,000 tokens of forward passes take minutes on a few CPU cores (longer than a short job's
# training itself); 2,048 tokens (16 blocks of 128) still show the trend. `default_eval_tokens` picks.
CPU_EVAL_TOKENS = 2_048
# TrainingArguments the studio sets itself: `[trainer]` may not override them.
MANAGED_TRAINER_ARGS = {
    "output_dir", "learning_rate", "max_steps", "num_train_epochs", "per_device_train_batch_size",
    "gradient_accumulation_steps", "save_steps", "seed", "eval_strategy", "save_strategy", "logging_steps",
    "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "weight_decay", "max_grad_norm", "bf16", "fp16",
    "gradient_checkpointing", "activation_checkpointing", "report_to", "use_cpu", "beta", "max_length",
}


class ConfigError(ValueError):
    """A training config that cannot run, with the one-line reason."""


@dataclass
class LoraSettings:
    r: int = 16  # rank
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


@dataclass
class FreezeSettings:
    fraction: float = 0.5  # bottom fraction of the transformer blocks kept frozen
    embeddings: bool = True  # freeze the token embeddings too (and the output head when tied to them)


@dataclass
class EWCSettings:
    enabled: bool = False
    strength: float = 100.0  # lambda of the penalty lambda/2 * sum F (theta - theta_base)^2 (TOML key `lambda`)
    batches: int = 8  # batches of general validation text for the Fisher diagonal


@dataclass
class AverageSettings:
    enabled: bool = False
    alpha: float = 0.3  # the base model's share: averaged = alpha * base + (1 - alpha) * trained


@dataclass
class DPOSettings:
    beta: float = 0.1
    loss_type: str = "sigmoid"


@dataclass
class DistributedSettings:
    mode: str = "none"  # none | ddp | fsdp | deepspeed2 | deepspeed3
    num_processes: int = 1  # processes (GPUs) in all
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str = ""
    main_process_port: int = 29500
    mixed_precision: str = "no"  # no | bf16 | fp16


@dataclass
class TrainConfig:
    stage: str = "cpt"
    model: str = "bundled:smollm2"  # bundled:smollm2, a Hugging Face id or a local folder
    mix: str = ""  # a mix name of the workspace or an export folder
    data: str = ""  # sft: an instruction file (default: the mix's sft export); dpo: a preference file
    method: str = "full"
    learning_rate: float = 2e-5
    max_steps: int = 0  # 0: run `epochs` over the data
    epochs: float = 1.0
    block_size: int = 512  # tokens per packed block (cpt), longest sequence (sft, dpo)
    batch_size: int = 4  # per device
    grad_accum: int = 1
    eval_steps: int = 50
    save_steps: int = 100
    seed: int = 42
    logging_steps: int = 1
    warmup: float = 0.1  # share of the steps for linear warmup
    schedule: str = "cosine"  # cosine to a floor | progressive (warmup, plateau, cosine) | constant
    min_lr_ratio: float = 0.1  # the floor, as a share of learning_rate
    decay_share: float = 0.3  # progressive: share of the steps in the final cosine
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    precision: str = "auto"  # auto: bf16 on a GPU that supports it, fp32 otherwise
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    eval_tokens: int = 20_000  # tokens of each validation set scored every eval_steps
    shuffle: bool | None = None  # None: keep the mix's order for cpt, shuffle for sft and dpo
    lora: LoraSettings = field(default_factory=LoraSettings)
    freeze: FreezeSettings = field(default_factory=FreezeSettings)
    ewc: EWCSettings = field(default_factory=EWCSettings)
    average: AverageSettings = field(default_factory=AverageSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    distributed: DistributedSettings = field(default_factory=DistributedSettings)
    trainer: dict[str, Any] = field(default_factory=dict)  # any other TrainingArguments field

    @property
    def shuffled(self) -> bool:
        return self.shuffle if self.shuffle is not None else self.stage != "cpt"

    def validate(self) -> None:
        """Checks that need nothing but the config; `core.train.launch.check` does those needing files."""
        def need(ok: bool, reason: str) -> None:
            if not ok:
                raise ConfigError(reason)

        need(self.stage in STAGES, f"stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        need(self.method in METHODS, f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        need(self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}")
        need(bool(self.model.strip()), "model is empty: name bundled:smollm2, a Hugging Face id or a folder")
        need(self.learning_rate > 0, "learning_rate must be positive")
        need(self.max_steps >= 0, "max_steps must be 0 (use epochs) or positive")
        need(self.max_steps > 0 or self.epochs > 0, "set max_steps or a positive number of epochs")
        need(self.block_size >= 8, "block_size must be at least 8 tokens")
        need(self.batch_size >= 1 and self.grad_accum >= 1, "batch_size and grad_accum must be at least 1")
        need(self.eval_steps >= 1 and self.save_steps >= 1 and self.logging_steps >= 1,
             "eval_steps, save_steps and logging_steps must be at least 1")
        need(0 <= self.warmup < 1, "warmup is a share of the steps, in [0, 1)")
        need(0 <= self.min_lr_ratio <= 1, "min_lr_ratio is a share of learning_rate, in [0, 1]")
        need(0 < self.decay_share <= 1 - self.warmup or self.schedule != "progressive",
             "decay_share must be positive and leave room for the warmup")
        need(self.weight_decay >= 0 and self.max_grad_norm >= 0, "weight_decay and max_grad_norm cannot be negative")
        need(self.eval_tokens >= self.block_size, "eval_tokens must hold at least one block")
        need(self.stage != "cpt" or bool(self.mix.strip()), "a cpt job needs a mix (a mix name or an export folder)")
        need(self.stage != "dpo" or bool(self.data.strip()), "a dpo job needs data: a preference file")
        need(self.stage != "sft" or bool(self.mix.strip() or self.data.strip()),
             "an sft job needs a mix with instruction data or a data file")
        need(self.lora.r >= 1 and self.lora.alpha > 0 and 0 <= self.lora.dropout < 1,
             "[lora] needs r >= 1, alpha > 0 and dropout in [0, 1)")
        need(bool(self.lora.target_modules), "[lora] target_modules is empty")
        need(0 <= self.freeze.fraction <= 1, "[freeze] fraction must be in [0, 1]")
        need(self.method != "freeze" or self.freeze.fraction > 0 or self.freeze.embeddings,
             "method freeze with nothing to freeze: set [freeze] fraction or embeddings")
        need(self.ewc.strength >= 0 and self.ewc.batches >= 1, "[ewc] lambda must be >= 0 and batches >= 1")
        need(0 <= self.average.alpha <= 1, "[average] alpha must be in [0, 1]")
        need(self.dpo.beta > 0, "[dpo] beta must be positive")
        need(self.distributed.mode in DISTRIBUTED_MODES,
             f"[distributed] mode must be one of {', '.join(DISTRIBUTED_MODES)}")
        need(self.distributed.num_processes >= 1 and self.distributed.num_machines >= 1,
             "[distributed] num_processes and num_machines must be at least 1")
        need(0 <= self.distributed.machine_rank < self.distributed.num_machines,
             "[distributed] machine_rank must be below num_machines")
        need(self.distributed.num_machines == 1 or bool(self.distributed.main_process_ip),
             "[distributed] several machines need main_process_ip")
        need(self.distributed.mixed_precision in ("no", "bf16", "fp16"),
             "[distributed] mixed_precision must be no, bf16 or fp16")
        managed = sorted(set(self.trainer) & MANAGED_TRAINER_ARGS)
        need(not managed, f"[trainer] cannot set {', '.join(managed)}: use the config's own keys")


# TOML key -> field name where Python cannot use the TOML name.
_ALIASES = {"lambda": "strength"}
_TABLES = {"lora": LoraSettings, "freeze": FreezeSettings, "ewc": EWCSettings, "average": AverageSettings,
           "dpo": DPOSettings, "distributed": DistributedSettings}


def _coerce(value: Any, hint: Any, where: str) -> Any:
    args = set(get_args(hint))
    if hint is bool or args == {bool, type(None)}:
        if value is None and args:
            return None
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or float(value) != int(value):
            raise ConfigError(f"{where} must be a whole number, not {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, not {value!r}")
        return value
    if get_origin(hint) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of strings")
        return value
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        name = _ALIASES.get(key, key)
        if name not in names or (name in _ALIASES.values() and key == name):
            known = sorted(next((k for k, v in _ALIASES.items() if v == n), n) for n in names)
            raise ConfigError(f"unknown key {key!r} in {where} (known: {', '.join(known)})")
        label = f"{where} {key}" if where != "the training config" else key
        if name in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a table ([{key}])")
            kwargs[name] = _build(_TABLES[name], value, f"[{key}]")
        elif name == "trainer":
            if not isinstance(value, dict):
                raise ConfigError("trainer must be a table ([trainer])")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = _coerce(value, hints[name], label)
    return cls(**kwargs)


def parse_config(text: str) -> TrainConfig:
    """A validated config from TOML text; ConfigError with the reason otherwise."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the training config is not valid TOML: {exc}") from exc
    config = _build(TrainConfig, data, "the training config")
    config.validate()
    return config


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["ewc"]["lambda"] = data["ewc"].pop("strength")
    if data["shuffle"] is None:
        del data["shuffle"]
    return data


def config_to_toml(config: TrainConfig) -> str:
    return tomli_w.dumps(config_to_dict(config))


# Presets from common practice (the seeds of this project): only the keys they set.
PRESETS: dict[str, dict[str, Any]] = {
    "CPT": {"stage": "cpt", "learning_rate": 2e-5, "warmup": 0.1, "schedule": "cosine", "epochs": 1.0,
            "weight_decay": 0.01, "max_grad_norm": 1.0},
    "Post-pretraining (conservative)": {"stage": "cpt", "learning_rate": 1e-5, "warmup": 0.03, "schedule": "cosine",
                                        "epochs": 1.0, "weight_decay": 0.1, "max_grad_norm": 1.0},
    "SFT": {"stage": "sft", "learning_rate": 2e-5, "epochs": 3.0, "warmup": 0.03, "schedule": "cosine",
            "weight_decay": 0.0},
    "DPO": {"stage": "dpo", "learning_rate": 5e-7, "epochs": 1.0, "warmup": 0.1, "schedule": "cosine",
            "dpo": {"beta": 0.1}},
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    data = {**PRESETS[name], **overrides}
    return _build(TrainConfig, data, "the training config")


def default_eval_tokens() -> int:
    """The form's default validation tokens per set: the config's default on a GPU, CPU_EVAL_TOKENS without one."""
    import torch

    return TrainConfig.eval_tokens if torch.cuda.is_available() else CPU_EVAL_TOKENS
