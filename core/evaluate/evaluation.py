"""Evaluation: lm-evaluation-harness scores of a model (and a baseline) on the workspace's benchmarks, perplexity and
bits per byte on the mix's held-out validation sets, per-item results, a cache, and the derived figures.

Scores are lm-eval's own: the studio writes local tasks (core/evaluate/tasks.py), runs `lm_eval.simple_evaluate`
with its `hf` model and `log_samples`, and keeps every logged sample (each choice's log-likelihood, the exact
prompt). Aggregates are recomputed from those samples with lm-eval's definitions (acc = argmax of the summed
log-likelihoods, acc_norm = argmax of log-likelihood per character of the choice) because lm-eval gives no
intervals over a subset of items (the clean subset) or paired comparisons; lm-eval's own per-task figures are
stored beside them and checked to agree.

The instruct model is scored without its chat template (`apply_chat_template=False`), as the published base-model
numbers of the harness are: the same prompts and scoring for every model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from core.benchmarks import benchmark_names
from core.evaluate.models import ModelSpec, resolve_model
from core.evaluate.stats import (
    Estimate,
    bootstrap_interval,
    mcnemar,
    mean_interval,
    paired_difference,
    paired_ratio,
)
from core.evaluate.tasks import (
    FORMULATIONS,
    BenchmarkItem,
    benchmark_items,
    content_hash,
    default_fewshot_file,
    read_fewshot,
    write_tasks,
)
from core.progress import Progress, no_progress
from core.steps import Step, comma_list, param
from core.workspace import Workspace, WorkspaceError

RETENTION_TARGET = 0.95  # retention below this is flagged (the seeds' acceptance line)
PERPLEXITY_SETS = ("domain", "general")
METRICS = {"letter": ("acc",), "cloze": ("acc", "acc_norm")}


@dataclass
class EvalConfig:
    model: str = param(required=True, metavar="PATH_OR_ID",
                       help="bundled:smollm2, a model or adapter folder, a job output folder or a local hub id")
    # compared with `model`: gain on domain, retention on general benchmarks
    baseline: str | None = param(None, metavar="PATH_OR_ID", help="compare with this model (domain gain, retention)")
    benchmarks: list[str] | None = param(None, parse=lambda text: comma_list(text) or None, render=",".join,
                                         help="comma-separated benchmark names (default: all of the workspace)")
    formulation: str = param("both", choices=("letter", "cloze", "both"),
                             help="letter: MMLU's prompt scored on ' A'..' D' (acc); cloze: 'Question: ...\\nAnswer:' "
                                  "scored on each choice (acc, acc_norm); default both")
    shots: int = param(0, help="few-shot exemplars per subject (default 0)")  # 0 = zero-shot
    limit: int | None = param(None, help="a seeded sample of N items per benchmark, the same for every model")
    seed: int = param(0, help="seed of the --limit sample (default 0)")
    fewshot: str | None = param(None, metavar="FILE", help="exemplars, MCQ JSONL with subjects (default: the shared "
                                                           "MMLU dev set, 5 per subject)")
    perplexity: bool = param(True, negate="--no-perplexity", help="skip perplexity on the validation sets")
    mix: str | None = param(None, help="mix (id, name or export folder) whose validation sets give perplexity "
                                       "(default: the latest mix)")
    # the first N documents of each validation set (the sets are shuffled)
    perplexity_docs: int = param(200, help="documents of each validation set scored for perplexity (default 200)")
    max_length: int = param(2048, cli=False, help="context of the rolling windows")
    batch_size: int = param(8, help="lm-eval batch size (default 8)")
    dtype: str = param("float32", help="model dtype (default float32)")
    device: str = param("auto", help="cpu, cuda or auto (default)")  # auto: cuda when available, else cpu

    def formulations(self) -> list[str]:
        if self.formulation == "both":
            return list(FORMULATIONS)
        if self.formulation not in FORMULATIONS:
            raise ValueError(f"--formulation must be letter, cloze or both, not {self.formulation!r}")
        return [self.formulation]

    def validate(self) -> None:
        self.formulations()
        if self.shots < 0:
            raise ValueError("--shots must be 0 or more")
        if self.limit is not None and self.limit < 1:
            raise ValueError("--limit must be at least 1")
        if self.perplexity_docs < 1:
            raise ValueError("perplexity_docs must be at least 1")

    def scoring_settings(self) -> dict[str, Any]:
        """What a cached score depends on besides the model and the items (batch size does not)."""
        from importlib.metadata import version

        return {"dtype": self.dtype, "chat_template": False, "lm_eval": version("lm-eval"), "shared_context": True}


@dataclass
class ItemResult:
    item_doc_id: str
    item_id: str
    benchmark: str
    subject: str
    formulation: str
    loglikelihoods: list[float]
    choice_chars: list[int]
    pred: int
    pred_norm: int | None
    gold: int
    context: str

    def correct(self, metric: str) -> bool:
        return (self.pred_norm if metric == "acc_norm" else self.pred) == self.gold


@dataclass
class BenchmarkScore:
    """One model on one benchmark in one formulation."""

    benchmark: str
    kind: str
    formulation: str
    shots: int
    cache_key: str
    cached: bool
    metrics: dict[str, Estimate]  # acc (and acc_norm)
    clean: dict[str, Estimate]  # the same over the clean subset
    subjects: dict[str, dict[str, Estimate]]  # subject -> metric -> estimate
    flagged_items: int
    lm_eval: dict[str, Any]  # lm-eval's own per-task figures
    items: list[ItemResult] = field(default_factory=list, repr=False)
    flagged: set[str] = field(default_factory=set, repr=False)  # item_doc_ids outside the clean subset

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "kind": self.kind, "formulation": self.formulation, "shots": self.shots,
                "cache_key": self.cache_key, "cached": self.cached, "items": len(self.items),
                "flagged_items": self.flagged_items,
                "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
                "clean": {k: v.to_dict() for k, v in self.clean.items()},
                "subjects": {s: {k: v.to_dict() for k, v in m.items()} for s, m in self.subjects.items()},
                "lm_eval": self.lm_eval}


@dataclass
class PerplexityScore:
    validation_set: str  # domain | general
    file: str
    cache_key: str
    cached: bool
    documents: int
    tokens: int
    bytes: int
    words: int
    loglikelihood: float
    token_perplexity: float
    byte_perplexity: float
    word_perplexity: float
    bits_per_byte: float
    doc_loglikelihoods: list[float] = field(default_factory=list, repr=False)
    doc_tokens: list[int] = field(default_factory=list, repr=False)
    doc_bytes: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("doc_loglikelihoods", "doc_tokens", "doc_bytes"):
            d.pop(k)
        return d


@dataclass
class ModelScores:
    model: ModelSpec
    benchmarks: list[BenchmarkScore]
    perplexity: list[PerplexityScore]

    def score(self, benchmark: str, formulation: str) -> BenchmarkScore | None:
        return next((s for s in self.benchmarks if s.benchmark == benchmark and s.formulation == formulation), None)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "benchmarks": [b.to_dict() for b in self.benchmarks],
                "perplexity": [p.to_dict() for p in self.perplexity]}


@dataclass
class Comparison:
    """Trained versus base on one benchmark, formulation and metric (or one validation set's perplexity)."""

    benchmark: str
    kind: str  # domain -> gain; general -> retention
    formulation: str
    metric: str
    base: float
    trained: float
    gain: Estimate
    retention: Estimate
    mcnemar: dict[str, Any] | None
    clean_gain: Estimate | None
    passed: bool | None
    flips: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"benchmark": self.benchmark, "kind": self.kind, "formulation": self.formulation,
                "metric": self.metric, "base": self.base, "trained": self.trained, "gain": self.gain.to_dict(),
                "retention": self.retention.to_dict(), "mcnemar": self.mcnemar,
                "clean_gain": self.clean_gain.to_dict() if self.clean_gain else None, "passed": self.passed,
                "flips": self.flips}


@dataclass
class EvalResult:
    run_id: str
    config: dict[str, Any]
    models: list[ModelScores]
    comparisons: list[Comparison]
    perplexity_comparisons: list[dict[str, Any]]
    items_out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "config": self.config, "models": [m.to_dict() for m in self.models],
                "comparisons": [c.to_dict() for c in self.comparisons],
                "perplexity_comparisons": self.perplexity_comparisons, "items_out": self.items_out}


# --- settings, cache keys ------------------------------------------------------------------------------------
def pick_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def flagged_items(ws: Workspace, benchmark: str) -> set[str]:
    """Items the recall and decontamination steps found with a copy in the training data (not in the
    `clean_benchmark_items` view)."""
    rows = ws.query("SELECT doc_id FROM benchmark_items WHERE corpus = ? AND doc_id NOT IN "
                    "(SELECT doc_id FROM clean_benchmark_items)", [benchmark])
    return {r[0] for r in rows}


def benchmark_kind(ws: Workspace, benchmark: str) -> str:
    return ws.scalar("SELECT kind FROM benchmarks WHERE corpus = ?", [benchmark]) or "domain"


# --- lm-eval -------------------------------------------------------------------------------------------------
class _Harness:
    """One lm-eval `hf` model, loaded on first use and shared by every task of a model."""

    def __init__(self, spec: ModelSpec, cfg: EvalConfig) -> None:
        self.spec, self.cfg, self._lm = spec, cfg, None

    @property
    def lm(self):  # -> lm_eval.models.huggingface.HFLM
        if self._lm is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
            from core.evaluate.shared_context import SharedContextHFLM

            self._lm = SharedContextHFLM(**self.spec.lm_eval_args(self.cfg.dtype, pick_device(self.cfg.device)),
                            batch_size=self.cfg.batch_size, max_length=self.cfg.max_length)
        return self._lm

    def evaluate(self, folders: list[Path], task_names: list[str]) -> dict[str, Any]:
        import lm_eval
        from lm_eval.tasks import TaskManager

        # Only the generated tasks are indexed: lm-eval's thousands of built-in task YAMLs are not scanned.
        manager = TaskManager(include_path=[str(f) for f in folders], include_defaults=False)
        return lm_eval.simple_evaluate(model=self.lm, tasks=task_names, task_manager=manager, log_samples=True,
                                       bootstrap_iters=0, apply_chat_template=False, verbosity="ERROR")


def items_from_samples(samples: list[dict[str, Any]], formulation: str) -> list[ItemResult]:
    """Per-item results from lm-eval's logged samples of one multiple-choice task."""
    out = []
    for s in samples:
        doc = s["doc"]
        lls = [float(r[0]) for r in s["filtered_resps"]]
        choices = [a[1] for a in s["arguments"]]
        # lm-eval's acc_norm divides by the length of the choice text without the delimiter (api/task.py)
        chars = [len(c) for c in (doc["letters"] if formulation == "letter" else doc["choices"])]
        pred = int(np.argmax(lls))
        pred_norm = int(np.argmax(np.array(lls) / np.array(chars, dtype=float))) if formulation == "cloze" else None
        if len(choices) != len(lls):
            raise RuntimeError("lm-eval returned a different number of scores than choices")
        out.append(ItemResult(doc["item_doc_id"], doc["item_id"], doc["benchmark"], doc["subject"], formulation,
                              lls, chars, pred, pred_norm, int(s["target"]), s["arguments"][0][0]))
    return out


# --- the cache -----------------------------------------------------------------------------------------------
def _load_items(ws: Workspace, key: str) -> list[ItemResult]:
    rows = ws.query("SELECT item_doc_id, item_id, benchmark, subject, formulation, loglikelihoods, choice_chars, "
                    "pred, pred_norm, gold, context FROM eval_items WHERE cache_key = ? ORDER BY position", [key])
    return [ItemResult(r[0], r[1], r[2], r[3], r[4], list(r[5]), list(r[6]), r[7], r[8], r[9], r[10]) for r in rows]


def _store_items(ws: Workspace, key: str, spec: ModelSpec, benchmark: str, bench_hash: str, formulation: str,
                 shots: int, settings: dict[str, Any], items: list[ItemResult], lm_eval_figures: dict[str, Any],
                 run_id: str) -> None:
    table = pa.table({
        "cache_key": [key] * len(items), "position": list(range(len(items))),
        "item_doc_id": [i.item_doc_id for i in items], "item_id": [i.item_id for i in items],
        "benchmark": [i.benchmark for i in items], "subject": [i.subject for i in items],
        "formulation": [i.formulation for i in items],
        "loglikelihoods": pa.array([i.loglikelihoods for i in items], pa.list_(pa.float64())),
        "choice_chars": pa.array([i.choice_chars for i in items], pa.list_(pa.int32())),
        "pred": pa.array([i.pred for i in items], pa.int32()),
        "pred_norm": pa.array([i.pred_norm for i in items], pa.int32()),
        "gold": pa.array([i.gold for i in items], pa.int32()), "context": [i.context for i in items]})
    with ws.transaction():
        ws.con.execute("DELETE FROM eval_items WHERE cache_key = ?", [key])
        ws.con.execute("DELETE FROM eval_scores WHERE cache_key = ?", [key])
        ws.con.register("new_eval_items", table)
        ws.con.execute("INSERT INTO eval_items SELECT * FROM new_eval_items")
        ws.con.unregister("new_eval_items")
        ws.con.execute(
            "INSERT INTO eval_scores (cache_key, model, model_path, adapter, model_fingerprint, benchmark, "
            "benchmark_hash, formulation, shots, settings, items, lm_eval, run_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [key, spec.name, spec.path, spec.adapter, spec.fingerprint, benchmark, bench_hash, formulation, shots,
             json.dumps(settings), len(items), json.dumps(lm_eval_figures, default=str), run_id])


def _summarise(ws: Workspace, benchmark: str, kind: str, formulation: str, shots: int, key: str, cached: bool,
               items: list[ItemResult], lm_eval_figures: dict[str, Any], flagged: set[str]) -> BenchmarkScore:
    metrics, clean, subjects = {}, {}, {}
    clean_items = [i for i in items if i.item_doc_id not in flagged]
    for metric in METRICS[formulation]:
        metrics[metric] = mean_interval([i.correct(metric) for i in items])
        clean[metric] = mean_interval([i.correct(metric) for i in clean_items])
    for subject in sorted({i.subject for i in items}):
        sub = [i for i in items if i.subject == subject]
        subjects[subject] = {m: mean_interval([i.correct(m) for i in sub]) for m in METRICS[formulation]}
    return BenchmarkScore(benchmark, kind, formulation, shots, key, cached, metrics, clean, subjects,
                          len(items) - len(clean_items), lm_eval_figures, items,
                          {i.item_doc_id for i in items if i.item_doc_id in flagged})


def lm_eval_figures(results: dict[str, Any], task: str) -> dict[str, Any]:
    r = results.get(task, {})
    return {k.split(",")[0]: v for k, v in r.items() if k.endswith(",none") and "stderr" not in k}


def score_benchmarks(ws: Workspace, spec: ModelSpec, cfg: EvalConfig, harness: _Harness, run_id: str,
                     progress: Progress = no_progress) -> list[BenchmarkScore]:
    """Scores of one model on every benchmark and formulation: from the cache where the model, the items, the
    exemplars and the settings are unchanged, from lm-eval otherwise."""
    names = benchmark_names(ws, cfg.benchmarks)
    if not names:
        raise WorkspaceError("the workspace has no benchmarks (import one with `studio bench-import`)")
    fewshot: dict[str, list[dict[str, Any]]] = {}
    if cfg.shots:
        fewshot = read_fewshot(cfg.fewshot or default_fewshot_file())
    settings = cfg.scoring_settings()
    plans = []
    for benchmark in names:
        items = benchmark_items(ws, benchmark, cfg.limit, cfg.seed)
        if not items:
            raise WorkspaceError(f"benchmark {benchmark!r} has no multiple-choice items with an answer")
        bench_hash = content_hash(items, fewshot, cfg.shots)
        keys = {f: cache_key(spec.fingerprint, bench_hash, f, cfg.shots, settings) for f in cfg.formulations()}
        missing = [f for f, k in keys.items()
                   if not ws.scalar("SELECT count(*) FROM eval_scores WHERE cache_key = ?", [k])]
        plans.append((benchmark, items, bench_hash, keys, missing))
    todo = [p for p in plans if p[4]]
    fresh: dict[tuple[str, str], tuple[list[ItemResult], dict[str, Any]]] = {}
    if todo:
        what = ", ".join(f"{b} ({len(i):,} items, {'/'.join(m)})" for b, i, _, _, m in todo)
        progress(0.0, f"{spec.name}: {what}, {cfg.shots}-shot, with lm-eval")
        fresh = _run_tasks(ws, harness, [(items, missing, bench_hash) for _, items, bench_hash, _, missing in todo],
                           cfg.shots, fewshot)
        for benchmark, _, bench_hash, keys, missing in todo:
            for formulation in missing:
                new_items, figures = fresh[(benchmark, formulation)]
                _store_items(ws, keys[formulation], spec, benchmark, bench_hash, formulation, cfg.shots, settings,
                             new_items, figures, run_id)
    scores: list[BenchmarkScore] = []
    for benchmark, _, _, keys, _ in plans:
        kind = benchmark_kind(ws, benchmark)
        flagged = flagged_items(ws, benchmark)
        for formulation, key in keys.items():
            if (benchmark, formulation) in fresh:
                got, figures = fresh[(benchmark, formulation)]
            else:
                got = _load_items(ws, key)
                figures = json.loads(ws.scalar("SELECT lm_eval FROM eval_scores WHERE cache_key = ?", [key]) or "{}")
            scores.append(_summarise(ws, benchmark, kind, formulation, cfg.shots, key,
                                     (benchmark, formulation) not in fresh, got, figures, flagged))
    progress(1.0, f"{spec.name}: scored")
    return scores


def _run_tasks(ws: Workspace, harness: _Harness, plans: list[tuple[list[BenchmarkItem], list[str], str]], shots: int,
               fewshot: dict[str, list[dict[str, Any]]]) -> dict[tuple[str, str], tuple[list[ItemResult], dict[str, Any]]]:
    """One lm-eval run over every (benchmark, formulation) to score: per-item results and lm-eval's own figures."""
    folders, names, specs, orders = [], [], {}, {}
    for items, formulations, bench_hash in plans:
        folder = ws.artifacts / "eval" / "tasks" / bench_hash[:16]
        taskset = write_tasks(folder, items, formulations, shots, fewshot, f"studio_{bench_hash[:8]}")
        folders.append(folder)
        names += [t.name for t in taskset.tasks]
        specs.update(taskset.by_name())
        orders[items[0].benchmark] = ({i.item_doc_id: k for k, i in enumerate(items)}, len(items))
    result = harness.evaluate(folders, names)
    out: dict[tuple[str, str], tuple[list[ItemResult], dict[str, Any]]] = {}
    for task, samples in result["samples"].items():
        spec = specs[task]
        got, figures = out.setdefault((spec.benchmark, spec.formulation), ([], {}))
        got.extend(items_from_samples(samples, spec.formulation))
        figures[spec.subject] = lm_eval_figures(result["results"], task)
    for (benchmark, formulation), (got, figures) in out.items():
        order, n = orders[benchmark]
        got.sort(key=lambda i: order[i.item_doc_id])
        if len(got) != n:
            raise RuntimeError(f"lm-eval scored {len(got)} of {n} items of {benchmark} ({formulation})")
        _check_against_lm_eval(got, figures, formulation)
    return out


def _check_against_lm_eval(items: list[ItemResult], figures: dict[str, dict[str, Any]], formulation: str) -> None:
    """The studio's per-subject figures, recomputed from the logged samples, must equal lm-eval's own."""
    for subject, theirs in figures.items():
        sub = [i for i in items if i.subject == subject]
        for metric in METRICS[formulation]:
            ours = float(np.mean([i.correct(metric) for i in sub]))
            if metric in theirs and abs(ours - float(theirs[metric])) > 1e-9:
                raise RuntimeError(f"{subject} {formulation} {metric}: studio {ours} differs from lm-eval "
                                   f"{theirs[metric]}")


# --- perplexity ----------------------------------------------------------------------------------------------
def validation_files(ws: Workspace, mix: str | None = None) -> dict[str, Path]:
    """The held-out validation sets (`validation_domain.jsonl`, `validation_general.jsonl`) of a mix export:
    `mix` names a mix id, a mix name or an export folder; default the latest successful mix."""
    if mix and Path(mix).is_dir():
        folder = Path(mix)
    else:
        row = ws.query(
            "SELECT x.export_dir FROM mixes x JOIN runs r ON r.run_id = x.mix_id WHERE r.status = 'ok' "
            "AND (? IS NULL OR x.mix_id = ? OR x.name = ? OR x.manifest_sha256 = ?) ORDER BY r.ended_at DESC LIMIT 1",
            [mix, mix, mix, mix])
        if not row:
            if mix:
                raise WorkspaceError(f"no mix {mix!r} in this workspace")
            return {}
        folder = Path(row[0][0])
    return {s: folder / f"validation_{s}.jsonl" for s in PERPLEXITY_SETS if (folder / f"validation_{s}.jsonl").is_file()}


def _perplexity_task(folder: Path, name: str, data: Path) -> None:
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}},
              "test_split": "test", "output_type": "loglikelihood_rolling", "doc_to_text": "",
              "doc_to_target": "{{text}}",
              "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
              "metadata": {"version": 1.0}}
    import yaml

    (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


def score_perplexity(ws: Workspace, spec: ModelSpec, cfg: EvalConfig, harness: _Harness, run_id: str,
                     files: dict[str, Path], progress: Progress = no_progress) -> list[PerplexityScore]:
    """Token-level perplexity, byte and word perplexity and bits per byte on each validation set, from lm-eval's
    rolling log-likelihood (windows of `max_length` tokens, every token predicted once)."""
    out = []
    settings = {**cfg.scoring_settings(), "max_length": cfg.max_length}
    for vset, path in files.items():
        texts = []
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    text = json.loads(line).get("text") or ""
                    if text.strip():
                        texts.append(text)
                if len(texts) >= cfg.perplexity_docs:
                    break
        if not texts:
            continue
        text_hash = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
        key = cache_key("perplexity", spec.fingerprint, text_hash, settings)
        row = ws.query("SELECT doc_loglikelihoods, doc_tokens, doc_bytes, word_perplexity, byte_perplexity, "
                       "bits_per_byte, words FROM eval_perplexity WHERE cache_key = ?", [key])
        cached = bool(row)
        if row:
            lls, tokens, nbytes = list(row[0][0]), list(row[0][1]), list(row[0][2])
            word_ppl, byte_ppl, bpb, words = row[0][3], row[0][4], row[0][5], row[0][6]
        else:
            progress(-1, f"{spec.name}: perplexity on validation_{vset} ({len(texts)} documents)")
            folder = ws.artifacts / "eval" / "perplexity" / text_hash[:16]
            folder.mkdir(parents=True, exist_ok=True)
            data = folder / "docs.jsonl"
            data.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts),
                            encoding="utf-8")
            name = f"studio_ppl_{text_hash[:12]}"
            _perplexity_task(folder, name, data)
            result = harness.evaluate([folder], [name])
            samples = sorted(result["samples"][name], key=lambda s: s["doc_id"])
            lls = [float(s["filtered_resps"][0]) if not isinstance(s["filtered_resps"][0], list | tuple)
                   else float(s["filtered_resps"][0][0]) for s in samples]
            tokens = [len(harness.lm.tok_encode(t)) for t in texts]
            nbytes = [len(t.encode("utf-8")) for t in texts]
            figures = lm_eval_figures(result["results"], name)
            word_ppl, byte_ppl, bpb = figures["word_perplexity"], figures["byte_perplexity"], figures["bits_per_byte"]
            words = int(sum(s["word_perplexity"][1] for s in samples))
            ws.con.execute(
                "INSERT OR REPLACE INTO eval_perplexity (cache_key, model, model_fingerprint, validation_set, file, "
                "text_hash, settings, documents, tokens, bytes, words, loglikelihood, token_perplexity, "
                "byte_perplexity, word_perplexity, bits_per_byte, doc_loglikelihoods, doc_tokens, doc_bytes, run_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [key, spec.name, spec.fingerprint, vset, str(path), text_hash, json.dumps(settings), len(texts),
                 sum(tokens), sum(nbytes), words, sum(lls), math.exp(-sum(lls) / sum(tokens)), byte_ppl, word_ppl,
                 bpb, lls, tokens, nbytes, run_id])
        out.append(PerplexityScore(vset, str(path), key, cached, len(texts), sum(tokens), sum(nbytes), int(words),
                                   float(sum(lls)), math.exp(-sum(lls) / sum(tokens)), float(byte_ppl),
                                   float(word_ppl), float(bpb), lls, tokens, nbytes))
    return out


# --- comparisons ---------------------------------------------------------------------------------------------
def compare(base: ModelScores, trained: ModelScores, retention_target: float = RETENTION_TARGET,
            min_gain: float = 0.0, flip_examples: int = 20) -> list[Comparison]:
    """Domain gain (trained - base) and retention (trained / base), paired over the same items, with McNemar."""
    out = []
    for t in trained.benchmarks:
        b = base.score(t.benchmark, t.formulation)
        if b is None or [i.item_doc_id for i in b.items] != [i.item_doc_id for i in t.items]:
            continue
        for metric in METRICS[t.formulation]:
            bc = np.array([i.correct(metric) for i in b.items], dtype=float)
            tc = np.array([i.correct(metric) for i in t.items], dtype=float)
            clean_mask = np.array([i.item_doc_id not in t.flagged for i in t.items])
            gain = paired_difference(tc, bc)
            retention = paired_ratio(tc, bc)
            clean_gain = paired_difference(tc[clean_mask], bc[clean_mask]) if clean_mask.any() else None
            passed = (retention.value >= retention_target) if t.kind == "general" else (gain.value > min_gain)
            flips = {"wrong_to_right": [], "right_to_wrong": []}
            for bi, ti in zip(b.items, t.items, strict=True):
                if bi.correct(metric) != ti.correct(metric):
                    bucket = "wrong_to_right" if ti.correct(metric) else "right_to_wrong"
                    flips[bucket].append({"item_id": ti.item_id, "item_doc_id": ti.item_doc_id,
                                          "subject": ti.subject, "gold": ti.gold,
                                          "base_pred": bi.pred_norm if metric == "acc_norm" else bi.pred,
                                          "trained_pred": ti.pred_norm if metric == "acc_norm" else ti.pred})
            out.append(Comparison(t.benchmark, t.kind, t.formulation, metric, float(bc.mean()), float(tc.mean()),
                                  gain, retention, mcnemar(bc.astype(bool), tc.astype(bool)).to_dict(), clean_gain,
                                  bool(passed), {k: v[:flip_examples] for k, v in flips.items()}))
    return out


def compare_perplexity(base: ModelScores, trained: ModelScores) -> list[dict[str, Any]]:
    """Perplexity before and after per validation set, with a paired bootstrap interval over documents of the
    change in token perplexity and bits per byte."""
    out = []
    for t in trained.perplexity:
        b = next((p for p in base.perplexity if p.validation_set == t.validation_set), None)
        if b is None or len(b.doc_loglikelihoods) != len(t.doc_loglikelihoods):
            continue
        lt, lb = np.array(t.doc_loglikelihoods), np.array(b.doc_loglikelihoods)
        nt, nb = np.array(t.doc_tokens, dtype=float), np.array(b.doc_tokens, dtype=float)
        nbytes = np.array(t.doc_bytes, dtype=float)

        def ppl_change(x, y, tx, ty, axis=-1):
            return np.exp(-x.sum(axis=axis) / tx.sum(axis=axis)) - np.exp(-y.sum(axis=axis) / ty.sum(axis=axis))

        def bpb_change(x, y, n, axis=-1):
            return (-x.sum(axis=axis) + y.sum(axis=axis)) / n.sum(axis=axis) / math.log(2)

        low, high = bootstrap_interval(ppl_change, (lt, lb, nt, nb), True, 2000, 0)
        blow, bhigh = bootstrap_interval(bpb_change, (lt, lb, nbytes), True, 2000, 0)
        out.append({"validation_set": t.validation_set, "documents": t.documents,
                    "base_token_perplexity": b.token_perplexity, "trained_token_perplexity": t.token_perplexity,
                    "token_perplexity_change": Estimate(t.token_perplexity - b.token_perplexity, low, high,
                                                        t.documents).to_dict(),
                    "base_bits_per_byte": b.bits_per_byte, "trained_bits_per_byte": t.bits_per_byte,
                    "bits_per_byte_change": Estimate(t.bits_per_byte - b.bits_per_byte, blow, bhigh,
                                                     t.documents).to_dict()})
    return out


# --- the step ------------------------------------------------------------------------------------------------
def evaluate_model(ws: Workspace, spec: ModelSpec, cfg: EvalConfig, run_id: str, validation: dict[str, Path],
                   progress: Progress = no_progress) -> ModelScores:
    harness = _Harness(spec, cfg)
    benchmarks = score_benchmarks(ws, spec, cfg, harness, run_id, progress)
    perplexity = score_perplexity(ws, spec, cfg, harness, run_id, validation, progress) if cfg.perplexity else []
    return ModelScores(spec, benchmarks, perplexity)


def run(ws: Workspace, cfg: EvalConfig, progress: Progress = no_progress, items_out: str | Path | None = None
        ) -> EvalResult:
    """Evaluate `cfg.model` (and `cfg.baseline`) and compare them; every model is checked before any work."""
    cfg.validate()
    specs = [resolve_model(cfg.model)] + ([resolve_model(cfg.baseline)] if cfg.baseline else [])
    benchmark_names(ws, cfg.benchmarks)  # unknown benchmarks are refused before any work too
    validation = validation_files(ws, cfg.mix) if cfg.perplexity else {}
    params = {**asdict(cfg), "models": [s.to_dict() for s in specs]}
    with ws.run("eval", params, supersede=False) as run_rec:
        models = []
        for k, spec in enumerate(specs):
            def model_progress(fraction: float, message: str, k: int = k) -> None:
                progress((k + max(fraction, 0)) / len(specs) if fraction >= 0 else -1, message)

            models.append(evaluate_model(ws, spec, cfg, run_rec.run_id, validation, model_progress))
        comparisons, ppl_comparisons = [], []
        if cfg.baseline:
            comparisons = compare(models[1], models[0])
            ppl_comparisons = compare_perplexity(models[1], models[0])
        written = None
        if items_out:
            written = str(export_items(models, items_out))
        run_rec.counts = {"models": len(models), "scores": sum(len(m.benchmarks) for m in models),
                          "cached": sum(s.cached for m in models for s in m.benchmarks),
                          "items": sum(len(s.items) for m in models for s in m.benchmarks)}
    progress(1.0, "evaluation done")
    return EvalResult(run_rec.run_id, params, models, comparisons, ppl_comparisons, written)


def export_items(models: list[ModelScores], path: str | Path) -> Path:
    """One JSON line per model, item and formulation: item_id, benchmark, formulation, loglikelihoods (in choice
    order), pred, pred_norm (cloze), gold, context (the exact prompt), so anyone can re-check a score."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for m in models:
            for score in m.benchmarks:
                for i in score.items:
                    row = {"model": m.model.name, "model_fingerprint": m.model.fingerprint, "item_id": i.item_id,
                           "item_doc_id": i.item_doc_id, "benchmark": i.benchmark, "subject": i.subject,
                           "formulation": i.formulation, "shots": score.shots, "loglikelihoods": i.loglikelihoods,
                           "pred": i.pred, "gold": i.gold, "context": i.context}
                    if i.formulation == "cloze":
                        row["pred_norm"] = i.pred_norm
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# --- reading back (pages) ------------------------------------------------------------------------------------
def score_table(ws: Workspace, limit: int = 200):  # -> pandas.DataFrame
    """The cached scores, newest first: model, benchmark, formulation, shots, items, acc, acc_norm."""
    return ws.df(
        "SELECT s.model, left(s.model_fingerprint, 12) AS fingerprint, s.benchmark, s.formulation, s.shots, s.items, "
        "avg(CASE WHEN i.pred = i.gold THEN 1.0 ELSE 0.0 END) AS acc, "
        "avg(CASE WHEN i.pred_norm = i.gold THEN 1.0 ELSE 0.0 END) FILTER (WHERE i.pred_norm IS NOT NULL) AS acc_norm, "
        "s.created_at, s.cache_key FROM eval_scores s JOIN eval_items i USING (cache_key) "
        "GROUP BY ALL ORDER BY s.created_at DESC, s.benchmark, s.formulation LIMIT ?", [limit])


def perplexity_table(ws: Workspace, limit: int = 100):  # -> pandas.DataFrame
    """The cached perplexity figures, newest first."""
    return ws.df("SELECT model, left(model_fingerprint, 12) AS fingerprint, validation_set, documents, tokens, "
                 "token_perplexity, bits_per_byte, byte_perplexity, word_perplexity, created_at FROM eval_perplexity "
                 "ORDER BY created_at DESC LIMIT ?", [limit])


def item_table(ws: Workspace, key: str):  # -> pandas.DataFrame
    """Per-item results of one cached score, with the question."""
    return ws.df("SELECT i.item_id, i.subject, i.formulation, i.gold, i.pred, i.pred_norm, i.pred = i.gold AS correct, "
                 "b.question, i.loglikelihoods, i.context FROM eval_items i "
                 "LEFT JOIN benchmark_items b ON b.doc_id = i.item_doc_id WHERE i.cache_key = ? ORDER BY i.position",
                 [key])


def training_mixes(mix: str | None, mixes: list[str]) -> list[str | None]:
    """The mixes whose newest training jobs a step reads: `mixes` in order, else the one `mix` (None: the newest
    job on any mix)."""
    if mix and mixes:
        raise ValueError("give either mix or mixes, not both")
    if len(set(mixes)) != len(mixes):
        raise ValueError(f"mixes repeat: {mixes}")
    return list(mixes) if mixes else [mix]


@dataclass
class TrainedModelsEvalConfig:
    """Evaluate training jobs' models against their base: the newest job on `mix` (or on each of `mixes`, in turn;
    each waited for while it runs), each of its models (the trained one, the averaged one); `settings` holds any
    EvalConfig key but model/baseline. The base is scored once: every later comparison reads its cache."""

    mix: str | None = None
    mixes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict, metadata={"recipe": False})

    def eval_config(self, model: str, baseline: str | None, mix: str | None = None) -> EvalConfig:
        allowed = {f.name for f in fields(EvalConfig)} - {"model", "baseline", "mix"}
        unknown = set(self.settings) - allowed
        if unknown:
            raise ValueError(f"unknown evaluation key(s): {', '.join(sorted(unknown))}")
        return EvalConfig(model=model, baseline=baseline, mix=mix or self.mix, **self.settings)

    def validate(self) -> None:
        training_mixes(self.mix, self.mixes)
        self.eval_config("", None).validate()


@dataclass
class TrainedModelsEvalResult:
    job_id: str  # the first mix's job (with one mix, the only one)
    models: list[str]  # "base" and that job's models
    scores: int
    cached: int
    jobs: list[dict[str, Any]] = field(default_factory=list)  # per mix: mix, job_id, models, scores, cached

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_training_job(ws: Workspace, cfg: TrainedModelsEvalConfig, progress: Progress = no_progress
                          ) -> TrainedModelsEvalResult:
    """The newest training job on each mix, waited for, each of its models scored against its base model."""
    from core.report import base_model_of, job_model_dir
    from core.train.launch import wait_for_latest_training

    mixes = training_mixes(cfg.mix, cfg.mixes)
    jobs = []
    for m, mix in enumerate(mixes):
        def mix_progress(fraction: float, message: str, m: int = m) -> None:
            progress((m + max(fraction, 0.0)) / len(mixes), message)

        job = wait_for_latest_training(ws, mix, mix_progress)
        models = job_model_dir(ws, job.job_id)
        results = []
        for k, path in enumerate(models.models.values()):
            def model_progress(fraction: float, message: str, k: int = k, m: int = m,
                               n: int = len(models.models)) -> None:
                mix_progress((k + max(fraction, 0.0)) / n, message, m)

            results.append(run(ws, cfg.eval_config(str(path), base_model_of(models), mix), model_progress))
        jobs.append({"mix": mix, "job_id": job.job_id, "models": ["base", *models.models],
                     "scores": sum(len(m.benchmarks) for r in results for m in r.models),
                     "cached": sum(s.cached for r in results for m in r.models for s in m.benchmarks)})
    return TrainedModelsEvalResult(jobs[0]["job_id"], jobs[0]["models"], sum(j["scores"] for j in jobs),
                                   sum(j["cached"] for j in jobs), jobs)


def _recipe_configs(table: dict[str, Any]) -> dict[None, TrainedModelsEvalConfig]:
    table = {k: v for k, v in table.items() if k != "name"}
    return {None: TrainedModelsEvalConfig(mix=table.pop("mix", None), mixes=list(table.pop("mixes", [])),
                                          settings=table)}


REGISTERED_STEP = Step("evaluate", TrainedModelsEvalConfig, evaluate_training_job, kind="job",
                       recipe_configs=_recipe_configs)
