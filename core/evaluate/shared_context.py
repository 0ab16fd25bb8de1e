"""lm-eval's `hf` model with the choices of one question scored on one forward pass of their shared context.

A multiple-choice item asks lm-eval for log P(choice | context) once per choice, with the same context each time.
lm-eval (0.4) runs the context once only when every choice is a single token (its one-token-continuation cache, the
letter formulation); for cloze choices (" Hypertension", " Renal failure", ...) it runs the whole context once per
choice, so an MMLU item costs four context passes, each with the vocabulary projection and a log-softmax over every
position. This model keeps lm-eval's scoring and changes only how the numbers are computed: one forward pass
scores a pack of questions: their contexts and every choice's tokens but the last (as lm-eval feeds
them) in one sequence, with a block mask (a context token sees the earlier tokens of its own context; a choice token
its whole context and its own earlier tokens) and each token's position in its own context and choice, so no padding
is computed; a context shared with the question before it in token order (a subject header, a k-shot block) is
placed once. Only the positions that score a choice token are projected onto the vocabulary (`logits_to_keep`).

The answer for each request is lm-eval's: (sum of the continuation's token log-probabilities, whether greedy
decoding reproduces it). What the shared pass does not cover goes through lm-eval's own `_loglikelihood_tokens`
unchanged: a context asked about only once, a context whose requests together exceed a bounded pack (perplexity's
rolling windows of long documents), a request lm-eval would truncate to `max_length`, a seq2seq model, a model not
in float32 (half-precision passes of different shapes differ by more than the tolerance below). For each model, the
shortest question of the first pack is also scored by lm-eval's own path and compared: a log-likelihood more than
`AGREEMENT` apart, or a different greedy flag, switches the shared pass off for that model (with a warning), so the
scores stay lm-eval's on any architecture whose masking or positions behave differently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm

log = logging.getLogger(__name__)

# Tokens (contexts and choice tails) packed into one forward pass. Measured with SmolLM2-135M on 2 CPU cores: one
# 96-token context runs at ~505 tokens/s, packs of 192-384 tokens at ~600 (larger matrix products), 512 and more
# slower again (the attention spans the whole pack, computed in full and masked); an accelerator takes more.
PACK_TOKENS = 384
ACCELERATOR_PACK_TOKENS = 2048
PACK_LIMIT = 4  # a pack grows past its budget only for shared prefixes, and never past this many budgets
AGREEMENT = 1e-4  # largest log-likelihood difference from lm-eval's own path accepted in the first-pack check
Request = tuple[tuple[str, str] | None, list[int], list[int]]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class SharedContextHFLM(HFLM):
    """`HFLM` whose log-likelihood requests that share a context are scored on one pass of that context."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shared_context = self.backend == "causal" and self.model.dtype == torch.float32
        self._checked = False

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        if not self.shared_context:
            return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (_, context, continuation) in enumerate(requests):
            if len(context) + len(continuation) <= self.max_length:
                groups.setdefault(tuple(context), []).append(i)
        # Shared: several requests on one context, all of them within one bounded pack (`PACK_LIMIT` budgets; the
        # mask grows with the square of a pack). The rolling windows of perplexity share a one-token context with
        # continuations up to `max_length` long: beyond the bound, they go to lm-eval's own batches.
        limit = PACK_LIMIT * self._pack_budget
        shared = {ctx: idx for ctx, idx in groups.items()
                  if len(idx) > 1 and len(ctx) + sum(len(requests[i][2]) - 1 for i in idx) <= limit}
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        in_shared = {i for idx in shared.values() for i in idx}
        rest = [i for i in range(len(requests)) if i not in in_shared]
        if rest:
            for i, answer in zip(rest, super()._loglikelihood_tokens([requests[i] for i in rest], disable_tqdm,
                                                                    override_bs), strict=True):
                results[i] = answer
        # In token order: questions that share a prefix (a subject's header, a few-shot block) sit side by side.
        ordered = sorted(shared.items())
        pbar = tqdm(total=len(in_shared), disable=disable_tqdm or self.rank != 0,
                    desc="Running loglikelihood requests (shared contexts)")
        done = 0
        for chunk in self._packs(ordered, requests):
            answers = self._score_chunk(chunk, requests)
            if not self._checked:
                self._checked = True
                if not self._agrees_with_lm_eval(chunk, requests, answers):
                    self.shared_context = False
                    remaining = [i for _, idx in ordered[done:] for i in idx]
                    for i, answer in zip(remaining, super()._loglikelihood_tokens(
                            [requests[i] for i in remaining], disable_tqdm, override_bs), strict=True):
                        results[i] = answer
                    break
            for i, answer in answers.items():
                results[i] = answer
                request_str = requests[i][0]
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, answer)
            done += len(chunk)
            pbar.update(sum(len(idx) for _, idx in chunk))
        pbar.close()
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]

    @property
    def _pack_budget(self) -> int:
        return PACK_TOKENS if self.device.type == "cpu" else ACCELERATOR_PACK_TOKENS

    def _packs(self, ordered: list[tuple[tuple[int, ...], list[int]]], requests: list[Request]
               ) -> Iterator[list[tuple[tuple[int, ...], list[int]]]]:
        """Consecutive groups, packed while their new tokens (context not shared with the group before, choice
        tails) fit the budget, or while a group shares more of its context than it adds (a k-shot block placed
        once is worth a longer pass), up to `PACK_LIMIT` times the budget."""
        budget = self._pack_budget
        pack: list[tuple[tuple[int, ...], list[int]]] = []
        size = 0
        for group in ordered:
            tails = sum(len(requests[i][2]) - 1 for i in group[1])
            shared = common_prefix(pack[-1][0], group[0]) if pack else 0
            tokens = len(group[0]) - shared + tails
            if pack and (size + tokens > PACK_LIMIT * budget or (size + tokens > budget and shared < tokens)):
                yield pack
                pack, tokens = [], len(group[0]) + tails
                size = 0
            pack.append(group)
            size += tokens
        if pack:
            yield pack

    def _forward(self, **kwargs: Any):
        # As lm-eval's `_model_call`: no gradients, its optional mixed-precision autocast.
        with torch.no_grad(), torch.autocast(device_type=self.device.type, dtype=self.mixed_precision_dtype,
                                             enabled=self.mixed_precision_dtype is not None):
            return self.model(**kwargs)

    def _log_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits, dim=-1, dtype=self.softmax_dtype)

    def _score_chunk(self, chunk: list[tuple[tuple[int, ...], list[int]]], requests: list[Request]
                     ) -> dict[int, tuple[float, bool]]:
        # One sequence: per question the part of its context not already placed by the question before it (the
        # pack is in token order, so a shared subject header or few-shot block is placed once), then each choice's
        # tokens but the last (lm-eval feeds context + continuation[:-1]). A context token sees the earlier tokens
        # of its own context; a choice token its whole context and its own earlier tokens. Positions are each
        # token's place in its own context (+ choice).
        tokens: list[int] = []
        positions: list[int] = []
        context_at: list[list[int]] = []  # per question: where each token of its context sits in the sequence
        placed: list[int] = []  # per question: how many leading tokens of its context an earlier question placed
        tail_at: dict[int, list[int]] = {}  # request -> where its choice tokens (all but the last) sit
        for g, (context, indices) in enumerate(chunk):
            shared = common_prefix(chunk[g - 1][0], context) if g else 0
            context_at.append(context_at[-1][:shared] + list(range(len(tokens), len(tokens) + len(context) - shared))
                              if g else list(range(len(context))))
            placed.append(shared)
            tokens += context[shared:]
            positions += range(shared, len(context))
            for i in indices:
                tail = requests[i][2][:-1]
                tail_at[i] = list(range(len(tokens), len(tokens) + len(tail)))
                tokens += tail
                positions += range(len(context), len(context) + len(tail))
        sees = torch.zeros(len(tokens), len(tokens), dtype=torch.bool)
        for g, (context, indices) in enumerate(chunk):
            at, shared = torch.tensor(context_at[g]), placed[g]
            sees[at[shared:, None], at[None, :]] = torch.ones(len(context) - shared, len(context),
                                                              dtype=torch.bool).tril(diagonal=shared)
            for i in indices:
                own = torch.tensor(tail_at[i], dtype=torch.long)
                sees[own[:, None], at[None, :]] = True
                sees[own[:, None], own[None, :]] = torch.ones(len(own), len(own), dtype=torch.bool).tril()
        # Only the positions that score a choice token are projected onto the vocabulary.
        scored_at = {i: [context_at[g][-1], *tail_at[i]] for g, (_, indices) in enumerate(chunk) for i in indices}
        keep = sorted({p for at in scored_at.values() for p in at})
        row = {p: k for k, p in enumerate(keep)}
        device = self.device
        logits = self._forward(input_ids=torch.tensor([tokens], dtype=torch.long, device=device),
                               attention_mask=self._additive(sees.to(device)),
                               position_ids=torch.tensor([positions], device=device), use_cache=False,
                               logits_to_keep=torch.tensor(keep, device=device)).logits[0]
        scores_all = self._log_softmax(logits)  # [kept positions, vocab]
        answers = {}
        for i, at in scored_at.items():
            scores = scores_all[[row[p] for p in at]]
            target = torch.tensor(requests[i][2], dtype=torch.long, device=device)
            greedy = bool((scores.argmax(dim=-1) == target).all())
            answers[i] = (float(scores.gather(1, target[:, None]).sum()), greedy)
        return answers

    def _additive(self, sees: torch.Tensor) -> torch.Tensor:
        """A [query, key] visibility as the 4D additive mask every attention implementation takes as it is."""
        dtype = self.model.dtype
        return torch.zeros(sees.shape, dtype=dtype, device=sees.device).masked_fill(
            ~sees, torch.finfo(dtype).min)[None, None]

    def _agrees_with_lm_eval(self, chunk: list[tuple[tuple[int, ...], list[int]]], requests: list[Request],
                             answers: dict[int, tuple[float, bool]]) -> bool:
        # One question, the shortest of the pack, is enough to catch a model whose masking or positions differ,
        # and costs lm-eval's path only a few forward passes.
        indices = min(chunk, key=lambda group: len(group[0]))[1]
        reference = super()._loglikelihood_tokens([requests[i] for i in indices], disable_tqdm=True)
        worst = max(abs(answers[i][0] - ref[0]) for i, ref in zip(indices, reference, strict=True))
        same_greedy = all(answers[i][1] == ref[1] for i, ref in zip(indices, reference, strict=True))
        if worst > AGREEMENT or not same_greedy:
            log.warning("shared-context scoring differs from lm-eval's own on this model (largest log-likelihood "
                        "difference %.2e, greedy flags equal: %s): using lm-eval's path", worst, same_greedy)
            return False
        log.info("shared-context scoring agrees with lm-eval's own (largest difference %.2e)", worst)
        return True
