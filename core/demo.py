"""The demo workspace: built from a recipe (`data/demo.toml`) over a folder of real public data.

The recipe names the corpora (files, role, reader options) and the steps to run after ingesting. Each step
table names a step of the registry (`core.steps.REGISTRY`, which `STEP_RUNNERS` is) and holds fields of its
config, read by the same field list the CLI's options come from; later steps of the flow register there and add
a table to the recipe.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.benchmarks import register_benchmark
from core.config import REPO_ROOT, data_root
from core.flow import FLOW, check_recipe_order, set_flow_order, validate_order
from core.ingest import IngestConfig, ingest
from core.progress import Progress, no_progress
from core.steps import REGISTRY, get_step, run_step
from core.workspace import Workspace, WorkspaceError

DEFAULT_RECIPE = REPO_ROOT / "data" / "demo.toml"
INGEST_KEYS = {"text_field", "template", "layout", "fmt", "txt_unit", "encoding", "pattern"}

STEP_RUNNERS = REGISTRY  # step name -> its Step (a name the recipe may use)


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


def run_steps(ws: Workspace, planned: list[dict[str, Any]], progress: Progress = no_progress
              ) -> list[dict[str, Any]]:
    """Run a recipe's steps in order (each a table with `name` and its config's fields); their counts and wall
    times (`seconds`), in order."""
    out = []
    for index, table in enumerate(planned):
        step = get_step(table["name"])
        configs = step.configs_from_recipe(table)
        counts: dict[str, Any] = {}
        started = time.monotonic()
        for part, (label, config) in enumerate(configs.items()):
            def step_progress(fraction: float, message: str, index: int = index, name: str = step.name,
                              part: int = part, label: str | None = label, parts: int = len(configs)) -> None:
                within = (part + max(fraction, 0.0)) / parts
                progress((index + within) / len(planned), f"{name}: {label + ': ' if label else ''}{message}")

            summary = step.summarise(run_step(ws, step.name, config, step_progress))
            counts.update(summary if label is None else {label: summary})
        out.append({"step": step.name, **counts, "seconds": round(time.monotonic() - started, 1)})
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
