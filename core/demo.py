"""The demo workspace: built from a recipe (`data/demo.toml`) over a folder of real public data.

The recipe names the corpora (files, role, reader options) and the steps to run after ingesting. Each step
name maps to a function `(workspace, params, progress) -> counts` in `STEP_RUNNERS`; later steps of the flow
add themselves there and to the recipe.
"""

from __future__ import annotations

import importlib
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.benchmarks import register_benchmark
from core.config import REPO_ROOT, data_root
from core.flow import FLOW, check_recipe_order, set_flow_order, validate_order
from core.ingest import IngestConfig, ingest
from core.progress import Progress, no_progress
from core.workspace import Workspace, WorkspaceError

DEFAULT_RECIPE = REPO_ROOT / "data" / "demo.toml"
INGEST_KEYS = {"text_field", "template", "layout", "fmt", "txt_unit", "encoding", "pattern"}

StepRunner = Callable[[Workspace, dict[str, Any], Progress], dict[str, Any]]

# step name -> "module:function"; imported only when the recipe asks for the step.
STEP_RUNNERS: dict[str, str] = {
    "tokens": "core.tokens:demo_step",
    "dedup": "core.dedup:demo_step",
    "quality": "core.quality:demo_step",
    "terms": "core.terms:demo_step",
    "recall": "core.recall:demo_step",
    "decontam": "core.decontam:demo_step",
    "mix": "core.mix:demo_step",
    "train": "core.train.launch:demo_step",
    "evaluate": "core.evaluate.evaluation:demo_step",
    "report": "core.report:demo_step",
}


@dataclass
class DemoResult:
    workspace: str
    corpora: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

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
    try:
        order = validate_order(recipe.get("flow", {}).get("order", FLOW))
        check_recipe_order(recipe.get("step", []), order)
    except (ValueError, WorkspaceError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    return recipe


def step_runner(name: str) -> StepRunner:
    module, func = STEP_RUNNERS[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_steps(ws: Workspace, planned: list[dict[str, Any]], progress: Progress = no_progress
              ) -> list[dict[str, Any]]:
    """Run a recipe's steps in order (each a table with `name` and its parameters); their counts and wall times
    (`seconds`), in order."""
    out = []
    for index, step in enumerate(planned):
        params = {k: v for k, v in step.items() if k != "name"}

        def step_progress(fraction: float, message: str, index: int = index, name: str = step["name"]) -> None:
            progress((index + max(fraction, 0.0)) / len(planned), f"{name}: {message}")

        started = time.monotonic()
        counts = step_runner(step["name"])(ws, params, step_progress)
        out.append({"step": step["name"], **counts, "seconds": round(time.monotonic() - started, 1)})
    return out


def build_demo(ws: Workspace, data: Path | None = None, recipe_path: Path = DEFAULT_RECIPE,
               progress: Progress = no_progress, steps: bool = True) -> DemoResult:
    """Ingest every corpus of the recipe from `data` and run its steps; re-running adds nothing new."""
    data = (data or data_root()).expanduser().resolve()
    if not data.is_dir():
        raise WorkspaceError(f"data folder {data} does not exist (pass --data or set STUDIO_DATA)")
    recipe = load_recipe(recipe_path)
    if tokenizer := recipe.get("workspace", {}).get("tokenizer"):
        ws.set_setting("tokenizer", tokenizer)
    set_flow_order(ws, recipe.get("flow", {}).get("order"))  # the recipe's order (default: core.flow.FLOW)
    result = DemoResult(workspace=str(ws.path))
    corpora = recipe.get("corpus", [])
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
        res = ingest(ws, cfg, sub_progress)
        if kind := corpus.get("benchmark_kind"):
            register_benchmark(ws, corpus["name"], kind, corpus.get("description", ""))
        result.corpora.append({"corpus": corpus["name"], "role": corpus["role"], "run_id": res.run_id,
                               **res.counts(), "seconds": round(time.monotonic() - started, 1)})
    if steps:
        result.steps = run_steps(ws, recipe.get("step", []), lambda f, m: progress(0.7 + 0.3 * f, m))
    progress(1.0, "demo workspace ready")
    return result
