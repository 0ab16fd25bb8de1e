"""Evaluation: lm-eval scores on a small fixed MMLU subset, checked against an independent forward pass; the cache;
the clean subset; perplexity; bootstrap intervals and McNemar; models refused before any work; the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from evalkit import small_mmlu_workspace, tiny_llama, validation_folder
from scipy import stats

from core.evaluate import EvalConfig, resolve_model, run
from core.evaluate import evaluation as evaluation_module
from core.evaluate.stats import mcnemar, mcnemar_counts, mean_interval, paired_difference, paired_ratio
from core.models import ModelUnavailable, resolve_lm
from core.workspace import Workspace
from studio.cli import main as cli_main

ITEM_FIELDS = {"item_id", "benchmark", "formulation", "loglikelihoods", "pred", "gold", "context"}


@pytest.fixture(scope="module")
def small_ws(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_mmlu_workspace(tmp_path_factory.mktemp("eval"), data_dir)


@pytest.fixture(scope="module")
def bundled_eval(small_ws: Path, tmp_path_factory: pytest.TempPathFactory):
    """The bundled model on the subset, both formulations, with perplexity on two tiny validation sets."""
    folder = validation_folder(tmp_path_factory.mktemp("validation"))
    items_out = small_ws.parent / "items.jsonl"
    with Workspace.open(small_ws) as ws:
        result = run(ws, EvalConfig(model="bundled:smollm2", mix=str(folder)), items_out=items_out)
    return result, items_out, folder


# --- statistics (fast) ---------------------------------------------------------------------------------------
def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_items() -> None:
    rng = np.random.default_rng(1)
    small = rng.random(40) < 0.3
    large = rng.random(4000) < 0.3
    a, b = mean_interval(small), mean_interval(large)
    for e in (a, b):
        assert e.low <= e.value <= e.high
    assert (b.high - b.low) < (a.high - a.low) / 4  # ~1/sqrt(100) of the width
    trained, base = rng.random(500) < 0.4, rng.random(500) < 0.3
    diff = paired_difference(trained, base)
    assert diff.low <= diff.value <= diff.high
    assert diff.value == pytest.approx(trained.mean() - base.mean())
    ratio = paired_ratio(trained, base)
    assert ratio.low <= ratio.value <= ratio.high
    assert ratio.value == pytest.approx(trained.mean() / base.mean())
    # identical models: a difference of exactly zero, no spread
    same = paired_difference(base, base)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)


def test_mcnemar_matches_scipy_on_a_hand_made_table() -> None:
    # 2x2 table (base right/wrong x trained right/wrong): a=101, b=121 (base only), c=59 (trained only), d=33
    base = [True] * 101 + [True] * 121 + [False] * 59 + [False] * 33
    trained = [True] * 101 + [False] * 121 + [True] * 59 + [False] * 33
    result = mcnemar(base, trained)
    assert (result.base_only, result.trained_only, result.exact) == (121, 59, False)
    expected = (abs(121 - 59) - 1) ** 2 / (121 + 59)  # 20.672..., with continuity correction
    assert result.statistic == pytest.approx(expected)
    assert result.statistic == pytest.approx(20.6722, abs=1e-4)
    assert result.p_value == pytest.approx(stats.chi2.sf(expected, df=1))
    small = mcnemar_counts(2, 9)  # few discordant pairs: the exact binomial test
    assert small.exact
    assert small.p_value == pytest.approx(stats.binomtest(2, 11, 0.5).pvalue)
    assert small.p_value == pytest.approx(0.06543, abs=1e-5)
    assert mcnemar_counts(0, 0).p_value == 1.0


# --- models --------------------------------------------------------------------------------------------------
def test_models_that_cannot_load_are_refused_before_any_work(small_ws: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    (tmp_path / "broken" / "model.safetensors").write_bytes(b"x")
    for name, reason in ((str(tmp_path / "missing"), "no such folder"), (str(empty), "no config.json"),
                         (str(tmp_path / "broken"), "config cannot be read"), ("nobody/no-such-model", "neither")):
        with pytest.raises(ModelUnavailable, match=reason):
            resolve_model(name)
    with Workspace.open(small_ws) as ws:
        before = ws.scalar("SELECT count(*) FROM runs WHERE step = 'eval'")
        with pytest.raises(ModelUnavailable):
            run(ws, EvalConfig(model="bundled:smollm2", baseline=str(empty)))
        assert ws.scalar("SELECT count(*) FROM runs WHERE step = 'eval'") == before
    code = cli_main(["eval", str(small_ws), "--model", str(empty), "--json"])
    assert code == 2


def test_adapter_folder_is_evaluated_on_its_base_through_peft(small_ws: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = tiny_llama(tmp_path / "base")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.save_pretrained(tmp_path / "adapter")
    spec = resolve_model(str(tmp_path / "adapter"))
    assert spec.adapter == str((tmp_path / "adapter").resolve()) and spec.path == str(base.resolve())
    assert spec.fingerprint != resolve_model(str(base)).fingerprint
    with Workspace.open(small_ws) as ws:
        result = run(ws, EvalConfig(model=str(tmp_path / "adapter"), baseline=str(base), benchmarks=["mmlu_gen"],
                                    formulation="letter", perplexity=False))
    adapter_scores, base_scores = result.models
    lls_a = [i.loglikelihoods for i in adapter_scores.benchmarks[0].items]
    lls_b = [i.loglikelihoods for i in base_scores.benchmarks[0].items]
    assert len(lls_a) == 4 and lls_a != lls_b  # the adapter changes the scores: it was applied
    assert {c.metric for c in result.comparisons} == {"acc"} and result.comparisons[0].kind == "general"


# --- the real model on the fixed subset ----------------------------------------------------------------------
def _independent_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context), one item at a time, split into tokens as lm-eval does (the context's own
    tokens, the rest of the whole string's tokens as the continuation)."""
    import torch

    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    continuation_ids = whole[len(context_ids):]
    ids = torch.tensor([context_ids + continuation_ids])
    start = len(context_ids)
    with torch.no_grad():  # only the positions that predict the continuation
        logprobs = torch.log_softmax(model(ids).logits[0, start - 1:-1].double(), dim=-1)
    return float(sum(logprobs[k, t] for k, t in enumerate(continuation_ids)))


@pytest.mark.slow
def test_every_item_loglikelihood_equals_an_independent_forward_pass(bundled_eval) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _, _ = bundled_eval
    path = resolve_lm("bundled:smollm2", with_model=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    scores = result.models[0].benchmarks
    assert {(s.benchmark, s.formulation) for s in scores} == {(b, f) for b in ("mmlu_med", "mmlu_gen")
                                                              for f in ("letter", "cloze")}
    checked = 0
    for score in scores:
        assert len(score.items) == (6 if score.benchmark == "mmlu_med" else 4)
        for item in score.items:
            texts = ([chr(65 + k) for k in range(len(item.loglikelihoods))] if item.formulation == "letter"
                     else CHOICES[item.item_doc_id])
            ours = [_independent_loglikelihood(model, tokenizer, item.context, " " + t) for t in texts]
            assert np.allclose(item.loglikelihoods, ours, atol=1e-3), (item.item_id, item.loglikelihoods, ours)
            assert item.pred == int(np.argmax(ours))
            if item.formulation == "cloze":
                assert item.pred_norm == int(np.argmax(np.array(ours) / np.array([len(t) for t in texts])))
            checked += 1
    assert checked == 20
    # the overall score is the mean of the per-item predictions, and equals lm-eval's own per-subject figures
    for score in scores:
        assert score.metrics["acc"].value == pytest.approx(np.mean([i.pred == i.gold for i in score.items]))
        for subject, figures in score.lm_eval.items():
            assert score.subjects[subject]["acc"].value == pytest.approx(figures["acc"])


CHOICES: dict[str, list[str]] = {}  # item_doc_id -> choice texts, read from the workspace's benchmark table


@pytest.fixture(autouse=True, scope="module")
def _choices(small_ws: Path) -> None:
    with Workspace.open(small_ws, read_only=True) as ws:
        CHOICES.update({d: json.loads(c) for d, c in ws.query("SELECT doc_id, choices FROM benchmark_items")})


@pytest.mark.slow
def test_items_out_has_the_fields_to_recheck_every_score(bundled_eval) -> None:
    result, items_out, _ = bundled_eval
    rows = [json.loads(line) for line in items_out.read_text().splitlines()]
    assert len(rows) == 20  # 10 items x 2 formulations
    for row in rows:
        assert set(row) >= ITEM_FIELDS
        assert len(row["loglikelihoods"]) == 4 and 0 <= row["pred"] < 4 and 0 <= row["gold"] < 4
        assert ("pred_norm" in row) == (row["formulation"] == "cloze")
        assert row["context"].endswith("Answer:")
    letter = next(r for r in rows if r["formulation"] == "letter")
    assert letter["context"].startswith("The following are multiple choice questions (with answers) about ")
    assert "\nA. " in letter["context"] and "\nD. " in letter["context"]
    cloze = next(r for r in rows if r["formulation"] == "cloze")
    assert cloze["context"].startswith("The following are questions (with answers) about ")
    assert "\nQuestion: " in cloze["context"]
    with open(evalkit_source(), encoding="utf-8") as fh:
        source_ids = {json.loads(line)["id"] for line in fh}
    assert {r["item_id"] for r in rows if r["benchmark"] == "mmlu_med"} <= source_ids


def evalkit_source() -> Path:
    from core.config import data_root

    return data_root() / "mmlu" / "mcq_mmlu_medical_test.jsonl"


@pytest.mark.slow
def test_perplexity_and_bits_per_byte_follow_the_rolling_loglikelihood(bundled_eval) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, _, folder = bundled_eval
    path = resolve_lm("bundled:smollm2", with_model=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    sets = {p.validation_set: p for p in result.models[0].perplexity}
    assert set(sets) == {"domain", "general"}
    for vset, p in sets.items():
        texts = [json.loads(line)["text"] for line in (folder / f"validation_{vset}.jsonl").read_text().splitlines()]
        # short documents: one window, the first token predicted from lm-eval's prefix token (BOS, else EOS)
        lls = [_rolling_one_window(model, tokenizer, t) for t in texts]
        assert np.allclose(p.doc_loglikelihoods, lls, atol=1e-3)
        n_tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
        n_bytes = sum(len(t.encode()) for t in texts)
        assert p.tokens == n_tokens and p.bytes == n_bytes
        assert p.token_perplexity == pytest.approx(math.exp(-sum(lls) / n_tokens), rel=1e-4)
        assert p.bits_per_byte == pytest.approx(-sum(lls) / n_bytes / math.log(2), rel=1e-4)
    assert sets["domain"].token_perplexity < 200  # a sane model on plain medical prose


def _rolling_one_window(model, tokenizer, text: str) -> float:
    import torch

    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    inputs = torch.tensor([[prefix] + ids[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(inputs).logits[0].double(), dim=-1)
    return float(sum(logprobs[k, t] for k, t in enumerate(ids)))


@pytest.mark.slow
def test_evaluating_twice_hits_the_cache(bundled_eval, small_ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, _, folder = bundled_eval
    assert not any(s.cached for s in result.models[0].benchmarks)

    def no_lm_eval(*args, **kwargs):
        raise AssertionError("lm-eval was run for a cached score")

    monkeypatch.setattr(evaluation_module._Harness, "evaluate", no_lm_eval)
    with Workspace.open(small_ws) as ws:
        again = run(ws, EvalConfig(model="bundled:smollm2", mix=str(folder)))
    assert all(s.cached for s in again.models[0].benchmarks) and all(p.cached for p in again.models[0].perplexity)
    for first, second in zip(result.models[0].benchmarks, again.models[0].benchmarks, strict=True):
        assert [i.loglikelihoods for i in first.items] == [i.loglikelihoods for i in second.items]
        assert first.metrics["acc"] == second.metrics["acc"]
    # the CLI reads the same cache
    code = cli_main(["eval", str(small_ws), "--model", "bundled:smollm2", "--mix", str(folder), "--json"])
    assert code == 0


@pytest.mark.slow
def test_clean_subset_excludes_exactly_the_flagged_items(bundled_eval, small_ws: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    result, _, _ = bundled_eval
    with Workspace.open(small_ws) as ws:
        flagged = [r[0] for r in ws.query("SELECT doc_id FROM benchmark_items WHERE corpus = 'mmlu_med' "
                                          "ORDER BY doc_id LIMIT 2")]
        with ws.run("decontam", {"test": True}) as rec:
            for doc_id in flagged:
                ws.con.execute("INSERT INTO benchmark_item_flags (run_id, item_doc_id, flag, doc_id, score) "
                               "VALUES (?, ?, 'lexical', 'some-training-doc', 1.0)", [rec.run_id, doc_id])
        monkeypatch.setattr(evaluation_module._Harness, "evaluate",
                            lambda *a, **k: (_ for _ in ()).throw(AssertionError("not cached")))
        again = run(ws, EvalConfig(model="bundled:smollm2", benchmarks=["mmlu_med"], perplexity=False))
    for score in again.models[0].benchmarks:
        assert score.flagged_items == 2 and score.flagged == set(flagged)
        kept = [i for i in score.items if i.item_doc_id not in flagged]
        assert len(kept) == 4
        for metric, estimate in score.clean.items():
            assert estimate.n == 4
            assert estimate.value == pytest.approx(np.mean([i.correct(metric) for i in kept]))
        assert score.metrics["acc"].n == 6
