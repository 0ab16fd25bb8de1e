"""Faults: the demo killed outright (SIGKILL to its whole process group, and to the training job's, as a crash or a
power cut would) while each phase is in progress — ingest, MinHash dedup, embedding (semantic dedup), the mix
export, training, evaluation — then the same command run again. The re-run must complete; the workspace must hold
what an uninterrupted run of the same recipe holds (documents, files, drops, active runs, the mix, one training
job, the scores), with no run left `running`; nothing half written may be left (no partial export or temporary
file, every manifest's files as recorded, the embedding cache readable, every checkpoint complete); a killed
training job resumes from its last checkpoint (attempt 2) and reaches its step count; a killed evaluation re-run
gives the scores of the uninterrupted one.

Each phase waits until the phase is really under way (the demo's `--progress-file` lines, the export's `.partial`
folder, the training job's checkpoints), never a fixed sleep. The recipe is tiny (a few hundred documents, a
2-layer random Llama, ten MMLU items); the curation phases run the recipe without its training and evaluation steps
and are compared with the same part of the reference run. `STUDIO_FAULTS_REPORT=path.json` writes the table
(phase | killed at | re-run | duplicates | half-written files | resumed) that the run also prints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from evalkit import DOMAIN_ITEMS, GENERAL_ITEMS, _subset, tiny_llama

from core.config import REPO_ROOT
from core.jobs import JOB_DIR_ENV, RESUME_ENV, get_job, list_jobs
from core.train.metrics import read_metrics
from core.train.run import CHECKPOINT_DONE, last_checkpoint
from core.workspace import Workspace

pytestmark = pytest.mark.slow  # real subprocesses, MiniLM embeddings, a training job and lm-eval

CORPORA = (("medquad", "domain", "medquad/corpus_en_medquad_nih_paragraphs.jsonl", 150),
           ("wiki", "general", "llamafactory/corpus_en_wikipedia_paragraphs.jsonl", 150),
           ("medquad_sft", "instruction", "medquad/sft_en_medquad_alpaca.jsonl", 40))
MAX_STEPS = 6
RECIPE = """
[workspace]
tokenizer = "bundled:smollm2"
{corpora}
[[corpus]]
name = "mmlu_med"
role = "benchmark"
files = ["mmlu_med.jsonl"]
benchmark_kind = "domain"

[[corpus]]
name = "mmlu_gen"
role = "benchmark"
files = ["mmlu_gen.jsonl"]
benchmark_kind = "general"

[[step]]
name = "tokens"

[[step]]
name = "dedup"
methods = ["exact", "minhash", "semantic"]

[step.semantic]
corpora = ["medquad"]

[[step]]
name = "mix"
preset = "MIP 80/10/10"
total_tokens = 3000
mix_name = "faults-mix"
seed = 42

[step.validation]
tokens = 600
"""
LATER_STEPS = """
[[step]]
name = "train"
preset = "CPT"
mix = "faults-mix"
model = "{model}"
max_steps = {max_steps}
block_size = 32
batch_size = 2
eval_steps = 2
save_steps = 2
eval_tokens = 128
learning_rate = 3e-3
wait = true

[[step]]
name = "evaluate"
mix = "faults-mix"
benchmarks = ["mmlu_med", "mmlu_gen"]
formulation = "both"
shots = 0
seed = 0
perplexity_docs = 5
"""
CURATION_STEPS = ("dedup_exact", "dedup_minhash", "dedup_semantic", "mix")
# What a kill may leave half written: the export's partial folder, temporary files and model folders.
HALF_WRITTEN_SUFFIXES = (".partial", ".tmp")

RESULTS: list[dict[str, Any]] = []


# --- the data, the recipes, the reference run ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One data folder (the same file paths, so document ids agree between workspaces), a tiny base model, the
    full recipe and its curation part."""
    root = tmp_path_factory.mktemp("faults")
    data = root / "data"
    data.mkdir()
    corpora = ""
    for name, role, relative, n in CORPORA:
        with open(data_dir / relative, encoding="utf-8") as fh:
            lines = [next(fh) for _ in range(n)]
        # 20 lines twice: exact duplicates for the dedup step to drop
        (data / f"{name}.jsonl").write_text("".join(lines + lines[:20]), encoding="utf-8")
        corpora += f'\n[[corpus]]\nname = "{name}"\nrole = "{role}"\nfiles = ["{name}.jsonl"]\n'
    for name, spec in (("mmlu_med", DOMAIN_ITEMS), ("mmlu_gen", GENERAL_ITEMS)):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _subset(data_dir, spec)),
                                            encoding="utf-8")
    model = tiny_llama(root / "tiny", seed=0)
    curation = RECIPE.format(corpora=corpora)
    (root / "curation.toml").write_text(curation, encoding="utf-8")
    (root / "full.toml").write_text(curation + LATER_STEPS.format(model=model, max_steps=MAX_STEPS),
                                    encoding="utf-8")
    return {"root": root, "data": data, "full": root / "full.toml", "curation": root / "curation.toml"}


@pytest.fixture(scope="module")
def reference(setup: dict[str, Path]) -> dict[str, Any]:
    """The uninterrupted run of the full recipe: what every re-run after a kill must match."""
    ws = setup["root"] / "reference"
    proc = _start(ws, setup, setup["full"], setup["root"] / "reference.progress.jsonl")
    assert _finish(proc, ws) == 0, _log(ws)
    return {**summarise(ws), "path": ws}


@pytest.fixture(scope="module", autouse=True)
def results_table(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if not RESULTS:
        return
    keys = ("phase", "killed_at", "rerun", "duplicates", "half_written", "resumed")
    rows = [keys] + [tuple(str(r[k]) for k in keys) for r in RESULTS]
    widths = [max(len(row[i]) for row in rows) for i in range(len(keys))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    text = "\n".join(["", "faults: kill each phase, re-run", *lines])
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line(text)
        else:
            print(text)
    if path := os.environ.get("STUDIO_FAULTS_REPORT"):
        Path(path).write_text(json.dumps(RESULTS, indent=2, default=str) + "\n", encoding="utf-8")


# --- running and killing the demo ----------------------------------------------------------------------------------
def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "STUDIO_PROGRESS_INTERVAL": "0"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, **(extra or {})}


def _command(ws: Path, setup: dict[str, Path], recipe: Path, progress: Path) -> list[str]:
    return [sys.executable, "-m", "studio.cli", "demo", str(ws), "--data", str(setup["data"]), "--recipe",
            str(recipe), "--no-app", "--json", "--progress-file", str(progress)]


def _start(ws: Path, setup: dict[str, Path], recipe: Path, progress: Path,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    """`studio demo WS --no-app` in a process group of its own, its output in WS.log."""
    ws.parent.mkdir(parents=True, exist_ok=True)
    log = open(ws.with_suffix(".log"), "ab")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen(_command(ws, setup, recipe, progress), cwd=REPO_ROOT, env=_env(env),
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, ws: Path, timeout_s: float = 300) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            _crash(proc, ws)
        proc.log.close()  # type: ignore[attr-defined]


def _log(ws: Path) -> str:
    path = ws.with_suffix(".log")
    return path.read_text(encoding="utf-8", errors="replace")[-4000:] if path.exists() else ""


def _job_groups(ws: Path) -> set[int]:
    """Process groups of jobs launched on `ws` (the training job runs in a session of its own): every process whose
    environment names a job folder of this workspace."""
    needle = f"{JOB_DIR_ENV}={ws.resolve() / 'artifacts' / 'jobs'}".encode()
    groups = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ProcessLookupError):
            if needle in (entry / "environ").read_bytes():
                groups.add(os.getpgid(int(entry.name)))
    return groups


def _crash(proc: subprocess.Popen, ws: Path) -> None:
    """SIGKILL the demo's process group and every job group of the workspace: nothing gets to clean up."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for group in _job_groups(ws):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _job_groups(ws) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _job_groups(ws), "a job of the killed demo is still running"


class Progress:
    """The demo's progress lines (`--progress-file`), read as they are appended."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.messages: list[str] = []

    def poll(self) -> list[str]:
        if self.path.exists():
            with open(self.path, encoding="utf-8") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
            complete = chunk[:chunk.rfind("\n") + 1]
            self.offset += len(complete.encode("utf-8"))
            self.messages += [json.loads(line)["message"] for line in complete.splitlines() if line.strip()]
        return self.messages

    @property
    def last(self) -> str:
        return self.poll()[-1] if self.poll() else "(nothing yet)"


def _wait_for(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout_s: float = 240,
              poll_s: float = 0.005) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert proc.poll() is None, f"the demo ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def _said(progress: Progress, *parts: str) -> Callable[[], bool]:
    return lambda: any(all(p in m for p in parts) for m in progress.poll())


def _train_job_dir(ws: Path) -> Path | None:
    found = sorted((ws / "artifacts" / "jobs").glob("train-*"))
    return found[-1] if found else None


def _training_past_a_checkpoint(ws: Path, checkpoints: int = 1) -> Callable[[], bool]:
    """The training job has `checkpoints` complete checkpoints and is training on past the last."""
    def ready() -> bool:
        job = _train_job_dir(ws)
        if job is None or last_checkpoint(job) is None or \
                len(list((job / "checkpoints").glob(f"checkpoint-*/{CHECKPOINT_DONE}"))) < checkpoints:
            return False
        with contextlib.suppress(OSError, ValueError):
            step = json.loads((job / "progress.json").read_text()).get("step") or 0
            return step > int(Path(last_checkpoint(job)).name.rsplit("-", 1)[1]) and step < MAX_STEPS
        return False
    return ready


def _as_if_killed_mid_save(checkpoint: Path) -> None:
    """Make a complete checkpoint what a kill during its save leaves: the Trainer writes the weights first and
    trainer_state.json last, so the weights are cut short and the state is missing."""
    (checkpoint / CHECKPOINT_DONE).unlink()
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).unlink(missing_ok=True)


# --- what a workspace holds -----------------------------------------------------------------------------------------
def _digest(rows: list[tuple]) -> str:
    return hashlib.sha256(json.dumps(sorted(rows), default=str).encode()).hexdigest()[:16]


def summarise(ws_path: Path) -> dict[str, Any]:
    """Everything a re-run must reproduce, by content (run ids and times left out)."""
    with Workspace.open(ws_path, read_only=True) as ws:
        out: dict[str, Any] = {
            "documents": dict(ws.query("SELECT corpus, count(*) FROM documents GROUP BY 1")),
            "distinct_doc_ids": ws.scalar("SELECT count(DISTINCT doc_id) FROM documents"),
            "doc_ids": _digest(ws.query("SELECT doc_id, content_hash FROM documents")),
            "ingested_files": ws.query("SELECT corpus, count(*), sum(documents_added) FROM ingested_files "
                                       "GROUP BY 1 ORDER BY 1"),
            "current_documents": ws.scalar("SELECT count(*) FROM current_documents"),
            # the drops that count: those of active, successful runs, by step
            "drops": {step: (n, digest) for step, n, digest in ws.query(
                "SELECT step, count(*), md5(string_agg(doc_id || ':' || verdict || ':' || coalesce(reason, ''), ',' "
                "ORDER BY doc_id)) FROM active_drops GROUP BY 1")},
            "duplicate_active_drops": ws.scalar(
                "SELECT count(*) FROM (SELECT doc_id, step FROM active_drops GROUP BY 1, 2 HAVING count(*) > 1)"),
            "active_runs": dict(ws.query("SELECT step, count(*) FROM runs WHERE active AND status = 'ok' "
                                         "AND step <> 'ingest' GROUP BY 1")),
            "ok_runs": dict(ws.query("SELECT step, count(*) FROM runs WHERE status = 'ok' AND step IN "
                                     "('mix', 'eval', 'train') GROUP BY 1")),
            "running_runs": ws.scalar("SELECT count(*) FROM runs WHERE status = 'running'"),
            # rows a run wrote before it was killed: they must not outlive it
            "orphan_rows": {table: n for table in ("decisions", "mix_members") if (n := ws.scalar(
                f"SELECT count(*) FROM {table} WHERE {'mix_id' if table == 'mix_members' else 'run_id'} NOT IN "
                "(SELECT run_id FROM runs WHERE status = 'ok')"))},
            "interrupted_runs": dict(ws.query("SELECT step, count(*) FROM runs WHERE status = 'failed' "
                                              "AND error LIKE 'interrupted%' GROUP BY 1")),
            "mixes": ws.query("SELECT name, train_documents, train_tokens FROM mixes ORDER BY 1"),
            "mix_members": ws.scalar("SELECT count(*) FROM mix_members WHERE mix_id IN (SELECT mix_id FROM mixes)"),
            "embeddings": ws.scalar("SELECT count(*) FROM embeddings"),
            "duplicate_embeddings": ws.scalar("SELECT count(*) FROM (SELECT model_key, text_hash FROM embeddings "
                                              "GROUP BY 1, 2 HAVING count(*) > 1)"),
            "bad_vectors": ws.scalar("SELECT count(*) FROM embeddings WHERE len(vector) <> dim "
                                     "OR abs(list_dot_product(vector, vector) - 1) > 1e-3"),
            "train_jobs": [(j.status, j.attempts) for j in list_jobs(ws, "train")],
            "train_job_count": ws.scalar("SELECT count(*) FROM jobs WHERE kind = 'train'"),
            # scores by model role (the base is the tiny model, the trained one a job's model), not by fingerprint
            "scores": sorted(ws.query(
                "SELECT CASE WHEN model_path LIKE '%/artifacts/jobs/%' THEN 'trained' ELSE 'base' END, benchmark, "
                "formulation, items, lm_eval FROM eval_scores")),
            "perplexity": sorted(ws.query(
                "SELECT CASE WHEN model LIKE '%/artifacts/jobs/%' THEN 'trained' ELSE 'base' END, validation_set, "
                "documents, tokens, round(token_perplexity, 6) FROM eval_perplexity")),
            "score_keys": ws.scalar("SELECT count(*) - count(DISTINCT cache_key) FROM eval_scores"),
            "export_dirs": [r[0] for r in ws.query("SELECT export_dir FROM mixes")],
            "manifest_sha256": dict(ws.query("SELECT export_dir, manifest_sha256 FROM mixes")),
        }
    return out


CURATION_KEYS = ("documents", "distinct_doc_ids", "doc_ids", "ingested_files", "current_documents", "drops", "mixes",
                 "mix_members", "embeddings")


def half_written(ws: Path) -> list[str]:
    """What a kill left half written under the workspace: partial exports, temporary files and folders,
    checkpoints without their trainer state."""
    found = [str(p.relative_to(ws)) for p in ws.rglob("*")
             if p.name.endswith(HALF_WRITTEN_SUFFIXES) or ".tmp" in p.name]
    for job in (ws / "artifacts" / "jobs").glob("train-*"):
        found += [str(c.relative_to(ws)) for c in (job / "checkpoints").glob("checkpoint-*")
                  if not (c / CHECKPOINT_DONE).is_file()]
    return sorted(found)


def manifest_problems(summary: dict[str, Any]) -> list[str]:
    """Every export's manifest hash as recorded, and every file it lists present with its recorded size and hash."""
    problems = []
    for folder, recorded in summary["manifest_sha256"].items():
        manifest = Path(folder) / "manifest.json"
        if not manifest.is_file() or hashlib.sha256(manifest.read_bytes()).hexdigest() != recorded:
            problems.append(f"{manifest}: missing or not the recorded hash")
            continue
        for entry in json.loads(manifest.read_text(encoding="utf-8"))["files"].values():
            path = Path(folder) / entry["file"]
            if not path.is_file() or path.stat().st_size != entry["bytes"] or \
                    hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
                problems.append(f"{path}: missing or not as the manifest records it")
    return problems


# --- the phases ---------------------------------------------------------------------------------------------------
# phase -> (recipe, a description of the moment, a predicate factory (progress, ws) -> ready, extra environment)
PHASES: dict[str, tuple[str, str, Callable[[Progress, Path], Callable[[], bool]], dict[str, str]]] = {
    "ingest": ("curation", "the second corpus's ingest started",
               lambda p, ws: _said(p, "ingest wiki:"), {}),
    "dedup (MinHash)": ("curation", "MinHash signatures under way",
                        lambda p, ws: _said(p, "dedup: minhash:"), {}),
    "embedding": ("curation", "semantic dedup embedding its texts",
                  lambda p, ws: _said(p, "dedup: semantic:", "embedding"), {}),
    "mix export": ("curation", "the export's .partial folder exists and the membership is recorded",
                   lambda p, ws: lambda: (ws / "artifacts" / "exports" / "faults-mix.partial").is_dir()
                   and _said(p, "mix: exporting")(), {}),
    "training": ("full", "training past its second checkpoint",
                 lambda p, ws: _training_past_a_checkpoint(ws, 2), {"STUDIO_TRAIN_STEP_DELAY": "0.7"}),
    "evaluation": ("full", "the base model's lm-eval run, after the trained model's scores",
                   lambda p, ws: _said(p, "evaluate:", "/tiny:", "with lm-eval"), {}),
}


@pytest.mark.parametrize("phase", list(PHASES))
def test_a_killed_demo_reruns_to_the_reference(phase: str, setup: dict[str, Path], reference: dict[str, Any],
                                               tmp_path: Path) -> None:
    recipe_kind, moment, ready_for, env = PHASES[phase]
    recipe = setup[recipe_kind]
    ws = tmp_path / "ws"
    progress = Progress(tmp_path / "progress.jsonl")
    row: dict[str, Any] = {"phase": phase, "killed_at": "", "rerun": "", "duplicates": "", "half_written": "",
                           "resumed": "n/a"}
    RESULTS.append(row)

    proc = _start(ws, setup, recipe, progress.path, env)
    try:
        _wait_for(proc, ready_for(progress, ws), moment)
    finally:
        _crash(proc, ws)
        proc.log.close()  # type: ignore[attr-defined]
    row["killed_at"] = progress.last[:70]
    killed_job = _train_job_dir(ws)
    if phase == "training":  # the demo relays the job's progress every 2 s: the job's own file is the newer
        row["killed_at"] = f"training job: {json.loads((killed_job / 'progress.json').read_text())['message']}"
    killed_checkpoint = last_checkpoint(killed_job) if killed_job else None
    if phase == "training":
        # The newest checkpoint as a kill while the Trainer wrote it leaves it (the window is milliseconds, too
        # short to hit at will): its weights cut off, no trainer state. The resume must pass it over.
        assert killed_checkpoint is not None
        _as_if_killed_mid_save(Path(killed_checkpoint))
        row["killed_at"] += f"; {Path(killed_checkpoint).name} then cut as a kill mid-save leaves it"
        killed_checkpoint = last_checkpoint(killed_job)
    left_by_kill = half_written(ws)

    started = time.monotonic()
    again = _start(ws, setup, recipe, tmp_path / "rerun.progress.jsonl")
    code = _finish(again, ws)
    row["rerun"] = f"exit {code} in {time.monotonic() - started:.0f} s"
    assert code == 0, _log(ws)

    got = summarise(ws)
    keys = CURATION_KEYS if recipe_kind == "curation" else (*CURATION_KEYS, "train_job_count", "scores",
                                                                "perplexity")
    differs = [k for k in keys if got[k] != reference[k]]
    steps = CURATION_STEPS if recipe_kind == "curation" else (*CURATION_STEPS, "train", "eval")
    runs_differ = [s for s in steps if got["active_runs"].get(s) != reference["active_runs"].get(s)
                   or got["ok_runs"].get(s) != reference["ok_runs"].get(s)]
    duplicated = {k: got[k] for k in ("duplicate_active_drops", "duplicate_embeddings", "score_keys", "orphan_rows")
                  if got[k]}
    if got["distinct_doc_ids"] != sum(got["documents"].values()):
        duplicated["doc_ids"] = sum(got["documents"].values()) - got["distinct_doc_ids"]
    row["duplicates"] = "none" if not (differs or runs_differ or duplicated) else \
        f"differs: {differs + runs_differ} {duplicated or ''}"
    left = half_written(ws) + manifest_problems(got)
    row["half_written"] = (f"{len(left_by_kill)} after the kill ({', '.join(Path(f).name for f in left_by_kill)}), "
                           if left_by_kill else "none after the kill, ") + f"{len(left)} after the re-run"

    assert not differs, {k: (got[k], reference[k]) for k in differs}
    assert not runs_differ, (got["active_runs"], got["ok_runs"], reference["active_runs"], reference["ok_runs"])
    assert not duplicated
    assert got["running_runs"] == 0
    assert not left, left
    assert got["bad_vectors"] == 0 and got["embeddings"] == reference["embeddings"]

    if phase == "training":
        assert killed_checkpoint is not None
        # the re-run resumed the killed job (no second job), from its last checkpoint, to its step count
        assert got["train_jobs"] == [("finished", 2)], got["train_jobs"]
        job = get_job(ws, killed_job.name)
        log = Path(job.log_path).read_text(encoding="utf-8", errors="replace")
        resumed_from = Path(killed_checkpoint).name
        assert f"resuming from {killed_checkpoint}" in log, log[-3000:]
        assert job.result()["step"] == MAX_STEPS and job.result()["status"] == "finished"
        assert sum(1 for line in (killed_job / "metrics.jsonl").read_text().splitlines()
                   if json.loads(line).get("loss") is not None) == MAX_STEPS
        row["resumed"] = f"attempt {job.attempts} from {resumed_from}, step {job.result()['step']}/{MAX_STEPS}"
    elif recipe_kind == "full":
        assert got["train_jobs"] == [("finished", 1)]
    if phase == "evaluation":
        assert got["scores"] == reference["scores"] and got["perplexity"] == reference["perplexity"]
        assert got["interrupted_runs"].get("eval") == 1
        row["resumed"] = "scores as uninterrupted"


def test_a_job_killed_after_its_last_checkpoint_resumes_without_a_step_more(reference: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    """Killed between the Trainer's last checkpoint and the model's save (a window of a fraction of a second, too
    short to hit at will, so made here on a copy of the reference's finished job: its result, exit code and model
    gone, a half-written model.tmp left). Resumed, the job has nothing left to train: it must not take a step past
    its count, and its model is the last checkpoint's."""
    row = {"phase": "training (after its last checkpoint)", "killed_at": f"checkpoint-{MAX_STEPS} written, model "
           "not yet (made on a copy)", "rerun": "", "duplicates": "n/a", "half_written": "", "resumed": ""}
    RESULTS.append(row)
    job = tmp_path / "job"
    shutil.copytree(_train_job_dir(reference["path"]), job, ignore=shutil.ignore_patterns("pids"))
    for name in ("result.json", "exit_code", "progress.json"):
        (job / name).unlink(missing_ok=True)
    shutil.rmtree(job / "model")
    (job / "model.tmp").mkdir()
    (job / "model.tmp" / "model.safetensors").write_bytes(b"cut short")
    assert Path(last_checkpoint(job)).name == f"checkpoint-{MAX_STEPS}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, str(REPO_ROOT / "core" / "train" / "run.py"), str(job)], cwd=REPO_ROOT,
                          env=_env({RESUME_ENV: "1", JOB_DIR_ENV: str(job), "STUDIO_JOB_ID": job.name}),
                          capture_output=True, text=True, timeout=300)
    row["rerun"] = f"exit {done.returncode} in {time.monotonic() - started:.0f} s (run.py resumed)"
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((job / "result.json").read_text(encoding="utf-8"))
    steps = [r["step"] for r in read_metrics(job) if r.get("loss") is not None]
    row["resumed"] = f"step {result['step']}/{MAX_STEPS}, metrics steps {steps[0]}..{steps[-1]}"
    row["half_written"] = f"{len(half_written(job))} after the resume"
    assert result["status"] == "finished" and result["step"] == MAX_STEPS, result
    assert steps == list(range(1, MAX_STEPS + 1))
    assert not half_written(job)
    import torch
    from safetensors.torch import load_file

    model = load_file(job / "model" / "model.safetensors")
    saved = load_file(job / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "model.safetensors")
    assert set(saved) <= set(model) and all(torch.equal(model[k], saved[k]) for k in saved)
