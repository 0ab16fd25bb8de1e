"""The demo workspace: built from a recipe (`data/demo.toml`) over a folder of real public data.

The recipe names the corpora (files, role, reader options) and the steps to run after ingesting. Each step
table names a step of the registry (`core.steps.REGISTRY`, which `STEP_RUNNERS` is) and holds fields of its
config, read by the same field list the CLI's options come from; later steps of the flow register there and add
a table to the recipe.
"""

from __future__ import annotations

import contextlib
import time
import tomllib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.benchmarks import register_benchmark
from core.config import REPO_ROOT, data_root
from core.flow import FLOW, check_recipe_order, set_flow_order, validate_order
from core.ingest import IngestConfig, ingest
from core.jobs import Job, list_step_jobs, read_json, write_json_atomic
from core.progress import Progress, no_progress
from core.steps import REGISTRY, get_step, run_step
from core.workspace import Workspace, WorkspaceError

DEFAULT_RECIPE = REPO_ROOT / "data" / "demo.toml"
INGEST_KEYS = {"text_field", "template", "layout", "fmt", "txt_unit", "encoding", "pattern"}

STEP_RUNNERS = REGISTRY  # step name -> its Step (a name the recipe may use)
DEMO_JOB_KIND = "demo"  # `studio demo` runs the build as a step job of this kind, and serves the app meanwhile
STAGES_NAME = "demo_stages.json"  # in that job's folder: where each stage stands, for the Overview page
# Publishing the read snapshot copies the whole workspace (2-3.5 s for the 130 MB of every demo corpus ingested, on
# 2 busy cores), so after an ingest it is paced: once the work since the last copy is this many times what that copy
# cost (overhead at most ~1/8). After the first corpus, the last corpus and every recipe step it is always published.
PUBLISH_PACE = 8.0


@dataclass
class DemoStage:
    """One stage of the demo build: a corpus's ingest or a recipe step, with where it stands."""

    name: str  # "ingest medquad_nih", "dedup", ...
    kind: str  # "ingest" or "step"
    state: str = "waiting"  # waiting, running, done, failed
    started: float | None = None  # epoch seconds
    seconds: float | None = None  # wall time, once done (or failed)
    counts: dict[str, Any] = field(default_factory=dict)


class DemoTracker:
    """Where the demo build stands, stage by stage: written as JSON to `stages_file` (the demo job's folder, read
    by the Overview page while the job runs), and the read snapshot published after a stage, so the pages show the
    workspace filling in while this process holds its write lock."""

    def __init__(self, ws: Workspace, stages: list[DemoStage], stages_file: Path | None = None,
                 publish: bool = True) -> None:
        self.ws = ws
        self.stages = stages
        self.stages_file = stages_file
        self.publish = publish
        self.published: list[tuple[str, float]] = []  # (after which stage, seconds it took)
        self._last_publish_end: float | None = None
        self._write()

    @contextlib.contextmanager
    def stage(self, index: int, always_publish: bool = True) -> Iterator[DemoStage]:
        stage = self.stages[index]
        stage.state, stage.started = "running", time.time()
        self._write()
        try:
            yield stage
        except BaseException:
            stage.state, stage.seconds = "failed", round(time.time() - stage.started, 1)
            self._write()
            raise
        stage.state, stage.seconds = "done", round(time.time() - stage.started, 1)
        self._write()
        self._maybe_publish(stage.name, always_publish)

    def _maybe_publish(self, after: str, always: bool) -> None:
        if not self.publish:
            return
        paced = not always and self._last_publish_end is not None and self.published
        if paced and time.monotonic() - self._last_publish_end < PUBLISH_PACE * self.published[-1][1]:
            return
        seconds = self.ws.publish_snapshot(after, best_effort=True)
        self._last_publish_end = time.monotonic()
        if seconds is not None:
            self.published.append((after, round(seconds, 2)))

    def _write(self) -> None:
        if self.stages_file is not None:
            write_json_atomic(self.stages_file, {"t": time.time(), "stages": [asdict(s) for s in self.stages]})


def read_demo_stages(job: Job) -> list[DemoStage]:
    """The stages a demo job wrote (empty before it wrote any)."""
    data = read_json(job.folder / STAGES_NAME) or {}
    return [DemoStage(**stage) for stage in data.get("stages", [])]


def demo_job(ws_path: str | Path, active_only: bool = False) -> Job | None:
    """The newest demo job of the workspace (the active one, with `active_only`), or None."""
    for job in list_step_jobs(ws_path, limit=50):
        if job.kind == DEMO_JOB_KIND and (job.active or not active_only):
            return job
    return None


def step_labels(planned: list[dict[str, Any]]) -> list[str]:
    """Each recipe step's stage name: the step's name, with the mix it works on where the recipe runs that step
    more than once (`mix demo-mip`, `mix demo-control`, `train demo-mip`, ...)."""
    names = [t["name"] for t in planned]
    return [t["name"] + (f" {t.get('mix_name') or t.get('mix') or ''}".rstrip() if names.count(t["name"]) > 1 else "")
            for t in planned]


def plan_stages(recipe: dict[str, Any], steps: bool = True) -> list[DemoStage]:
    """The demo's stages in order: each corpus's ingest, then (with `steps`) each recipe step."""
    return ([DemoStage(f"ingest {c['name']}", "ingest") for c in recipe.get("corpus", [])]
            + [DemoStage(label, "step") for label in step_labels(recipe.get("step", []) if steps else [])])


@dataclass
class DemoResult:
    workspace: str
    corpora: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    snapshots: list[tuple[str, float]] = field(default_factory=list)  # read snapshots published: (after, seconds)

    @property
    def documents_added(self) -> int:
        return sum(c["documents_added"] for c in self.corpora)

    @property
    def errors(self) -> int:
        return sum(c["errors"] for c in self.corpora)


def load_recipe(path: Path = DEFAULT_RECIPE) -> dict[str, Any]:
    with open(path, "rb") as fh:
        recipe = tomllib.load(fh)
    for corpus in recipe.get("corpus", []):
        unknown = set(corpus) - INGEST_KEYS - {"name", "role", "files", "benchmark_kind", "description"}
        if unknown:
            raise ValueError(f"{path}: corpus {corpus.get('name')!r} has unknown keys {sorted(unknown)}")
    for step in recipe.get("step", []):
        if step.get("name") not in STEP_RUNNERS:
            raise ValueError(f"{path}: unknown step {step.get('name')!r} (known: {', '.join(STEP_RUNNERS)})")
        try:  # every key must be a field of the step's config: a misspelt parameter is an error, not ignored
            get_step(step["name"]).configs_from_recipe(step)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from exc
    try:
        order = validate_order(recipe.get("flow", {}).get("order", FLOW))
        check_recipe_order(recipe.get("step", []), order)
    except (ValueError, WorkspaceError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return recipe


def run_steps(ws: Workspace, planned: list[dict[str, Any]], progress: Progress = no_progress,
              tracker: DemoTracker | None = None, first_stage: int = 0) -> list[dict[str, Any]]:
    """Run a recipe's steps in order (each a table with `name` and its config's fields); their counts and wall
    times (`seconds`), in order. With a `tracker`, step i is its stage `first_stage + i`."""
    out = []
    labels = step_labels(planned)
    for index, table in enumerate(planned):
        step = get_step(table["name"])
        configs = step.configs_from_recipe(table)
        counts: dict[str, Any] = {}
        started = time.monotonic()
        # said before the step's first report, which may come only after it loaded a model
        progress(index / len(planned), f"{labels[index]}: starting")
        with tracker.stage(first_stage + index) if tracker else contextlib.nullcontext() as stage:
            for part, (label, config) in enumerate(configs.items()):
                def step_progress(fraction: float, message: str, index: int = index, name: str = labels[index],
                                  part: int = part, label: str | None = label, parts: int = len(configs)) -> None:
                    within = (part + max(fraction, 0.0)) / parts
                    progress((index + within) / len(planned), f"{name}: {label + ': ' if label else ''}{message}")

                summary = step.summarise(run_step(ws, step.name, config, step_progress))
                counts.update(summary if label is None else {label: summary})
            if stage is not None:
                stage.counts = {k: v for k, v in counts.items() if isinstance(v, int | float | str)}
        stage_name = {"stage": labels[index]} if labels[index] != step.name else {}  # a step the recipe repeats
        out.append({"step": step.name, **stage_name, **counts, "seconds": round(time.monotonic() - started, 1)})
    return out


def demo_data_folder(data: Path | None = None) -> Path:
    """The data folder the demo reads (`data`, else $STUDIO_DATA or ../shared/data); an error when missing."""
    data = (data or data_root()).expanduser().resolve()
    if not data.is_dir():
        raise WorkspaceError(f"data folder {data} does not exist (pass --data or set STUDIO_DATA)")
    return data


def build_demo(ws: Workspace, data: Path | None = None, recipe_path: Path = DEFAULT_RECIPE,
               progress: Progress = no_progress, steps: bool = True, stages_file: Path | None = None,
               publish: bool = True) -> DemoResult:
    """Ingest every corpus of the recipe from `data` and run its steps; re-running adds nothing new. Each stage's
    state goes to `stages_file` (when given); with `publish`, the read snapshot is published as stages end."""
    data = demo_data_folder(data)
    recipe = load_recipe(recipe_path)
    if tokenizer := recipe.get("workspace", {}).get("tokenizer"):
        ws.set_setting("tokenizer", tokenizer)
    set_flow_order(ws, recipe.get("flow", {}).get("order"))  # the recipe's order (default: core.flow.FLOW)
    result = DemoResult(workspace=str(ws.path))
    corpora = recipe.get("corpus", [])
    tracker = DemoTracker(ws, plan_stages(recipe, steps), stages_file, publish)
    for index, corpus in enumerate(corpora):
        files = [str(data / f) for f in corpus["files"]]
        missing = [f for f in files if not Path(f).exists()]
        if missing:
            raise WorkspaceError(f"the demo recipe names files missing from {data}: {', '.join(missing)}")
        cfg = IngestConfig(sources=files, corpus=corpus["name"], role=corpus["role"],
                           **{k: v for k, v in corpus.items() if k in INGEST_KEYS})
        share = 0.7 / max(len(corpora), 1)

        def sub_progress(fraction: float, message: str, base: float = 0.7 * index / max(len(corpora), 1),
                         share: float = share, name: str = corpus["name"]) -> None:
            progress(base + share * max(fraction, 0.0), f"ingest {name}: {message}")

        started = time.monotonic()
        # The first corpus and the last are always published (real pages at once; everything before the steps).
        with tracker.stage(index, always_publish=index in (0, len(corpora) - 1)) as stage:
            res = ingest(ws, cfg, sub_progress)
            if kind := corpus.get("benchmark_kind"):
                register_benchmark(ws, corpus["name"], kind, corpus.get("description", ""))
            stage.counts = {"documents_added": res.counts()["documents_added"]}
        result.corpora.append({"corpus": corpus["name"], "role": corpus["role"], "run_id": res.run_id,
                               **res.counts(), "seconds": round(time.monotonic() - started, 1)})
    if steps:
        result.steps = run_steps(ws, recipe.get("step", []), lambda f, m: progress(0.7 + 0.3 * f, m), tracker,
                                 first_stage=len(corpora))
    result.snapshots = tracker.published
    progress(1.0, "demo workspace ready")
    return result
