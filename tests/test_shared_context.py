"""The shared-context scoring of log-likelihood requests gives lm-eval's own answers: on questions packed one or
many to a pass, multi-token and one-token continuations, contexts asked about once, requests lm-eval would
truncate; and it switches itself off when its first batch disagrees with lm-eval's path."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from evalkit import tiny_llama

from core.evaluate import shared_context
from core.evaluate.shared_context import SharedContextHFLM, common_prefix


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "model", seed=3)


def _requests(lm: SharedContextHFLM, seed: int = 0) -> list[tuple[tuple[str, str], list[int], list[int]]]:
    """Questions of varied lengths, each with 2-5 choices of 1-6 tokens; questions sharing a long header (one
    context the start of another); a context asked about once."""
    rng = random.Random(seed)
    words = ["the", "patient", "presented", "with", "fever", "cough", "renal", "failure", "hypertension", "insulin", "dose", "acute", "chronic"]
    requests = []
    for q in range(11):
        context = "Question: " + " ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) + "\nAnswer:"
        for c in range(rng.randint(2, 5)):
            choice = " " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) if q % 3 else f" {'ABCDE'[c]}"
            requests.append(((context, choice), lm.tok_encode(context), lm.tok_encode(choice)))
    # Few-shot style: questions behind one long shared header, and a context that is the start of another one.
    header = "The following are questions about medicine.\n\n" + " ".join(rng.choice(words) for _ in range(40))
    for q in range(4):
        context = f"{header}\nQuestion {q}: " + " ".join(rng.choice(words) for _ in range(q * 3)) + "\nAnswer:"
        for c in range(3):
            choice = " " + " ".join(rng.choice(words) for _ in range(c + 1))
            requests.append(((context, choice), lm.tok_encode(context), lm.tok_encode(choice)))
    for context in (header, header + " and more"):
        for choice in (" yes", " no, not at all"):
            requests.append(((context, choice), lm.tok_encode(context), lm.tok_encode(choice)))
    lone = "A context asked about only once"
    requests.append(((lone, " here"), lm.tok_encode(lone), lm.tok_encode(" here")))
    # Rolling-window style: a one-token context shared by several longer continuations.
    for k in range(3):
        text = " " + " ".join(rng.choice(words) for _ in range(10 + k))
        requests.append((None, [lm.eot_token_id], lm.tok_encode(text)))
    rng.shuffle(requests)
    return requests


def _lm_eval_answers(lm: SharedContextHFLM, requests) -> list[tuple[float, bool]]:
    return super(SharedContextHFLM, lm)._loglikelihood_tokens(requests, disable_tqdm=True)


@pytest.mark.parametrize("pack_tokens", [30, 200, 100_000], ids=["about-one-question-a-pass", "packs", "all-in-one-pass"])
def test_shared_context_answers_equal_lm_eval_own(model_dir: Path, pack_tokens: int, monkeypatch) -> None:
    monkeypatch.setattr(shared_context, "PACK_TOKENS", pack_tokens)
    lm = SharedContextHFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=4)
    requests = _requests(lm)
    assert sum(len(r[2]) > 1 for r in requests) > 10  # multi-token continuations are exercised
    contexts = sorted({tuple(r[1]) for r in requests})
    assert max(common_prefix(a, b) for a, b in zip(contexts, contexts[1:], strict=False)) > 30  # shared headers
    ours = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert lm._checked and lm.shared_context  # the shared pass ran, and its first-pack check kept it on
    reference = _lm_eval_answers(lm, requests)
    assert len(ours) == len(reference) == len(requests)
    for (ll, greedy), (ref_ll, ref_greedy) in zip(ours, reference, strict=True):
        assert ll == pytest.approx(ref_ll, abs=1e-4)
        assert greedy == ref_greedy


def test_requests_lm_eval_would_truncate_go_through_its_own_path(model_dir: Path) -> None:
    lm = SharedContextHFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=4, max_length=24)
    requests = _requests(lm, seed=1)
    assert any(len(r[1]) + len(r[2]) > 25 for r in requests)
    ours = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    reference = _lm_eval_answers(lm, requests)
    assert [a for a, _ in ours] == pytest.approx([a for a, _ in reference], abs=1e-4)


def test_a_first_batch_that_disagrees_switches_the_shared_pass_off(model_dir: Path, monkeypatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(shared_context, "AGREEMENT", -1.0)  # no difference can pass
    lm = SharedContextHFLM(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=4)
    requests = _requests(lm, seed=2)
    with caplog.at_level(logging.WARNING, logger=shared_context.__name__):
        ours = lm._loglikelihood_tokens(requests, disable_tqdm=True)
    assert not lm.shared_context
    assert "using lm-eval's path" in caplog.text
    reference = _lm_eval_answers(lm, requests)
    assert ours == reference  # every answer came from lm-eval's own computation


def test_half_precision_models_use_lm_eval_path(model_dir: Path) -> None:
    lm = SharedContextHFLM(pretrained=str(model_dir), dtype="bfloat16", device="cpu", batch_size=4)
    assert not lm.shared_context
