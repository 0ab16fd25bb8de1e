"""Language-model perplexity of documents: batched, truncated, on the fastest path that agrees with fp32.

Perplexity here is per token: exp(mean negative log-likelihood of tokens 2..n given the tokens before them),
for the first `max_tokens` tokens of a document (no special tokens are added; SmolLM2 adds no BOS). Scoring the
same document with another model or length gives another number, so both are stored with it.

On the 2-core development machines the bundled SmolLM2-135M scores about 360-560 tokens/s in fp32 and 580-970
with bf16 autocast where bf16 is native (docs/PLATFORM facts); batches are sorted by length so padding costs
little. bf16 is emulated (slower than fp32) on AVX2-only CPUs, so `dtype="auto"` picks, per model and CPU
feature set (`core.fastpath`), the fastest of: ONNX Runtime fp32, bf16 autocast where native, torch fp32 (and,
with STUDIO_PERPLEXITY_TRY_INT8=1, ONNX Runtime with int8 weight MatMuls, with and without the head in fp32:
measured far outside the bound on SmolLM2, and blockwise int8 `onnx-int8-block`: 3.3% off), keeping only paths whose perplexity of every calibration document
is within 2 % of fp32. The ONNX graph is
exported locally (torch.onnx) and returns each sequence's summed negative log-likelihood, so the (batch x
tokens x 49k) logits never leave it.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from core import fastpath
from core.fastpath import (
    ONNX_FP32,
    ONNX_INT8,
    ONNX_INT8_BLOCK,
    ONNX_INT8_MIXED,
    ONNX_PATHS,
    TORCH_BF16,
    TORCH_FP32,
    PathChoice,
)
from core.models import BUNDLED_LM, ModelUnavailable, resolve_lm
from core.progress import Progress, no_progress

AGREEMENT_BOUND = 0.02  # max relative deviation of any calibration document's perplexity from fp32
CALIBRATION_DOCS = 12
MIN_CALIBRATION_DOCS = 16  # fewer documents than this are scored with the reference path, undecided
CALIBRATION_TOKENS = 128
PATH_ENV = "STUDIO_PERPLEXITY_PATH"
# Dynamic int8 (per-channel weights, per-tensor activations) moved SmolLM2-135M's perplexity by 400x even with
# the FFN down projections and the head kept fp32 (10^6x with every MatMul int8), and quantising takes minutes;
# so the int8 paths are calibrated only on request (any other model may fare better).
# Blockwise int8 (MatMulNBits: 8-bit weights in blocks of 32, activations quantised per row and block) does far
# better than per-tensor int8 but still moved a MedQuAD paragraph's perplexity by 3.3% (2.9% with the head in
# fp32), and on AVX2 it ran no faster than onnx-fp32 (0.94x): calibrated only on request too.
# SmoothQuant (issue 17; the embedding path's recipe, folded here into the RMSNorm gains, v_proj and up_proj, so
# at no run-time cost) measured on MedQuAD, English web/books and Chinese paragraphs, 128 tokens: per-tensor
# dynamic int8 2.4x onnx-fp32 but 15-26 % off (a = 0.8; 33-75 % at a = 0.5), every single layer alone 1-6 % off,
# per-token int8 (simulated) 3.8 %; MatMulNBits 8-bit blocks after smoothing 1.4-2.6 % off at 1.07-1.24x onnx-fp32.
# fp32 is compute-bound (MatMul 86 % of onnx-fp32's time, the head 17 %), so no exact rewrite gains much (slicing
# the hidden states before the head: 2 %). No int8 path is both within 2 % and faster than 1.25x onnx-fp32 here.
INT8_ENV = "STUDIO_PERPLEXITY_TRY_INT8"
INT8_PATHS = (ONNX_INT8, ONNX_INT8_MIXED, ONNX_INT8_BLOCK)
# The ONNX paths of a causal LM: the ORT transformer optimizer's decoder fusions (model_type "qwen3": RMSNorm
# only, no rotary or attention fusion on this export) took 200 s and were not faster, so there is no fused graph.
ONNX_VARIANTS = (*INT8_PATHS, ONNX_FP32)
DTYPES = ("auto", "bf16", "fp32", *ONNX_VARIANTS, TORCH_BF16, TORCH_FP32)
_load_lock = threading.Lock()
_export_lock = threading.Lock()


@dataclass
class PerplexityConfig:
    model: str = BUNDLED_LM  # the bundled SmolLM2-135M, or any causal LM id or local path
    max_tokens: int = 256  # documents are truncated to their first max_tokens tokens
    batch_size: int = 8
    dtype: str = "auto"  # auto (the calibrated path, see module docstring) | bf16 | fp32 | a path name
    device: str = "auto"  # auto (cuda when present) | cpu | cuda

    def validate(self) -> None:
        if self.max_tokens < 2:
            raise ValueError("max tokens must be at least 2 (perplexity needs a token to predict)")
        if self.batch_size < 1:
            raise ValueError("batch size must be at least 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {self.dtype!r}")


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


def resolve_dtype(dtype: str, device: str, texts: Sequence[str] = (), model: str = BUNDLED_LM) -> str:
    """The path a pass uses: on a GPU bf16 where supported; on a CPU `auto` is the calibrated choice for the
    model and this CPU (see `choose_path`); 'bf16' and 'fp32' name the torch paths."""
    if dtype in ("bf16", "fp32"):
        return {"bf16": TORCH_BF16, "fp32": TORCH_FP32}[dtype]
    if dtype != "auto":
        return dtype
    import torch

    if device.startswith("cuda"):
        return TORCH_BF16 if torch.cuda.is_bf16_supported() else TORCH_FP32
    return choose_path(model, texts)


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


def onnx_file(name: str, path: str) -> Path | None:
    """The ONNX export of a local causal LM for `path`, made on first need and cached under STUDIO_CACHE (the
    int8 variants quantised from the fp32 export); None where there is no local folder or no onnxruntime."""
    if not onnx_supported(name):
        return None
    source = Path(resolve_lm(name, with_model=True))
    folder = fastpath.onnx_dir("lm-" + source.name, source)
    # onnx-int8-mixed keeps the vocabulary projection (the last weight MatMul) in fp32.
    return fastpath.onnx_variant(folder, path, lambda tmp: _export(source, tmp),
                                 lambda src: fastpath.weight_matmuls(src)[-1:])


def onnx_supported(name: str) -> bool:
    return fastpath.onnx_available() and Path(resolve_lm(name, with_model=True)).is_dir()


def _export(source: Path, target: Path) -> None:
    """torch.onnx (TorchScript exporter; the dynamo one needs onnxscript) of model + summed token NLL."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(str(source))

    class SummedNLL(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            return (nll * attention_mask[:, 1:].to(nll.dtype)).sum(-1)

    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    sample = tokenizer(["an example sentence to trace", "two"], padding=True, return_tensors="pt")
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "nll_sum": {0: "batch"}}
    with torch.inference_mode():
        torch.onnx.export(SummedNLL().eval(), (sample["input_ids"], sample["attention_mask"]), str(target),
                          dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["nll_sum"],
                          dynamic_axes=axes, opset_version=17)


def relative_deviation(reference: Sequence[float | None], other: Sequence[float | None]) -> float:
    """The largest |other / reference - 1| over documents both scored (inf where only one did)."""
    worst = 0.0
    for ref, val in zip(reference, other, strict=True):
        if (ref is None) != (val is None):
            return float("inf")
        if ref is not None and val is not None:
            worst = max(worst, abs(val / ref - 1.0))
    return worst


def calibrate(model: str, texts: Sequence[str], paths: Sequence[str] | None = None,
              progress: Progress = no_progress) -> PathChoice:
    """Time every candidate on a sample of `texts` (truncated to CALIBRATION_TOKENS) and keep the fastest whose
    every document's perplexity is within AGREEMENT_BOUND of fp32 (not stored: see `choose_path`)."""
    sample = fastpath.calibration_sample(texts, CALIBRATION_DOCS)
    if paths is None:
        paths = [p for p in fastpath.candidate_paths(onnx_supported(model), ONNX_VARIANTS)
                 if os.environ.get(INT8_ENV) == "1" or p not in INT8_PATHS]

    def compute(path: str, warm: bool) -> list[float | None]:
        cfg = PerplexityConfig(model=model, max_tokens=CALIBRATION_TOKENS, dtype=path, device="cpu")
        return [p for p, _ in score_texts(sample[-2:] if warm else sample, cfg)]

    trials = fastpath.run_trials(paths, len(sample), compute, relative_deviation,
                                 accept=lambda worst: worst <= AGREEMENT_BOUND,
                                 progress=lambda m: progress(-1.0, m))
    return PathChoice("perplexity", model, fastpath.select_path(trials, higher_agrees_more=False),
                      f"max perplexity deviation <= {AGREEMENT_BOUND:.0%}", fastpath.cpu_feature_key(), trials)


def choose_path(model: str = BUNDLED_LM, texts: Sequence[str] = (), progress: Progress = no_progress) -> str:
    """Forced by STUDIO_PERPLEXITY_PATH, else the cached choice for this model and CPU feature set, else a
    calibration on `texts` (stored); with too few texts to calibrate, the fp32 reference (not stored)."""
    return fastpath.decide(PATH_ENV, "perplexity", model, texts, MIN_CALIBRATION_DOCS,
                           lambda: calibrate(model, texts, progress=progress))


def describe_path(model: str = BUNDLED_LM) -> str:
    forced = fastpath.forced_path(PATH_ENV)
    if forced:
        return f"{forced} (forced by {PATH_ENV})"
    known = fastpath.cached_choice("perplexity", model)
    if known:
        return known.describe()
    return (f"not calibrated yet on this CPU ({fastpath.cpu_feature_key()}): the first pass over "
            f"{MIN_CALIBRATION_DOCS}+ documents times each path and keeps the fastest within "
            f"{AGREEMENT_BOUND:.0%} of fp32 perplexity")


def _padded(ids: list[list[int]], batch: list[int], pad: int) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(ids[i]) for i in batch)
    input_ids = np.full((len(batch), width), pad, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    for row, i in enumerate(batch):
        input_ids[row, :len(ids[i])] = ids[i]
        mask[row, :len(ids[i])] = 1
    return input_ids, mask


def score_texts(texts: Sequence[str], cfg: PerplexityConfig | None = None,
                progress: Progress = no_progress) -> list[tuple[float | None, int]]:
    """(perplexity, tokens scored) per text, in the order given; None where a text has under 2 tokens."""
    import torch

    cfg = cfg or PerplexityConfig()
    cfg.validate()
    lm = load_lm(cfg.model, cfg.device)
    path = resolve_dtype(cfg.dtype, lm.device, texts, cfg.model)
    file = onnx_file(cfg.model, path) if path in ONNX_PATHS else None
    if path in ONNX_PATHS and file is None:
        raise ValueError(f"path {path} needs a local causal LM folder and onnxruntime; {cfg.model!r} has none")
    session = fastpath.onnx_session(str(file)) if file else None
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
            input_np, mask_np = _padded(ids, batch, pad)
            if session is not None:
                nll_sum = session.run(None, {"input_ids": input_np, "attention_mask": mask_np})[0]
                for row, i in enumerate(batch):
                    out[i] = (math.exp(float(nll_sum[row]) / (len(ids[i]) - 1)), len(ids[i]))
            else:
                input_ids = torch.from_numpy(input_np).to(lm.device)
                mask = torch.from_numpy(mask_np).to(lm.device)
                with torch.inference_mode(), torch.autocast(device_type, dtype=torch.bfloat16,
                                                            enabled=path == TORCH_BF16):
                    logits = lm.model(input_ids=input_ids, attention_mask=mask).logits
                for row, i in enumerate(batch):  # one row at a time: a float32 copy of all logits is large
                    n = len(ids[i])
                    nll = torch.nn.functional.cross_entropy(logits[row, :n - 1].float(), input_ids[row, 1:n],
                                                            reduction="mean")
                    out[i] = (math.exp(float(nll)), n)
        done += len(order[start:start + cfg.batch_size])
        progress(done / max(len(order), 1), f"perplexity {done:,}/{len(order):,} documents ({path})")
    return out
