"""Language-model perplexity of documents: batched, truncated, bf16 autocast where the CPU supports it.

Perplexity here is per token: exp(mean negative log-likelihood of tokens 2..n given the tokens before them),
for the first `max_tokens` tokens of a document (no special tokens are added; SmolLM2 adds no BOS). Scoring the
same document with another model or length gives another number, so both are stored with it.

On the 2-core development machines the bundled SmolLM2-135M scores about 360 tokens/s in fp32 and about 580
with bf16 autocast (docs/PLATFORM facts); batches are sorted by length so padding costs little.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from core.models import BUNDLED_LM, ModelUnavailable, resolve_lm
from core.progress import Progress, no_progress

_load_lock = threading.Lock()


@dataclass
class PerplexityConfig:
    model: str = BUNDLED_LM  # the bundled SmolLM2-135M, or any causal LM id or local path
    max_tokens: int = 256  # documents are truncated to their first max_tokens tokens
    batch_size: int = 8
    dtype: str = "auto"  # auto (bf16 autocast where the CPU/GPU supports it) | bf16 | fp32
    device: str = "auto"  # auto (cuda when present) | cpu | cuda

    def validate(self) -> None:
        if self.max_tokens < 2:
            raise ValueError("max tokens must be at least 2 (perplexity needs a token to predict)")
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.dtype not in ("auto", "bf16", "fp32"):
            raise ValueError(f"dtype must be auto, bf16 or fp32, not {self.dtype!r}")


@dataclass
class LoadedLM:
    name: str
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    device: str


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """'bf16' or 'fp32': auto picks bf16 where the hardware runs it natively (AVX-512 BF16/AMX on CPU)."""
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    except (AttributeError, RuntimeError):
        return "fp32"


@cache
def load_lm(name: str = BUNDLED_LM, device: str = "auto") -> LoadedLM:
    """The model and tokenizer, loaded once per process (the bundled one from its converted cache)."""
    with _load_lock:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_lm(name, with_model=True)
        dev = _pick_device(device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        except OSError as exc:
            raise ModelUnavailable(f"language model {name!r} is neither a local folder nor reachable: {exc}") from exc
        model.to(dev).eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return LoadedLM(name, model, tokenizer, dev)


def score_texts(texts: Sequence[str], cfg: PerplexityConfig | None = None,
                progress: Progress = no_progress) -> list[tuple[float | None, int]]:
    """(perplexity, tokens scored) per text, in the order given; None where a text has under 2 tokens."""
    import torch

    cfg = cfg or PerplexityConfig()
    cfg.validate()
    lm = load_lm(cfg.model, cfg.device)
    dtype = resolve_dtype(cfg.dtype, lm.device)
    encoded = lm.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=cfg.max_tokens)
    ids: list[list[int]] = encoded["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
    out: list[tuple[float | None, int]] = [(None, len(x)) for x in ids]
    pad = lm.tokenizer.pad_token_id
    done = 0
    device_type = "cuda" if lm.device.startswith("cuda") else "cpu"
    for start in range(0, len(order), cfg.batch_size):
        batch = [i for i in order[start:start + cfg.batch_size] if len(ids[i]) >= 2]
        if batch:
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                mask[row, :len(ids[i])] = 1
            input_ids, mask = input_ids.to(lm.device), mask.to(lm.device)
            with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16,
                                                        enabled=dtype == "bf16"):
                logits = lm.model(input_ids=input_ids, attention_mask=mask).logits
            for row, i in enumerate(batch):  # one row at a time: a float32 copy of all logits is large
                n = len(ids[i])
                nll = torch.nn.functional.cross_entropy(logits[row, :n - 1].float(), input_ids[row, 1:n],
                                                        reduction="mean")
                out[i] = (math.exp(float(nll)), n)
        done += len(order[start:start + cfg.batch_size])
        progress(done / max(len(order), 1), f"perplexity {done:,}/{len(order):,} documents")
    return out
