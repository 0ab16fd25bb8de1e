"""The step contract: a parameter is defined once, in the step's config, and reaches the CLI, the page's job
arguments and the demo recipe from there."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core import steps
from core.demo import load_recipe, run_steps
from core.progress import Progress, no_progress
from core.steps import Step, config_from_recipe, job_argv, param, params_of, register_step, validate_fields
from core.workspace import Workspace
from studio.cli import build_parser, main


@dataclass
class EchoConfig:
    """Echo a word: a throw-away step of this test."""

    word: str = param("hello", help="the word echoed")
    times: int = param(1, minimum=1, maximum=5, help="how many times")

    def validate(self) -> None:
        validate_fields(self)


@dataclass
class EchoResult:
    run_id: str
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "text": self.text}


def run_echo(ws: Workspace, config: Any, progress: Progress = no_progress) -> EchoResult:
    text = " ".join([config.word.upper() if getattr(config, "shout", False) else config.word] * config.times)
    with ws.run("echo", {"word": config.word, "times": config.times}) as run:
        run.counts = {"text": text}
    progress(1.0, "echoed")
    return EchoResult(run.run_id, text)


@pytest.fixture
def echo_step() -> Iterator[type]:
    """The step registered with one field more than EchoConfig: the only edit a new parameter needs."""

    @dataclass
    class LouderEchoConfig(EchoConfig):
        shout: bool = param(False, help="echo it in capitals")
        separator_count: int = param(0, flag="--separators", minimum=0, help="separators between words")

    register_step(Step("echo", LouderEchoConfig, run_echo, command="echo"))
    yield LouderEchoConfig
    steps.REGISTRY.pop("echo")


def _help(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    return out.getvalue()


def test_a_field_added_to_a_step_config_reaches_the_cli_the_job_arguments_and_the_recipe(
        echo_step: type, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # the CLI's --help: one option per field, help and default from the field
    text = _help("echo")
    assert "--shout" in text and "echo it in capitals" in text
    assert "--separators" in text and "--times" in text and "how many times (default 1)" in text

    # the page's job arguments: only what differs from the defaults, in the CLI's spelling
    config = echo_step(word="hi", shout=True, separator_count=2)
    assert job_argv("echo", config) == ["echo", "--word", "hi", "--shout", "--separators", "2"]
    assert job_argv("echo", echo_step()) == ["echo"]

    # the recipe: the same field list; a misspelt key is an error
    assert config_from_recipe(echo_step, {"name": "echo", "shout": True, "times": 2}) == echo_step(shout=True,
                                                                                                   times=2)
    with pytest.raises(ValueError, match="unknown keys \\['shuot'\\]"):
        config_from_recipe(echo_step, {"name": "echo", "shuot": True})

    # and all three run the same code: the CLI with the page's arguments, the demo with the recipe's table
    Workspace.open(tmp_path / "ws").close()
    argv = job_argv("echo", config)
    assert main([argv[0], str(tmp_path / "ws"), *argv[1:], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["text"] == "HI"
    with Workspace.open(tmp_path / "ws") as ws:
        out = run_steps(ws, [{"name": "echo", "word": "yo", "times": 2, "shout": True}])
    assert out == [{"step": "echo", "run_id": out[0]["run_id"], "text": "YO YO", "seconds": out[0]["seconds"]}]


def test_bounds_and_choices_come_from_the_field(echo_step: type, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(ValueError, match="times must be at most 5, not 9"):
        echo_step(times=9).validate()
    Workspace.open(tmp_path / "ws").close()
    assert main(["echo", str(tmp_path / "ws"), "--times", "0"]) == 2
    assert "times must be at least 1, not 0" in capsys.readouterr().err


def test_every_demo_recipe_table_reads_into_its_steps_config() -> None:
    recipe = load_recipe()
    for table in recipe["step"]:
        configs = steps.get_step(table["name"]).configs_from_recipe(table)
        assert configs
        for config in configs.values():
            config.validate()  # the recipe's values are within the fields' bounds
    dedup = next(t for t in recipe["step"] if t["name"] == "dedup")
    semantic = steps.get_step("dedup").configs_from_recipe(dedup)["semantic"]
    assert semantic.method == "semantic" and semantic.corpora == ("medquad_nih", "fever_textbook_zh")


def test_dedup_defaults_live_in_its_config_only() -> None:
    from core.dedup import DedupConfig

    by_name = {p.name: p for p in params_of(DedupConfig)}
    assert by_name["num_perm"].default == 128 and by_name["num_perm"].flag == "--num-perm"
    assert by_name["embed_model"].flag == "--model" and by_name["normalisation.casefold"].flag == "--keep-case"
    argv = job_argv("dedup", DedupConfig(method="exact", normalisation={"casefold": False}, corpora=["a", "b"]))
    assert argv == ["dedup", "--method", "exact", "--corpora", "a,b", "--keep-case"]


def _parsed(argv: list[str]) -> Any:
    return build_parser().parse_args(argv)


def test_hand_written_commands_take_their_options_from_their_configs(tmp_path: Path) -> None:
    """The commands' flags (interfaces) read into their configs, and a config's argument list reads
    back into the same config: the page's job and the command line cannot drift apart."""
    from core.benchmarks import BenchmarkImportConfig
    from core.evaluate import EvalConfig
    from core.ingest import IngestConfig
    from core.lexicon_mine import LexiconMineConfig
    from core.mix import MixExportConfig
    from core.quality import QualityFilterConfig, QualityScoreConfig, QualityStepConfig
    from core.report import REPORT_SKIPS, ReportConfig
    from core.steps import config_argv, config_from_args

    ws = str(tmp_path / "ws")
    quality = config_from_args(QualityStepConfig, _parsed(
        ["score", ws, "--rules", "c4,safety", "--threshold", "word_count:min=20", "--threshold",
         "perplexity:max@zh=5000", "--keep-share", "0.1", "--seed", "3", "--role", "domain", "--corpus", "a",
         "--perplexity", "--lm", "m", "--max-tokens", "64", "--lm-batch-size", "4", "--dtype", "fp32",
         "--sample-per-corpus", "16", "--weights", "relevance=0.5", "--workers", "1", "--recompute"])).one_scope()
    assert quality.filter == QualityFilterConfig(rules=["c4", "safety"], roles=["domain"], corpora=["a"],
                                                 thresholds={"word_count:min": 20.0, "perplexity:max@zh": 5000.0},
                                                 keep_share=0.1, seed=3)
    assert quality.score == QualityScoreConfig(
        roles=["domain"], corpora=["a"], recompute=True, workers=1, perplexity=True, lm="m", max_tokens=64,
        lm_batch_size=4, dtype="fp32", sample_per_corpus=16,
        weights={"relevance": 0.5, "fluency": 0.2, "informativeness": 0.3, "safety": 0.2})
    argv = job_argv("quality", quality)
    assert argv[:2] == ["score", "--rules"]  # the rules are always named on the page's command line
    assert config_from_args(QualityStepConfig, _parsed([argv[0], ws, *argv[1:]])).one_scope() == quality
    assert config_from_args(QualityStepConfig, _parsed(["score", ws])) == QualityStepConfig()

    evaluation = config_from_args(EvalConfig, _parsed(
        ["eval", ws, "--model", "m", "--baseline", "b", "--benchmarks", "x,y", "--formulation", "cloze",
         "--shots", "5", "--limit", "10", "--no-perplexity"]))
    assert evaluation == EvalConfig(model="m", baseline="b", benchmarks=["x", "y"], formulation="cloze", shots=5,
                                    limit=10, perplexity=False)
    assert config_from_args(EvalConfig, _parsed(["eval", ws, "--model", "m", *config_argv(evaluation)[2:]])) \
        == evaluation
    assert config_from_args(EvalConfig, _parsed(["eval", ws, "--model", "m", "--benchmarks", ""])).benchmarks is None

    report = ReportConfig(jobs=["j1", "j2"], out="r.html", min_gain=0.01,
                          scoring=EvalConfig(model="", limit=100, formulation="letter"))
    argv = config_argv(report, skip=REPORT_SKIPS)
    assert "--model" not in argv and "--baseline" not in argv
    assert config_from_args(ReportConfig, _parsed(["report", ws, *argv]), **{"scoring.model": ""}) == report

    ingest = IngestConfig(sources=["a.jsonl", "b.csv"], corpus="c", role="domain", fmt="jsonl",
                          template="{q}\n{a}")
    argv = config_argv(ingest)
    assert argv[:2] == ["a.jsonl", "b.csv"]  # the positional sources first, as `studio ingest WS FILE...` takes
    assert config_from_args(IngestConfig, _parsed(["ingest", ws, *argv])) == ingest

    mine = LexiconMineConfig(domain=["a", "b"], general=["c"], out="m.csv", min_df=3, language="en")
    assert config_from_args(LexiconMineConfig, _parsed(["lexicon-mine", ws, *config_argv(mine)])) == mine
    bench = BenchmarkImportConfig(sources=["t.csv"], name="mmlu", kind="general", fmt="mcq", encoding="gb18030")
    assert config_from_args(BenchmarkImportConfig, _parsed(
        ["bench-import", ws, "t.csv", "--name", "mmlu", "--kind", "general", "--format", "mcq", "--encoding",
         "gb18030"])) == bench

    assert config_argv(MixExportConfig(recipe="r.toml")) == ["--recipe", "r.toml"]
    assert config_from_args(MixExportConfig, _parsed(["mix", ws, "--recipe", "r.toml", "--out", "d",
                                                      "--memory-limit", "1GB"])) \
        == MixExportConfig(recipe="r.toml", out="d", memory_limit="1GB")


def test_preset_mix_domain_source_reaches_the_cli_and_the_recipe(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """An eval-driven mix and its random control are one field apart, the same in `studio mix --write-preset`, the
    demo recipe's mix step and the Mix page (which reads the field's choices and help)."""
    from core.demo import step_labels
    from core.mix import PresetMixConfig
    from core.mix import load_recipe as load_mix_recipe

    ws, path = str(tmp_path / "ws"), tmp_path / "control.toml"
    Workspace.open(ws).close()
    assert main(["mix", ws, "--recipe", str(path), "--write-preset", "MIP 80/10/10", "--tokens", "120000",
                 "--domain-source", "control", "--source-share", "0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["domain_source"] == "control"
    recipe = load_mix_recipe(path)
    assert [(c.name, c.source, round(c.share, 3)) for c in recipe.components] == [
        ("control", "control", 0.4), ("domain", "corpora", 0.4), ("instruction", "corpora", 0.1),
        ("general", "corpora", 0.1)]
    assert recipe.total_tokens == 120_000 and recipe.component("control").role is None  # the whole set, any role
    assert main(["mix", ws, "--recipe", str(path), "--domain-source", "recalled"]) == 2  # shapes a preset only
    assert "give them with --write-preset" in capsys.readouterr().err
    assert main(["mix", ws, "--recipe", str(path), "--write-preset", "MIP 80/10/10", "--source-share", "2"]) == 2
    assert "source_share must be at most 1" in capsys.readouterr().err

    demo = [t for t in load_recipe()["step"] if t["name"] in ("mix", "train", "evaluate", "report")]
    mixes = [steps.get_step("mix").configs_from_recipe(t)[None] for t in demo if t["name"] == "mix"]
    assert [(m.mix_name, m.domain_source, m.source_share) for m in mixes] == [("demo-mip", "recalled", 1.0),
                                                                               ("demo-control", "control", 1.0)]
    eval_driven, control = (m.recipe() for m in mixes)
    assert [c.name for c in eval_driven.components] == ["recalled", "domain", "instruction", "general"]
    assert [(c.share, c.role, c.corpora) for c in eval_driven.components] == \
        [(c.share, c.role, c.corpora) for c in control.components]  # identical but for the source
    assert step_labels(demo) == ["mix demo-mip", "mix demo-control", "train demo-mip", "train demo-control",
                                 "evaluate", "report"]
    evaluate, report = (steps.get_step(n).configs_from_recipe(next(t for t in demo if t["name"] == n))[None]
                        for n in ("evaluate", "report"))
    assert evaluate.mixes == report.mixes == ["demo-mip", "demo-control"] and evaluate.mix is report.mix is None
    with pytest.raises(ValueError, match="domain_source must be one of"):
        PresetMixConfig(domain_source="elsewhere").validate()
    with pytest.raises(ValueError, match="either mix or mixes"):
        type(evaluate)(mix="a", mixes=["b"]).validate()
