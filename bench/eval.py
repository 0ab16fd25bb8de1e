"""Evaluation benchmark: items/s of the studio's evaluation (lm-eval's batched `hf` model on the generated tasks,
through `core.evaluate.run`) against a one-item-at-a-time loop (one plain forward pass per choice, batch 1) on the
same items, the same model and the same run, so the ratio holds on a noisy shared machine. Target: >= 5x.

    nice -n 10 .venv/bin/python bench/eval.py [--items 24] [--shots 0] [--formulation both] [--device cpu|cuda]

The studio scores the choices of a question on one pass of their shared context (core/evaluate/shared_context.py)
and checks its first batch against lm-eval's own computation; the bench prints that check.

Items: a seeded sample of MMLU-Med (the shared data), imported into a temporary workspace. Model: the bundled
SmolLM2-135M (fp32). The loop's log-likelihoods are compared with the studio's (they must agree within 1e-3).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from core.benchmarks import BenchmarkImportConfig, import_benchmark  # noqa: E402
from core.config import data_root  # noqa: E402
from core.evaluate import EvalConfig, run  # noqa: E402
from core.evaluate.tasks import sample_key  # noqa: E402
from core.models import resolve_lm  # noqa: E402
from core.workspace import Workspace  # noqa: E402


def one_at_a_time(model, tokenizer, items, device: str) -> list[list[float]]:
    """log P(" " + choice | context) per choice, one forward pass each, batch 1 (the naive loop)."""
    import torch

    out = []
    for item in items:
        texts = [chr(65 + k) for k in range(len(item.loglikelihoods))] if item.formulation == "letter" \
            else CHOICES[item.item_doc_id]
        context_ids = tokenizer(item.context, add_special_tokens=False)["input_ids"]
        lls = []
        for text in texts:
            whole = tokenizer(item.context + " " + text, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([whole], device=device)
            with torch.no_grad():
                logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
            lls.append(float(sum(logprobs[k - 1, whole[k]] for k in range(len(context_ids), len(whole)))))
        out.append(lls)
    return out


CHOICES: dict[str, list[str]] = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--formulation", default="both", choices=["letter", "cloze", "both"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--shots", type=int, default=0, help="k-shot prompts from the shared dev set (default 0)")
    args = parser.parse_args()
    # The shared-context pass reports its first-batch agreement with lm-eval's own computation (or why it is off).
    logging.basicConfig(format="%(message)s")
    logging.getLogger("core.evaluate.shared_context").setLevel(logging.INFO)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = data_root() / "mmlu" / "mcq_mmlu_medical_test.jsonl"
    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    rows = sorted(rows, key=lambda r: sample_key(0, r["id"]))[:args.items]
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "items.jsonl"
        file.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        with Workspace.open(Path(tmp) / "ws") as ws:
            import_benchmark(ws, BenchmarkImportConfig(sources=[str(file)], name="mmlu_med", kind="domain"))
            CHOICES.update({d: json.loads(c) for d, c in ws.query("SELECT doc_id, choices FROM benchmark_items")})
            print(f"{len(rows)} MMLU-Med items, {args.shots}-shot, formulation {args.formulation}, device {args.device}, "
                  f"{torch.get_num_threads()} threads, {os.cpu_count()} cores", flush=True)
            cfg = EvalConfig(model="bundled:smollm2", formulation=args.formulation, perplexity=False,
                             batch_size=args.batch_size, device=args.device, shots=args.shots)
            start = time.perf_counter()
            result = run(ws, cfg)
            studio_s = time.perf_counter() - start
        items = [i for s in result.models[0].benchmarks for i in s.items]
        path = resolve_lm("bundled:smollm2", with_model=True)
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(args.device).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        naive = one_at_a_time(model, tokenizer, items, args.device)
        loop_s = time.perf_counter() - start
    diff = max(abs(a - b) for item, lls in zip(items, naive, strict=True)
               for a, b in zip(item.loglikelihoods, lls, strict=True))
    same_pred = all(item.pred == max(range(len(lls)), key=lls.__getitem__) for item, lls in zip(items, naive, strict=True))
    n = len(items)
    print(f"studio (lm-eval, batched, incl. model load and task setup): {n} item-formulations in {studio_s:.1f} s "
          f"= {n / studio_s:.2f} items/s")
    print(f"one-at-a-time loop (incl. model load):                    {n} item-formulations in {loop_s:.1f} s "
          f"= {n / loop_s:.2f} items/s")
    print(f"speed-up {loop_s / studio_s:.2f}x (target >= 5x); largest log-likelihood difference {diff:.2e}; "
          f"predictions identical: {same_pred}")


if __name__ == "__main__":
    main()
