"""Training throughput: the studio's CPT recipe (packed blocks, its callbacks) against a plain `transformers.Trainer`
on the same model, texts, batch size and steps, without packing (each document truncated to the block size and
padded to the longest in its batch), measured in the same run.

    nice -n 10 .venv/bin/python bench/train.py [--model bundled:smollm2|tiny] [--steps 6] [--batch 4] [--block 256]

Tokens/s counts the tokens the model learns from (padding excluded); the baseline's padded rate is printed too.
Step times exclude the first step (warm-up) and the steps where the studio scores its validation sets. On a GPU it
also prints peak memory; MFU uses 6 x parameters x tokens/s over the device's peak bf16 FLOPs (`--peak-tflops`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from core.config import data_root  # noqa: E402
from core.models import load_tokenizer, resolve_lm  # noqa: E402
from core.train.config import parse_config  # noqa: E402
from core.train.launch import resolve  # noqa: E402
from core.train.metrics import read_metrics  # noqa: E402
from core.train.run import RESOLVED_NAME  # noqa: E402
from core.train.run import train as studio_train  # noqa: E402

DOMAIN = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"
GENERAL = "llamafactory/corpus_en_wikipedia_paragraphs.jsonl"


def texts(relative: str, start: int, stop: int) -> list[str]:
    with open(data_root() / relative, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh][start:stop]


def random_llama(root: Path, name: str, **dims: int) -> str:
    """A randomly initialised Llama with the real tokenizer, saved under `root/name`."""
    tokenizer = load_tokenizer("bundled:smollm2")
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **dims)
    LlamaForCausalLM(config).save_pretrained(root / name)
    tokenizer.save_pretrained(root / name)
    return str(root / name)


def model_folder(name: str, root: Path) -> str:
    if name == "tiny":  # 2 layers: a quick look at the machinery's overhead
        return random_llama(root, name, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2)
    if name == "llama-1b":  # ~1B parameters: throughput does not depend on the weights
        return random_llama(root, name, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                            num_attention_heads=32, num_key_value_heads=4)
    return resolve_lm(name, with_model=True)


class StepTimer(TrainerCallback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.padded: list[int] = []
        self._start = 0.0
        self.batch_tokens = 0
        self.batch_padded = 0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)
        self.tokens.append(self.batch_tokens)
        self.padded.append(self.batch_padded)


def baseline(model_path: str, docs: list[str], args: argparse.Namespace, out: Path) -> dict[str, float]:
    """Plain Trainer: one document per row, truncated to the block size, padded to the longest in the batch."""
    from datasets import Dataset

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    encoded = tokenizer(docs, add_special_tokens=False, truncation=True, max_length=args.block - 1)["input_ids"]
    rows = [ids + [tokenizer.eos_token_id] for ids in encoded]
    timer = StepTimer()

    def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), longest), tokenizer.pad_token_id)
        mask = torch.zeros((len(batch), longest), dtype=torch.long)
        for i, b in enumerate(batch):
            ids[i, :len(b["input_ids"])] = torch.tensor(b["input_ids"])
            mask[i, :len(b["input_ids"])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        timer.batch_tokens, timer.batch_padded = int(mask.sum()), ids.numel()
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, attn_implementation="sdpa")
    training = TrainingArguments(output_dir=str(out / "baseline"), max_steps=args.steps,
                                 per_device_train_batch_size=args.batch, learning_rate=2e-5, report_to="none",
                                 save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                                 train_sampling_strategy="sequential", bf16=torch.cuda.is_available(),
                                 use_cpu=not torch.cuda.is_available(), remove_unused_columns=False)
    trainer = Trainer(model=model, args=training, train_dataset=Dataset.from_dict({"input_ids": rows}),
                      data_collator=collate, callbacks=[timer])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    keep = range(1, len(timer.times))  # the first step warms up
    seconds = sum(timer.times[i] for i in keep)
    return {"tokens_per_s": sum(timer.tokens[i] for i in keep) / seconds,
            "padded_tokens_per_s": sum(timer.padded[i] for i in keep) / seconds,
            "padding_share": 1 - sum(timer.tokens) / max(sum(timer.padded), 1),
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None}


def studio(model_path: str, docs: list[str], args: argparse.Namespace, out: Path) -> dict[str, float]:
    export = out / "export"
    export.mkdir()
    for name, rows in (("train", docs), ("validation_domain", texts(DOMAIN, 4000, 4040)),
                       ("validation_general", texts(GENERAL, 0, 40))):
        (export / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in rows))
    (export / "manifest.json").write_text(json.dumps({"format": "studio-mix/1", "name": "bench"}))
    job = out / "studio"
    job.mkdir()
    config = (f'stage = "cpt"\nmodel = "{model_path}"\nmix = "{export}"\nmax_steps = {args.steps}\n'
              f"block_size = {args.block}\nbatch_size = {args.batch}\neval_steps = {10 * args.steps}\n"
              f"eval_tokens = {args.block}\nsave_steps = {10 * args.steps}\nlearning_rate = 2e-5\nwarmup = 0.0\n")
    (job / "config.toml").write_text(config)
    (job / RESOLVED_NAME).write_text(json.dumps(resolve(parse_config(config), None)))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    studio_train(job)
    steps = [r for r in read_metrics(job) if r.get("loss") is not None]
    # Median over steps after the first; the last step also scores the validation sets, so it is left out.
    rates = [r["tokens_per_s"] for r in steps[1:-1] if r.get("tokens_per_s")]
    return {"tokens_per_s": statistics.median(rates),
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:smollm2", help="bundled:smollm2, tiny, llama-1b or a folder")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's dense bf16 peak (H100/H200)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model_path = model_folder(args.model, out)
        # Enough documents for every step of both runs (paragraphs average ~170 tokens; packing needs fewer).
        docs = texts(DOMAIN, 0, args.steps * args.batch * 4)
        base = baseline(model_path, docs[: args.steps * args.batch], args, out)
        ours = studio(model_path, docs, args, out)
        params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(model_path).parameters())
    result = {"model": args.model, "parameters": params, "device": "cuda" if torch.cuda.is_available() else "cpu",
              "threads": torch.get_num_threads(), "steps": args.steps, "batch": args.batch, "block": args.block,
              "studio": ours, "plain_trainer_padded": base, "ratio": ours["tokens_per_s"] / base["tokens_per_s"]}
    if torch.cuda.is_available():
        result["mfu_studio"] = 6 * params * ours["tokens_per_s"] / (args.peak_tflops * 1e12)
        result["mfu_baseline"] = 6 * params * base["tokens_per_s"] / (args.peak_tflops * 1e12)
    print(json.dumps(result, indent=2))
    print(f"studio CPT {ours['tokens_per_s']:.0f} tokens/s vs plain Trainer (padded) {base['tokens_per_s']:.0f} "
          f"useful tokens/s ({base['padded_tokens_per_s']:.0f} with padding, {base['padding_share']:.0%} padding): "
          f"{result['ratio']:.2f}x")


if __name__ == "__main__":
    main()
