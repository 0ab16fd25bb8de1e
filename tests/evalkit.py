"""Helpers shared by the evaluation and report tests: a workspace with a small fixed MMLU subset, a tiny random
Llama with the real tokenizer (fast on CPU), a job output folder and a validation folder."""

from __future__ import annotations

import json
from pathlib import Path

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.models import resolve_lm
from core.workspace import Workspace

# (file under the shared data, subject, how many): the fixed subset, in file order.
DOMAIN_ITEMS = [("mmlu/mcq_mmlu_medical_test.jsonl", "anatomy", 3),
                ("mmlu/mcq_mmlu_medical_test.jsonl", "medical_genetics", 3)]
GENERAL_ITEMS = [("mmlu/mcq_mmlu_general_test.jsonl", "astronomy", 2),
                 ("mmlu/mcq_mmlu_general_test.jsonl", "marketing", 2)]
VALIDATION_TEXTS = {
    "domain": ["Hypertension is a major risk factor for stroke and heart disease; treatment lowers that risk.",
               "The liver filters blood and produces bile, which helps digest fats."],
    "general": ["The city council met on Tuesday to discuss the new park and its budget.",
                "Rivers carry water from mountains to the sea, shaping valleys along the way."],
}


def _subset(data_dir: Path, spec: list[tuple[str, str, int]]) -> list[dict]:
    out = []
    for relative, subject, n in spec:
        with open(data_dir / relative, encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh]
        out += [r for r in rows if r["subject"] == subject][:n]
    return out


def small_mmlu_workspace(path: Path, data_dir: Path) -> Path:
    """A workspace with a 6-item domain benchmark (mmlu_med) and a 4-item general one (mmlu_gen)."""
    path.mkdir(parents=True, exist_ok=True)
    with Workspace.open(path / "ws") as ws:
        for name, kind, spec in (("mmlu_med", "domain", DOMAIN_ITEMS), ("mmlu_gen", "general", GENERAL_ITEMS)):
            file = path / f"{name}.jsonl"
            file.write_text("".join(json.dumps(r) + "\n" for r in _subset(data_dir, spec)), encoding="utf-8")
            import_benchmark(ws, BenchmarkImportConfig(sources=[str(file)], name=name, kind=kind))
    return path / "ws"


def validation_folder(path: Path) -> Path:
    """A folder shaped like a mix export's validation sets."""
    path.mkdir(parents=True, exist_ok=True)
    for vset, texts in VALIDATION_TEXTS.items():
        (path / f"validation_{vset}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts),
                                                       encoding="utf-8")
    return path


def tiny_llama(path: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer Llama with the bundled tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_lm("bundled:smollm2"))
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def job_folder(path: Path, model_dir: Path | None, base_model: str, manifest_sha256: str = "",
               steps: int = 6) -> Path:
    """A training job's output folder as the training step writes it: metrics.jsonl, model/ and
    model/studio_model.json."""
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.jsonl", "w", encoding="utf-8") as fh:
        for step in range(1, steps + 1):
            fh.write(json.dumps({"step": step, "epoch": step / steps, "loss": 3.0 - 0.2 * step,
                                 "learning_rate": 1e-4 * (1 - step / (steps + 1)),
                                 "eval_domain_loss": 2.9 - 0.1 * step, "eval_general_loss": 3.1 + 0.01 * step})
                     + "\n")
    model = path / "model"
    if model_dir is not None and model_dir != model:
        model_dir.rename(model)
    model.mkdir(exist_ok=True)
    (model / "studio_model.json").write_text(json.dumps({"job": path.name, "mix_manifest_sha256": manifest_sha256,
                                                         "base_model": base_model}), encoding="utf-8")
    (path / "config.json").write_text(json.dumps({"kind": "cpt", "base_model": base_model, "steps": steps}),
                                      encoding="utf-8")
    return path
