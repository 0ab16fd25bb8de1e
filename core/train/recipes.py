"""The three stages on the field's trainers: CPT on `transformers.Trainer` (packed blocks), SFT on TRL's
`SFTTrainer` (chat template, loss on the response), DPO on TRL's `DPOTrainer` (reference = the start model, or the
LoRA base with the adapter off). Methods: full fine-tuning, LoRA (PEFT) and layer freezing.

`build_trainer` returns a ready trainer; `core.train.run` (the script `accelerate launch` starts) trains it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from core.train.callbacks import (
    EWC,
    MetricsCallback,
    StopCallback,
    ValidationLossCallback,
    freeze_layers,
    with_ewc,
)
from core.train.config import TrainConfig
from core.train.data import (
    VALIDATION_SETS,
    check_export,
    pack_blocks,
    preference_examples,
    read_texts,
    sft_examples,
    sft_file,
    validation_file,
)

# Roughly 4 characters a token: how much validation text to read before packing `eval_tokens`.
CHARS_PER_TOKEN_READ = 6


@dataclass
class Prepared:
    """Everything a stage needs, built in the training process."""

    trainer: Any
    stop: StopCallback
    tokenizer: Any
    max_steps: int
    frozen: list[str] = field(default_factory=list)
    ewc: EWC | None = None


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_model_and_tokenizer(path: str, config: TrainConfig, dtype: torch.dtype = torch.float32):  # noqa: ANN201
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa",
                                                 trust_remote_code=config.trust_remote_code)
    return model, tokenizer


def use_bf16(config: TrainConfig) -> bool:
    if config.precision == "bf16":
        return True
    return config.precision == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def steps_for(examples: int, config: TrainConfig) -> int:
    """Optimizer steps of the run: `max_steps`, or `epochs` over `examples` as the Trainer counts them."""
    if config.max_steps:
        return config.max_steps
    batches = math.ceil(examples / (config.batch_size * world_size()))
    per_epoch = max(batches // config.grad_accum, 1)
    return max(math.ceil(config.epochs * per_epoch), 1)


def training_arguments(config: TrainConfig, job_dir: Path, max_steps: int, stage_args: dict[str, Any]) -> dict:
    """TrainingArguments (or TRL's configs) shared by every stage."""
    if config.schedule == "cosine":
        schedule, kwargs = "cosine_with_min_lr", {"min_lr_rate": config.min_lr_ratio}
    elif config.schedule == "progressive":  # warmup, plateau, cosine to the floor
        schedule = "warmup_stable_decay"
        kwargs = {"num_decay_steps": max(int(round(config.decay_share * max_steps)), 1),
                  "min_lr_ratio": config.min_lr_ratio, "decay_type": "cosine"}
    else:
        schedule, kwargs = "constant_with_warmup", {}
    bf16 = use_bf16(config)
    return {
        "output_dir": str(job_dir / "checkpoints"), "learning_rate": config.learning_rate, "max_steps": max_steps,
        "per_device_train_batch_size": config.batch_size, "gradient_accumulation_steps": config.grad_accum,
        "lr_scheduler_type": schedule, "lr_scheduler_kwargs": kwargs,
        "warmup_steps": int(round(config.warmup * max_steps)), "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm, "optim": "adamw_torch", "bf16": bf16,
        "activation_checkpointing": config.gradient_checkpointing, "save_strategy": "steps",
        "save_steps": config.save_steps, "save_total_limit": 2, "logging_steps": config.logging_steps,
        "eval_strategy": "no", "report_to": "none", "seed": config.seed, "data_seed": config.seed,
        "disable_tqdm": True, "use_cpu": not torch.cuda.is_available(), "dataloader_num_workers": 0,
        "train_sampling_strategy": "random" if config.shuffled else "sequential",
        **stage_args, **config.trainer,
    }


def validation_blocks_per_set(config: TrainConfig) -> int:
    """Whole blocks of `block_size` scored per validation set each pass (the estimate counts the same)."""
    return config.eval_tokens // config.block_size


def validation_blocks(tokenizer: Any, export: Path, config: TrainConfig) -> dict[str, list[list[int]]]:
    return {role: pack_blocks(tokenizer, read_texts(validation_file(export, role),
                                                    config.eval_tokens * CHARS_PER_TOKEN_READ),
                              config.block_size, max_blocks=validation_blocks_per_set(config))
            for role in VALIDATION_SETS}


def apply_method(model: Any, config: TrainConfig) -> tuple[Any, list[str]]:
    """LoRA adapters, frozen blocks or nothing (full fine-tuning)."""
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                          target_modules=config.lora.target_modules, task_type="CAUSAL_LM")
        return get_peft_model(model, lora), []
    if config.method == "freeze":
        return model, freeze_layers(model, config.freeze.fraction, config.freeze.embeddings)
    return model, []


def build_trainer(config: TrainConfig, resolved: dict[str, Any], job_dir: Path, elapsed_before: float = 0.0,
                  throttle_s: float = 0.0) -> Prepared:
    from transformers import Trainer, default_data_collator, set_seed

    set_seed(config.seed)
    model, tokenizer = load_model_and_tokenizer(resolved["model_path"], config)
    export = Path(resolved["export"]) if resolved.get("export") else None
    if export is not None:
        check_export(export, config.stage)
    model, frozen = apply_method(model, config)
    if config.gradient_checkpointing:
        model.config.use_cache = False
    sets = validation_blocks(tokenizer, export, config) if export is not None else {}
    validation = ValidationLossCallback(sets, config.eval_steps, config.batch_size) if sets else None
    ewc = None
    if config.ewc.enabled:
        general = sets.get("general") or []
        if not general:
            raise ValueError("EWC needs the mix's general validation text for its Fisher estimate")
        ewc = EWC(model, general, config.ewc.strength, config.ewc.batches, config.batch_size)
    stop = StopCallback(job_dir, throttle_s)

    if config.stage == "cpt":
        blocks = pack_blocks(tokenizer, read_texts(export / "train.jsonl"), config.block_size)
        if not blocks:
            raise ValueError(f"the mix's training text holds fewer than {config.block_size} tokens: "
                             "nothing to train on")
        from datasets import Dataset

        dataset = Dataset.from_dict({"input_ids": blocks, "labels": blocks})
        max_steps = steps_for(len(blocks), config)
        from transformers import TrainingArguments

        args = TrainingArguments(**training_arguments(config, job_dir, max_steps, {}))
        trainer_class = with_ewc(Trainer)
        trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                                processing_class=tokenizer)
        tokens_per_step = config.batch_size * config.grad_accum * world_size() * config.block_size
    elif config.stage == "sft":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        examples = sft_examples(sft_file(export, config.data))
        dataset = Dataset.from_list(examples)
        max_steps = steps_for(len(examples), config)
        args = SFTConfig(**training_arguments(config, job_dir, max_steps, {
            "max_length": config.block_size, "packing": False, "completion_only_loss": True,
            "include_num_input_tokens_seen": "non_padding", "shuffle_dataset": False}))
        trainer = with_ewc(SFTTrainer)(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        tokens_per_step = None
    else:
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        examples = preference_examples(Path(resolved["data"]))
        dataset = Dataset.from_list(examples)
        max_steps = steps_for(len(examples), config)
        args = DPOConfig(**training_arguments(config, job_dir, max_steps, {
            "beta": config.dpo.beta, "loss_type": [config.dpo.loss_type], "max_length": config.block_size,
            "include_num_input_tokens_seen": "non_padding"}))
        trainer = with_ewc(DPOTrainer)(model=model, ref_model=None, args=args, train_dataset=dataset,
                                       processing_class=tokenizer)
        tokens_per_step = None
    trainer.ewc = ewc
    extra = (lambda: {"ewc_penalty": ewc.last_penalty}) if ewc is not None else None
    if validation is not None:
        trainer.add_callback(validation)
    trainer.add_callback(MetricsCallback(job_dir, validation, tokens_per_step, extra, elapsed_before))
    trainer.add_callback(stop)
    return Prepared(trainer=trainer, stop=stop, tokenizer=tokenizer, max_steps=max_steps, frozen=frozen, ewc=ewc)
