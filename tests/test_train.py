"""Training on a tiny randomly initialised Llama with the real SmolLM2 tokenizer, on a tiny export in the mix's
format made from the shared data: CPT, SFT (LoRA) and DPO end to end under `accelerate launch`, stop then resume
equal to an uninterrupted run, freezing, EWC and averaging, bad configs refused, and the Train page."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.jobs import get_job, list_jobs, resume_job, sleep_until, stop_job, wait_job
from core.train.config import ConfigError, config_to_toml, parse_config, preset_config
from core.train.launch import (
    accelerate_config,
    estimate,
    job_summary,
    launch_training,
    model_card,
    resolve,
    same_training,
    write_accelerate_config,
)
from core.train.metrics import read_metrics
from core.train.run import RESOLVED_NAME
from core.train.run import train as train_in_process
from core.workspace import Workspace
from studio.cli import main as cli_main

TINY_STEPS = 8


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _texts(data_dir: Path, relative: str, start: int, stop: int) -> list[str]:
    with open(data_dir / relative, encoding="utf-8") as fh:
        return [json.loads(line)["text"] for line in fh][start:stop]


@pytest.fixture(scope="module")
def tiny(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 2-layer Llama (hidden 32) with the bundled tokenizer, and an export folder as `core.mix` writes one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from core.models import load_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = load_tokenizer("bundled:smollm2")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    export = root / "export"
    export.mkdir()
    medquad = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"
    _write_jsonl(export / "train.jsonl", [{"text": t} for t in _texts(data_dir, medquad, 0, 60)])
    _write_jsonl(export / "validation_domain.jsonl", [{"text": t} for t in _texts(data_dir, medquad, 100, 120)])
    _write_jsonl(export / "validation_general.jsonl",
                 [{"text": t} for t in _texts(data_dir, "llamafactory/corpus_en_wikipedia_paragraphs.jsonl", 0, 20)])
    with open(data_dir / "medquad/sft_en_medquad_alpaca.jsonl", encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh][:24]
    _write_jsonl(export / "sft_alpaca.jsonl", [{"instruction": r["instruction"], "input": r.get("input", ""),
                                                "output": r["output"], "system": "", "history": []}
                                               for r in records])
    files = {p.name: {"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
             for p in sorted(export.iterdir())}
    (export / "manifest.json").write_text(json.dumps({"format": "studio-mix/1", "name": "tiny", "files": files,
                                                      "budget": {"exported_tokens": 12_000}}))
    no_validation = root / "export-without-validation"
    shutil.copytree(export, no_validation)
    (no_validation / "validation_general.jsonl").unlink()
    ws = root / "ws"
    Workspace.open(ws).close()
    return {"root": root, "model": root / "model", "export": export, "ws": ws, "no_validation": no_validation,
            "dpo": data_dir / "llamafactory/pref_en_general_dpo_demo.json"}


def tiny_config(tiny: dict[str, Path], stage: str = "cpt", extra: str = "", **keys: object) -> str:
    values = {"stage": stage, "model": str(tiny["model"]), "mix": str(tiny["export"]), "max_steps": TINY_STEPS,
              "block_size": 32, "batch_size": 2, "eval_steps": 4, "save_steps": 100, "eval_tokens": 128,
              "learning_rate": 3e-3, "warmup": 0.0, "seed": 7}
    values.update(keys)
    text = "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
    return text + extra


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


# --- configs refused before launch ------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "reason"), [
    ('stage = "cpt"\nmix = "m"\nlearning_rat = 1e-5\n', "unknown key 'learning_rat'"),
    ('stage = "cpt"\nmix = "m"\n[lora]\nrank = 8\n', r"unknown key 'rank' in \[lora\]"),
    ('stage = "cpt"\nmix = "m"\nbatch_size = "four"\n', "batch_size must be a whole number"),
    ('stage = "pretrain"\n', "stage must be one of cpt, sft, dpo"),
    ('stage = "dpo"\n', "needs data: a preference file"),
    ('stage = "cpt"\n', "needs a mix"),
    ('stage = "cpt"\nmix = "m"\n[trainer]\nlearning_rate = 1.0\n', r"\[trainer\] cannot set learning_rate"),
    ('stage = "cpt"\nmix = "m"\n[ewc]\nlambda = -1\n', "lambda must be >= 0"),
])
def test_bad_configs_are_refused_by_name(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_config(text)


def test_bad_inputs_are_refused_before_launch(tiny: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    cases = [
        (tiny_config(tiny, block_size=512, eval_tokens=1024), "block_size 512 exceeds the model's context of 256"),
        (tiny_config(tiny, model=str(tmp_path / "nowhere")), "cannot be loaded"),
        (tiny_config(tiny, mix=str(tiny["no_validation"])), "no general validation set"),
        (tiny_config(tiny, mix="not-a-mix"), "neither an export folder"),
    ]
    bad_pairs = tmp_path / "pairs.jsonl"
    _write_jsonl(bad_pairs, [{"conversations": [{"from": "human", "value": "hi"}], "chosen": "hello"}])
    cases.append((tiny_config(tiny, "dpo", data=str(bad_pairs)), "record 1 has no `rejected`"))
    for text, reason in cases:
        with pytest.raises(ConfigError, match=reason):
            launch_training(tiny["ws"], text)
    config = tmp_path / "bad.toml"
    config.write_text(tiny_config(tiny, block_size=512, eval_tokens=1024))
    assert cli_main(["train", str(tiny["ws"]), "--config", str(config)]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err
    assert list_jobs(tiny["ws"]) == []  # nothing was launched


def test_presets_round_trip_and_accelerate_configs(tiny: dict[str, Path], tmp_path: Path) -> None:
    cpt = preset_config("CPT", mix="demo-mip")
    assert (cpt.learning_rate, cpt.warmup, cpt.weight_decay, cpt.max_grad_norm) == (2e-5, 0.1, 0.01, 1.0)
    assert parse_config(config_to_toml(cpt)) == cpt
    assert preset_config("DPO", data="x.json").dpo.beta == 0.1
    for mode, kind in (("none", "NO"), ("ddp", "MULTI_GPU"), ("fsdp", "FSDP"), ("deepspeed2", "DEEPSPEED"),
                       ("deepspeed3", "DEEPSPEED")):
        config = parse_config(tiny_config(tiny, extra=f'[distributed]\nmode = "{mode}"\nnum_processes = 8\n'
                                                      'num_machines = 2\nmain_process_ip = "10.0.0.1"\n'))
        path = write_accelerate_config(config, tmp_path / f"{mode}.yaml", cuda=True)  # read back by Accelerate
        generated = accelerate_config(config, cuda=True)
        assert generated["distributed_type"] == kind and path.exists()
        if mode.startswith("deepspeed"):
            assert generated["deepspeed_config"]["zero_stage"] == int(mode[-1])
        if mode != "none":
            assert generated["num_processes"] == 8 and generated["main_process_ip"] == "10.0.0.1"


# --- end to end under accelerate launch -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def launched(tiny: dict[str, Path]) -> dict[str, object]:
    """Four jobs started together (several jobs per workspace run side by side): an uninterrupted CPT job, the
    same config to be stopped after a few steps and resumed, an SFT job with LoRA and a DPO job."""
    ws = tiny["ws"]
    text = tiny_config(tiny)
    return {
        "whole": launch_training(ws, text),
        # Slowed down so the stop lands mid-run; the pause changes no number.
        "stopped": launch_training(ws, text, env={"STUDIO_TRAIN_STEP_DELAY": "1.0"}),
        "sft": launch_training(ws, tiny_config(tiny, "sft", block_size=128, max_steps=4, eval_steps=2,
                                               extra="method = 'lora'\n[lora]\nr = 4\nalpha = 8\ndropout = 0.0\n"
                                                     "target_modules = ['q_proj', 'v_proj']\n")),
        "dpo": launch_training(ws, tiny_config(tiny, "dpo", data=str(tiny["dpo"]), block_size=128, max_steps=3,
                                               eval_steps=3, learning_rate=1e-3)),
    }


@pytest.fixture(scope="module")
def cpt_runs(tiny: dict[str, Path], launched: dict[str, object]) -> dict[str, object]:
    ws = tiny["ws"]
    stopped = launched["stopped"]
    assert sleep_until(lambda: any(r.get("step", 0) >= 2 for r in read_metrics(Path(stopped.output_dir))), 400,
                       poll_s=0.2), get_job(ws, stopped.job_id).log_tail()
    stop_job(ws, stopped.job_id)
    after_stop = wait_job(ws, stopped.job_id, poll_s=0.5, timeout_s=300)
    card = model_card(after_stop)
    metrics_at_stop = read_metrics(Path(stopped.output_dir))
    resumed = resume_job(ws, stopped.job_id)
    assert resumed.status == "running"
    return {"whole": wait_job(ws, launched["whole"].job_id, poll_s=0.5, timeout_s=400), "after_stop": after_stop,
            "card_at_stop": card, "metrics_at_stop": metrics_at_stop,
            "resumed": wait_job(ws, stopped.job_id, poll_s=0.5, timeout_s=400)}


def test_cpt_runs_end_to_end_with_both_validation_losses(cpt_runs: dict, tiny: dict[str, Path]) -> None:
    whole = cpt_runs["whole"]
    assert whole.status == "finished", whole.error
    folder = Path(whole.output_dir)
    metrics = read_metrics(folder)
    steps = [r["step"] for r in metrics if r.get("loss") is not None]
    assert steps == list(range(1, TINY_STEPS + 1))
    evaluated = [r for r in metrics if "domain_val_loss" in r]
    assert [r["step"] for r in evaluated] == [0, 4, 8]
    assert all(r["general_val_loss"] > 0 and r["domain_val_ppl"] > 1 for r in evaluated)
    # The domain loss falls on a model trained on domain text.
    assert evaluated[-1]["domain_val_loss"] < evaluated[0]["domain_val_loss"]
    assert all(r["tokens_per_s"] > 0 and r["learning_rate"] is not None for r in metrics if r.get("loss"))
    card = json.loads((folder / "model" / "studio_model.json").read_text())
    assert card["status"] == "finished" and card["usable"] and card["job_id"] == whole.job_id
    assert card["manifest_sha256"] == hashlib.sha256((tiny["export"] / "manifest.json").read_bytes()).hexdigest()
    assert card["base_model"] == str(tiny["model"])
    assert (folder / "model" / "tokenizer.json").exists() and (folder / "model" / "model.safetensors").exists()
    assert "accelerate.commands.launch" in whole.argv and "distributed_type: 'NO'" in (
        folder / "accelerate.yaml").read_text().replace('"', "'")
    summary = job_summary(whole)
    assert summary["steps"] == TINY_STEPS and summary["domain_val_ppl"] > 1


def test_stop_leaves_a_usable_model_and_resume_matches_the_uninterrupted_run(cpt_runs: dict) -> None:
    after_stop = cpt_runs["after_stop"]
    assert after_stop.status == "stopped", after_stop.error
    card = cpt_runs["card_at_stop"]
    stopped_at = card["step"]
    assert card["status"] == "stopped" and card["usable"] and not card["complete"]
    assert 2 <= stopped_at < TINY_STEPS
    assert max(r["step"] for r in cpt_runs["metrics_at_stop"]) == stopped_at
    resumed = cpt_runs["resumed"]
    assert resumed.status == "finished" and resumed.attempts == 2, resumed.error
    assert "resuming from" in resumed.log_tail(200)
    whole = {r["step"]: r for r in read_metrics(Path(cpt_runs["whole"].output_dir)) if r.get("loss") is not None}
    again = {r["step"]: r for r in read_metrics(Path(resumed.output_dir)) if r.get("loss") is not None}
    assert sorted(again) == list(range(1, TINY_STEPS + 1))  # no step twice, none missing
    for step in range(1, TINY_STEPS + 1):
        assert abs(whole[step]["loss"] - again[step]["loss"]) < 1e-4, (step, whole[step], again[step])
        assert abs(whole[step]["learning_rate"] - again[step]["learning_rate"]) < 1e-12
    final_a = weights(Path(cpt_runs["whole"].output_dir) / "model")
    final_b = weights(Path(resumed.output_dir) / "model")
    assert all(torch.allclose(final_a[k], final_b[k], atol=1e-5) for k in final_a)


def test_a_rebuilt_identical_mix_reuses_the_finished_job_and_a_changed_one_does_not(cpt_runs: dict,
                                                                                    tiny: dict[str, Path]) -> None:
    # Re-running the demo rebuilds its mix: a new manifest (it names the new run) over the same files.
    ws, text = tiny["ws"], tiny_config(tiny)
    manifest = tiny["export"] / "manifest.json"
    original = manifest.read_text()
    jobs_before = len(list_jobs(ws, "train"))
    try:
        rebuilt = json.loads(original) | {"run": {"run_id": "mix-rebuilt", "created_at": "2026-12-01T00:00:00"}}
        manifest.write_text(json.dumps(rebuilt))
        job = launch_training(ws, text, reuse=True)
        assert job.job_id in {cpt_runs["whole"].job_id, cpt_runs["resumed"].job_id} and job.status == "finished"
        assert len(list_jobs(ws, "train")) == jobs_before
        rebuilt["files"]["train.jsonl"]["sha256"] = "0" * 64  # other training text: train again
        manifest.write_text(json.dumps(rebuilt))
        assert same_training(ws, text, resolve(parse_config(text), ws)) is None
    finally:
        manifest.write_text(original)


@pytest.fixture(scope="module")
def sft_dpo_runs(tiny: dict[str, Path], launched: dict[str, object]) -> dict[str, object]:
    return {name: wait_job(tiny["ws"], launched[name].job_id, poll_s=0.5, timeout_s=400) for name in ("sft", "dpo")}


def test_sft_with_lora_trains_adapters_and_saves_a_merged_model(sft_dpo_runs: dict, tiny: dict[str, Path]) -> None:
    job = sft_dpo_runs["sft"]
    assert job.status == "finished", job.error
    folder = Path(job.output_dir)
    metrics = read_metrics(folder)
    assert [r["step"] for r in metrics if r.get("loss") is not None] == [1, 2, 3, 4]
    assert any("general_val_loss" in r for r in metrics if r["step"] == 4)
    assert (folder / "adapter" / "adapter_model.safetensors").exists()
    adapter_config = json.loads((folder / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]
    base, merged = weights(tiny["model"]), weights(folder / "model")
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    # LoRA changes exactly the targeted projections; everything else is the base model's, bit for bit.
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)
    assert json.loads((folder / "model" / "studio_model.json").read_text())["method"] == "lora"


def test_dpo_trains_on_preference_pairs(sft_dpo_runs: dict, tiny: dict[str, Path]) -> None:
    job = sft_dpo_runs["dpo"]
    assert job.status == "finished", job.error
    metrics = read_metrics(Path(job.output_dir))
    steps = [r for r in metrics if r.get("loss") is not None]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all("rewards/margins" in r and r["tokens_per_s"] > 0 for r in steps)
    assert "domain_val_loss" in steps[-1]
    base, trained = weights(tiny["model"]), weights(Path(job.output_dir) / "model")
    assert any(not torch.equal(base[k], trained[k]) for k in base)


# --- methods and forgetting guards, trained in this process (the same code the job runs) -----------------------------
def run_here(tiny: dict[str, Path], tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.toml").write_text(text)
    (folder / RESOLVED_NAME).write_text(json.dumps(resolve(parse_config(text), None)))
    result = train_in_process(folder)
    assert result["status"] == "finished"
    return folder


def test_freezing_keeps_weights_bit_identical_and_averaging_mixes_with_the_base(tiny: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    text = tiny_config(tiny, max_steps=3, eval_steps=3, extra="method = 'freeze'\n[freeze]\nfraction = 0.5\n"
                                                              "embeddings = true\n[average]\nenabled = true\n"
                                                              "alpha = 0.3\n")
    folder = run_here(tiny, tmp_path, "freeze", text)
    base, trained = weights(tiny["model"]), weights(folder / "model")
    frozen = [k for k in base if k.startswith("model.layers.0.") or k == "model.embed_tokens.weight"]
    moved = [k for k in base if k.startswith("model.layers.1.") and k.endswith("proj.weight")]
    assert frozen and moved
    assert all(torch.equal(base[k], trained[k]) for k in frozen)
    assert all(not torch.equal(base[k], trained[k]) for k in moved)
    averaged = weights(folder / "model_averaged")
    for key in base:
        assert torch.allclose(averaged[key], 0.3 * base[key] + 0.7 * trained[key], atol=1e-6), key
    card = json.loads((folder / "model_averaged" / "studio_model.json").read_text())
    assert card["averaged_with_base"] and card["average_alpha"] == 0.3


def test_ewc_holds_the_weights_near_the_base(tiny: dict[str, Path], tmp_path: Path) -> None:
    # Plain SGD, so the penalty acts as the quadratic pull it is (Adam's normalised steps blur it in 4 steps).
    sgd = "[trainer]\noptim = 'sgd'\n"
    plain = run_here(tiny, tmp_path, "plain", tiny_config(tiny, max_steps=4, eval_steps=4, learning_rate=1.0,
                                                          extra=sgd))
    guarded = run_here(tiny, tmp_path, "ewc", tiny_config(tiny, max_steps=4, eval_steps=4, learning_rate=1.0,
                                                          extra="[ewc]\nenabled = true\nlambda = 0.1\nbatches = 2\n"
                                                                + sgd))
    base = weights(tiny["model"])

    def drift(folder: Path) -> float:
        trained = weights(folder / "model")
        return sum(float((trained[k] - base[k]).pow(2).sum()) for k in base) ** 0.5

    assert drift(guarded) < 0.8 * drift(plain)
    penalties = [r["ewc_penalty"] for r in read_metrics(guarded) if r.get("loss") is not None]
    assert penalties[0] == 0.0 and min(penalties[1:]) > 0  # zero at the anchor, positive once the weights move


def test_a_mix_is_found_by_its_name_in_the_workspace(tiny: dict[str, Path], tmp_path: Path) -> None:
    from core.train.data import resolve_export

    ws_path = tmp_path / "named"
    with Workspace.open(ws_path) as ws:
        with ws.run("mix", {"name": "tiny"}) as run:
            ws.con.execute("INSERT INTO mixes (mix_id, name, export_dir) VALUES (?, 'tiny', ?)",
                           [run.run_id, str(tiny["export"])])
        assert resolve_export("tiny", ws) == tiny["export"].resolve()  # an open workspace (the demo's case)
    assert resolve_export("tiny", ws_path) == tiny["export"].resolve()
    assert available_mixes_of(ws_path) == ["tiny"]
    with pytest.raises(ConfigError, match="neither an export folder"):
        resolve_export("other", ws_path)


def available_mixes_of(ws_path: Path) -> list[str]:
    from core.train.launch import available_mixes

    with Workspace.open(ws_path, read_only=True) as ws:
        return [m["name"] for m in available_mixes(ws)]


def test_dry_run_estimate(tiny: dict[str, Path]) -> None:
    est = estimate(tiny["ws"], tiny_config(tiny, max_steps=0, epochs=2.0))
    assert est.tokens == 12_000 and est.steps == 2 * 188  # 375 blocks of 32 tokens, 2 a step, 2 epochs
    assert est.tokens_per_step == 64
    # both validation sets at step 0 and every 4 steps (376 steps: 95 passes), 128 tokens each (4 blocks of 32)
    assert est.validation_passes == 1 + 376 // 4 and est.validation_tokens == 95 * 2 * 128
    if est.rate_tokens_per_s:  # a job of this workspace ran before: the time counts validation at a third of a step
        assert est.validation_seconds == pytest.approx(est.validation_tokens / (3 * est.rate_tokens_per_s))
        assert est.seconds == pytest.approx(376 * 64 / est.rate_tokens_per_s + est.validation_seconds)


# --- the page ---------------------------------------------------------------------------------------------------------
def test_train_page_lists_jobs_compares_them_and_refuses_a_bad_config(cpt_runs: dict, sft_dpo_runs: dict,
                                                                      tiny: dict[str, Path]) -> None:
    from conftest import run_page

    at = run_page("train.py", tiny["ws"])
    assert not at.exception, at.exception
    table = next(t for t in at.dataframe)
    shown = set(table.value["job_id"])
    assert {cpt_runs["whole"].job_id, cpt_runs["resumed"].job_id, sft_dpo_runs["dpo"].job_id} <= shown
    finished = table.value.set_index("job_id").loc[cpt_runs["whole"].job_id]
    assert finished["status"] == "finished" and finished["steps"] == TINY_STEPS and finished["domain_val_ppl"] > 1
    assert len(at.get("plotly_chart")) >= 8  # the open job's four panels and the comparison's four
    # The form, pointed at the tiny model and export: the estimate, then a config the model cannot take.
    at.selectbox(key="train_mix").set_value("another export folder…").run()
    at.text_input(key="train_mix_folder").set_value(str(tiny["export"])).run()
    at.text_input(key="train_model").set_value(str(tiny["model"])).run()
    at.number_input(key="train_block").set_value(32).run()
    at.button(key="train_estimate").click().run()
    assert not at.exception
    assert any("steps of up to 128 tokens" in i.value and "12,000 training tokens" in i.value for i in at.info)
    at.number_input(key="train_block").set_value(512).run()
    before = len(list_jobs(tiny["ws"]))
    at.button(key="train_launch").click().run()
    assert any("exceeds the model's context of 256" in e.value for e in at.error)
    assert len(list_jobs(tiny["ws"])) == before


@pytest.mark.slow
def test_bundled_model_trains_a_few_steps_from_the_command_line(tiny: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "cpt.toml"
    config.write_text(tiny_config(tiny, model="bundled:smollm2", max_steps=2, block_size=64, batch_size=1,
                                  eval_steps=2, eval_tokens=128, learning_rate=2e-5))
    assert cli_main(["train", str(tiny["ws"]), "--config", str(config), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "finished" and out["job_id"].startswith("train-")
    metrics = read_metrics(Path(out["output_dir"]))
    first, last = metrics[0], metrics[-1]
    # The real model knows medical prose: its perplexity is far from a random model's 49,000.
    assert first["step"] == 0 and first["domain_val_ppl"] < 200
    assert last["step"] == 2 and last["loss"] < 8 and "general_val_loss" in last
    card = json.loads((Path(out["output_dir"]) / "model" / "studio_model.json").read_text())
    assert card["base_model"] == "bundled:smollm2" and card["status"] == "finished"


@pytest.mark.browser
def test_train_page_in_a_browser_launch_watch_reload_stop_resume(tiny: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, app_server,
                                                                 _browser) -> None:
    from browser_walk import train_walk

    ws = tmp_path / "ws"
    Workspace.open(ws).close()
    monkeypatch.setenv("STUDIO_TRAIN_STEP_DELAY", "2.0")  # jobs the app launches inherit it: time to watch
    url = app_server(ws)

    def snap(page, name: str) -> None:
        page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)

    # the form pointed at the tiny model and export; launched, watched, closed and re-opened, stopped, resumed
    seen = train_walk(_browser, url, ws, snap, steps=40, model=str(tiny["model"]), mix_folder=str(tiny["export"]),
                      block_size=32, eval_steps=5, save_steps=100, progress_timeout_ms=300_000, end_timeout_s=400)
    assert seen["live_charts"] >= 4 and 0 < seen["stopped_at_step"] < 40
    assert seen["attempts"] == 2 and seen["last_step"] == 40
