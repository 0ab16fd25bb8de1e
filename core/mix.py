"""The mix: what the model actually trains on, set in tokens, reproducible, exported in the formats trainers read.

A recipe names components (curated domain text, general text for replay, instruction data mixed into
pretraining, the recalled set or its random control), each drawn from chosen corpora of the current (filtered)
workspace, with shares in tokens of a total budget. `plan_mix` does the accounting (available versus requested
tokens per component, the repeats a short component needs) without writing anything, so the page can show it
live; `build_mix` samples, orders and exports.

How the mix is drawn, all in DuckDB SQL so a million documents never become Python lists:
1. Pools: each component's documents (current_documents, never a benchmark corpus, never an exact copy of a
   benchmark item); a document belongs to the first component that lists it.
2. Validation sets (domain and general text) are carved out of the pools first, by a seeded hash order, and
   every training document with the same content hash is removed too: held-out text never enters training.
3. Each component becomes a token stream: whole shuffled copies of its pool (a new shuffle per copy, so
   repeats lie far apart) plus a prefix of one more shuffled copy, until its token target is met. A component
   short of its target is up-sampled only up to `max_repeats` copies; beyond that the budget shrinks so the
   shares hold (`on_short = "shrink"`), the component stays short (`"allow"`) or the build stops (`"error"`).
4. Interleaving: a document's place in the mix is the middle of its token range within its component's
   stream, as a fraction of that stream. Sorting every component's documents by that fraction spreads each
   component evenly over the whole sequence: at every point each component's cumulative tokens are within
   about one of its longest documents of its share, so any window of N documents holds the components in
   their token shares as closely as document boundaries allow. (`interleave = "documents"` spaces documents
   by count instead: no window ever lacks a component, at the cost of token shares around very long
   documents.) Curriculum phases cut each stream into consecutive pieces, one per phase, with their own
   shares.
5. Export streams the ordered mix out of DuckDB in Arrow record batches, runs decontamination on every text,
   and writes JSONL and Parquet, the instruction records as alpaca or sharegpt, the validation sets, an entry
   for LLaMA-Factory's dataset_info.json, the membership and a manifest with file hashes.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import tomli_w

from core.flow import scope_sql
from core.ingest import file_sha256
from core.progress import Progress, no_progress
from core.readers import sharegpt_turns
from core.steps import Step, config_from_recipe, param, recipe_keys, validate_fields
from core.workspace import Workspace, WorkspaceError, code_version

DRAWABLE_ROLES = ("domain", "general", "instruction")
SOURCES = ("corpora", "recalled", "control")
ON_SHORT = ("shrink", "allow", "error")
INTERLEAVE = ("tokens", "documents")
INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "none")
EXPORT_FORMATS = ("jsonl", "parquet")
MANIFEST_FORMAT = "studio-mix/1"
# How far an export may miss its planned budget and shares (the tolerance tests/test_mix.py holds exports to).
EXPORT_TOLERANCE = 0.01
BATCH_ROWS = 8_192
# DuckDB's memory during an export (it spills beyond it). bench/mix.py, 1.01M documents on 2 cores: without a
# limit the export peaked at 2,205 MB RSS (10.9 s); with 512MB at 788 MB (12.1 s), and a quarter-size export at
# 771 MB, so peak memory no longer grows with the export. Decontamination adds its index (1,220 MB in all).
EXPORT_MEMORY_LIMIT = "512MB"

# Presets from common practice (domain : general replay, and instruction data mixed into pretraining).
PRESETS: dict[str, dict[str, float]] = {
    "domain:general 1:5": {"domain": 1 / 6, "general": 5 / 6},
    "domain:general 70:30": {"domain": 0.7, "general": 0.3},
    "domain:general 80:20": {"domain": 0.8, "general": 0.2},
    "MIP 80/10/10": {"domain": 0.8, "instruction": 0.1, "general": 0.1},
}


# --- the recipe ----------------------------------------------------------------------------------------------
@dataclass
class Component:
    """One part of the mix. It draws from `corpora` if given, else from every corpus of `role` (which defaults
    to the component's name when that is a role); `source` narrows it to the recalled set or its control."""

    name: str
    share: float = 0.0  # share of the budget in tokens (normalised over the components)
    role: str | None = None
    corpora: list[str] = field(default_factory=list)
    source: str = "corpora"  # corpora | recalled | control
    max_repeats: float | None = None  # None: the recipe's max_repeats


@dataclass
class Phase:
    """A curriculum phase: a fraction of the budget, with its own shares per component."""

    name: str
    fraction: float
    shares: dict[str, float] = field(default_factory=dict)


@dataclass
class ValidationConfig:
    sets: list[str] = field(default_factory=lambda: ["domain", "general"])  # roles to carve a set from
    tokens: int = 50_000  # per set


@dataclass
class MixRecipe:
    name: str = "mix"
    seed: int = 0
    total_tokens: int = 1_000_000
    components: list[Component] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    window: int = 100  # documents per window for the interleaving check
    # "tokens": each component's cumulative tokens track its share at every point of the sequence (within one
    # document); "documents": each component's document count does (a very long document then skews the token
    # share around it, but no window of N documents ever lacks a component).
    interleave: str = "tokens"
    max_repeats: float = 4.0
    on_short: str = "shrink"
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    formats: list[str] = field(default_factory=lambda: ["jsonl", "parquet"])
    instruction_format: str = "alpaca"  # how instruction records are exported for fine-tuning
    decontaminate: bool = True
    decontam: dict[str, Any] = field(default_factory=dict)  # DecontamConfig fields (n, benchmarks, mode, ...)
    count_missing_tokens: bool = True  # count tokens where documents lack a count, instead of failing

    def component(self, name: str) -> Component:
        for c in self.components:
            if c.name == name:
                return c
        raise ValueError(f"the recipe has no component {name!r}")

    def effective_phases(self) -> list[Phase]:
        if self.phases:
            return self.phases
        return [Phase("main", 1.0, {c.name: c.share for c in self.components})]

    def validate(self) -> None:
        if not self.name or any(ch in self.name for ch in "/\\") or self.name.startswith("."):
            raise ValueError(f"mix name {self.name!r} must be a plain folder name")
        if not self.components:
            raise ValueError("the recipe has no components")
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names repeat: {names}")
        if self.total_tokens <= 0:
            raise ValueError("total_tokens must be positive")
        if self.on_short not in ON_SHORT:
            raise ValueError(f"on_short must be one of {', '.join(ON_SHORT)}")
        if self.instruction_format not in INSTRUCTION_FORMATS:
            raise ValueError(f"instruction_format must be one of {', '.join(INSTRUCTION_FORMATS)}")
        if not self.formats or set(self.formats) - set(EXPORT_FORMATS):
            raise ValueError(f"formats must be a non-empty subset of {', '.join(EXPORT_FORMATS)}")
        if self.interleave not in INTERLEAVE:
            raise ValueError(f"interleave must be one of {', '.join(INTERLEAVE)}")
        if self.window < 1:
            raise ValueError("window must be at least 1 document")
        if self.max_repeats < 1:
            raise ValueError("max_repeats must be at least 1")
        for c in self.components:
            if c.source not in SOURCES:
                raise ValueError(f"component {c.name!r}: source must be one of {', '.join(SOURCES)}")
            if c.role is not None and c.role not in DRAWABLE_ROLES:
                raise ValueError(f"component {c.name!r}: role must be one of {', '.join(DRAWABLE_ROLES)}"
                                 " (benchmarks are never drawn)")
            if c.role is None and not c.corpora and c.source == "corpora" and c.name not in DRAWABLE_ROLES:
                raise ValueError(f"component {c.name!r} names neither a role nor corpora")
            if c.share < 0 or (c.max_repeats is not None and c.max_repeats < 1):
                raise ValueError(f"component {c.name!r}: share must be >= 0 and max_repeats >= 1")
        for phase in self.effective_phases():
            unknown = set(phase.shares) - set(names)
            if unknown:
                raise ValueError(f"phase {phase.name!r} gives shares to unknown components {sorted(unknown)}")
            if phase.fraction <= 0 or sum(phase.shares.values()) <= 0 or min(phase.shares.values()) < 0:
                raise ValueError(f"phase {phase.name!r} needs a positive fraction and positive shares")
        if self.phases and not math.isclose(sum(p.fraction for p in self.phases), 1.0, abs_tol=1e-6):
            raise ValueError("phase fractions must add up to 1")
        if set(self.validation.sets) - {"domain", "general", "instruction"}:
            raise ValueError("validation sets are roles: domain, general or instruction")


def role_of(component: Component) -> str | None:
    if component.role:
        return component.role
    if not component.corpora and component.name in DRAWABLE_ROLES:
        return component.name
    return None


def recipe_to_dict(recipe: MixRecipe) -> dict[str, Any]:
    data = asdict(recipe)
    # TOML has no null: leave unset optional fields out.
    for c in data["components"]:
        for key in ("role", "max_repeats"):
            if c[key] is None:
                del c[key]
    if not data["phases"]:
        del data["phases"]
    return data


def recipe_from_dict(data: dict[str, Any]) -> MixRecipe:
    data = dict(data)
    known = set(MixRecipe.__dataclass_fields__)
    unknown = set(data) - known - {"component", "phase"}
    if unknown:
        raise ValueError(f"unknown recipe keys {sorted(unknown)} (known: {', '.join(sorted(known))})")
    components = data.pop("components", None) or data.pop("component", [])
    phases = data.pop("phases", None) or data.pop("phase", [])
    validation = data.pop("validation", {})
    try:
        recipe = MixRecipe(
            **data,
            components=[Component(**c) for c in components],
            phases=[Phase(**p) for p in phases],
            validation=ValidationConfig(**validation),
        )
    except TypeError as exc:
        raise ValueError(f"bad recipe: {exc}") from exc
    recipe.validate()
    return recipe


def load_recipe(path: str | Path) -> MixRecipe:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"recipe {path} does not exist")
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"recipe {path} is not valid TOML: {exc}") from exc
    return recipe_from_dict(data)


def recipe_toml(recipe: MixRecipe) -> str:
    """The recipe as hand-editable TOML: settings first, then one [[component]] and [[phase]] block each."""
    data = recipe_to_dict(recipe)
    components, phases = data.pop("components"), data.pop("phases", [])
    if not data["decontam"]:
        del data["decontam"]
    out = [tomli_w.dumps(data)]
    # tomli_w would write short tables inline (`component = [{...}]`); blocks read better in a file.
    for c in components:
        out.append("\n[[component]]\n" + "".join(tomli_w.dumps({k: v}) for k, v in c.items()
                                                   if not (k == "corpora" and not v)))
    for phase in phases:
        shares = phase.pop("shares")
        out.append("\n[[phase]]\n" + "".join(tomli_w.dumps({k: v}) for k, v in phase.items()))
        out.append("[phase.shares]\n" + "".join(tomli_w.dumps({k: v}) for k, v in shares.items()))
    return "".join(out)


def save_recipe(recipe: MixRecipe, path: str | Path) -> Path:
    recipe.validate()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(recipe_toml(recipe), encoding="utf-8")
    return path


def preset_recipe(preset: str, total_tokens: int = 1_000_000, *, name: str = "mix", seed: int = 0,
                  **overrides: Any) -> MixRecipe:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    components = [Component(name=role, share=share) for role, share in PRESETS[preset].items()]
    recipe = MixRecipe(name=name, seed=seed, total_tokens=total_tokens, components=components, **overrides)
    recipe.validate()
    return recipe


def recipes_folder(ws: Workspace) -> Path:
    return ws.artifacts / "recipes"


def exports_folder(ws: Workspace) -> Path:
    return ws.artifacts / "exports"


# --- the plan: accounting without writing ------------------------------------------------------------------
@dataclass
class ComponentPlan:
    name: str
    source: str
    role: str | None
    corpora: list[str]
    share: float  # of the whole budget, over all phases
    available_documents: int
    available_tokens: int
    uncounted_documents: int
    requested_tokens: int
    planned_tokens: int
    max_repeats: float
    repeats: float  # planned / available: above 1 means up-sampled
    short: bool  # requested more than available * max_repeats
    claimed_elsewhere: int  # documents that an earlier component took
    benchmark_copies: int  # documents left out as exact copies of benchmark items

    @property
    def full_copies(self) -> int:
        return int(self.planned_tokens // self.available_tokens) if self.available_tokens else 0


@dataclass
class MixPlan:
    recipe: MixRecipe
    components: list[ComponentPlan]
    validation: dict[str, dict[str, int]]  # set -> documents, tokens
    requested_tokens: int
    planned_tokens: int
    scale: float  # planned / requested budget (below 1 when shrunk)
    phase_targets: dict[str, dict[str, int]]  # phase -> component -> tokens
    warnings: list[str]

    @property
    def uncounted_documents(self) -> int:
        return sum(c.uncounted_documents for c in self.components)

    def to_dict(self) -> dict[str, Any]:
        return {"requested_tokens": self.requested_tokens, "planned_tokens": self.planned_tokens,
                "scale": self.scale, "warnings": self.warnings, "validation": self.validation,
                "phase_targets": self.phase_targets,
                "components": [asdict(c) | {"full_copies": c.full_copies} for c in self.components]}


def _view_exists(ws: Workspace, name: str) -> bool:
    return bool(ws.scalar("SELECT count(*) FROM duckdb_views() WHERE view_name = ?", [name]))


def _check_corpora(ws: Workspace, recipe: MixRecipe) -> dict[str, str]:
    roles = dict(ws.query("SELECT name, role FROM corpora"))
    for c in recipe.components:
        for name in c.corpora:
            if name not in roles:
                raise WorkspaceError(f"component {c.name!r}: no corpus {name!r} in the workspace")
            if roles[name] == "benchmark":
                raise WorkspaceError(f"component {c.name!r}: {name!r} is a benchmark corpus; benchmarks are "
                                     "held out and never enter a mix")
        if c.source != "corpora":
            view = f"{c.source}_documents"
            if not _view_exists(ws, view) or not ws.scalar(f"SELECT count(*) FROM {view}"):
                raise WorkspaceError(f"component {c.name!r} draws from the {c.source} set, but recall has not "
                                     "run on this workspace (run `studio recall` first)")
    return roles


def _build_pools(ws: Workspace, recipe: MixRecipe) -> dict[int, tuple[int, int]]:
    """Temp table mix_pool: each component's documents; returns index -> (claimed elsewhere, benchmark copies).
    Documents without a token count get 0 tokens here and are counted as uncounted."""
    _check_corpora(ws, recipe)
    ws.con.execute(
        "CREATE OR REPLACE TEMP TABLE mix_benchmark_hashes AS SELECT DISTINCT d.content_hash FROM documents d "
        "JOIN corpora c ON c.name = d.corpus WHERE c.role = 'benchmark'")
    ws.con.execute(
        "CREATE OR REPLACE TEMP TABLE mix_pool (doc_id VARCHAR, comp_idx INTEGER, tokens BIGINT, "
        "counted BOOLEAN, content_hash VARCHAR, corpus VARCHAR, role VARCHAR, budget BIGINT)")
    exclusions: dict[int, tuple[int, int]] = {}
    for index, comp in enumerate(recipe.components):
        where = ["c.role <> 'benchmark'"]
        params: dict[str, Any] = {}
        if comp.corpora:
            where.append("d.corpus IN (SELECT unnest($corpora))")
            params["corpora"] = comp.corpora
        elif role_of(comp):
            where.append("c.role = $role")
            params["role"] = role_of(comp)
        if comp.source != "corpora":
            where.append(f"d.doc_id IN (SELECT doc_id FROM {comp.source}_documents)")
        candidates = (f"SELECT d.doc_id, d.token_count, d.content_hash, d.corpus, c.role FROM current_documents d "
                      f"JOIN corpora c ON c.name = d.corpus WHERE {' AND '.join(where)}")
        claimed, copies = ws.con.execute(
            f"SELECT count(*) FILTER (WHERE doc_id IN (SELECT doc_id FROM mix_pool)), "
            f"count(*) FILTER (WHERE content_hash IN (SELECT content_hash FROM mix_benchmark_hashes)) "
            f"FROM ({candidates})", params).fetchall()[0]
        exclusions[index] = (int(claimed), int(copies))
        ws.con.execute(
            f"INSERT INTO mix_pool SELECT x.doc_id, $idx, coalesce(x.token_count, 0), x.token_count IS NOT NULL, "
            f"x.content_hash, x.corpus, x.role, coalesce(x.token_count, 0) FROM ({candidates}) x "
            f"WHERE x.doc_id NOT IN (SELECT doc_id FROM mix_pool) "
            f"AND x.content_hash NOT IN (SELECT content_hash FROM mix_benchmark_hashes)", params | {"idx": index})
    return exclusions


def _carve_validation(ws: Workspace, recipe: MixRecipe) -> None:
    """Temp table mix_validation; removes its documents (and their exact copies) from mix_pool."""
    ws.con.execute(
        """
        CREATE OR REPLACE TEMP TABLE mix_validation AS
        WITH ranked AS (
            SELECT p.*, 'validation_' || p.role AS split, md5($seed || ':validation:' || p.doc_id) AS shuffle_key,
                   sum(p.tokens) OVER (PARTITION BY p.role ORDER BY md5($seed || ':validation:' || p.doc_id),
                                       p.doc_id ROWS UNBOUNDED PRECEDING) AS cum
            FROM mix_pool p WHERE p.role IN (SELECT unnest($sets)) AND p.tokens > 0
        )
        SELECT * FROM ranked WHERE cum - tokens < $target
        """,
        {"seed": str(recipe.seed), "sets": recipe.validation.sets or [""],
         "target": recipe.validation.tokens if recipe.validation.sets else 0},
    )
    ws.con.execute("DELETE FROM mix_pool WHERE doc_id IN (SELECT doc_id FROM mix_validation) "
                   "OR content_hash IN (SELECT content_hash FROM mix_validation)")


def _targets(recipe: MixRecipe, available: dict[int, int]) -> tuple[dict[str, dict[int, float]], float, list[str]]:
    """phase -> component index -> token target, the budget scale, and warnings."""
    index = {c.name: i for i, c in enumerate(recipe.components)}
    phase_targets: dict[str, dict[int, float]] = {}
    for phase in recipe.effective_phases():
        total_share = sum(phase.shares.values())
        phase_targets[phase.name] = {index[name]: recipe.total_tokens * phase.fraction * share / total_share
                                     for name, share in phase.shares.items() if share > 0}
    requested = {i: sum(t.get(i, 0.0) for t in phase_targets.values()) for i in range(len(recipe.components))}
    warnings: list[str] = []
    limit_scale = 1.0
    caps: dict[int, float] = {}
    for i, comp in enumerate(recipe.components):
        max_repeats = comp.max_repeats or recipe.max_repeats
        caps[i] = available.get(i, 0) * max_repeats
        if requested[i] <= 0:
            continue
        if requested[i] > caps[i]:
            have = available.get(i, 0)
            warnings.append(
                f"component {comp.name!r} is short: {requested[i]:,.0f} tokens requested, {have:,} available; "
                f"up-sampled at most {max_repeats:g}x ({caps[i]:,.0f} tokens)")
            limit_scale = min(limit_scale, caps[i] / requested[i])
        elif requested[i] > available.get(i, 0):
            warnings.append(f"component {comp.name!r} is up-sampled {requested[i] / available[i]:.2f}x "
                            f"({available[i]:,} tokens available)")
    scale = 1.0
    if limit_scale < 1.0:
        if recipe.on_short == "error":
            raise WorkspaceError("; ".join(w for w in warnings if "short" in w) + " (on_short = 'error')")
        if recipe.on_short == "shrink":
            scale = limit_scale
            warnings.append(f"the budget shrinks to {scale:.1%} of {recipe.total_tokens:,} tokens so the shares "
                            "hold (on_short = 'shrink')")
            phase_targets = {p: {i: t * scale for i, t in ts.items()} for p, ts in phase_targets.items()}
        else:  # allow: each short component takes what it has, the others their request
            for ts in phase_targets.values():
                for i in ts:
                    if requested[i] > caps[i]:
                        ts[i] *= caps[i] / requested[i]
            warnings.append("short components stay short; the shares drift (on_short = 'allow')")
    return phase_targets, scale, warnings


def _plan_from_pools(ws: Workspace, recipe: MixRecipe, exclusions: dict[int, tuple[int, int]]) -> MixPlan:
    # `budget`, not `tokens`: documents that decontamination drops at export bring nothing to the budget.
    rows = ws.query("SELECT comp_idx, count(*) FILTER (WHERE budget > 0 OR tokens = 0), sum(budget), "
                    "count(*) FILTER (WHERE NOT counted) FROM mix_pool GROUP BY comp_idx")
    stats = {int(i): (int(n), int(t or 0), int(u)) for i, n, t, u in rows}
    available = {i: s[1] for i, s in stats.items()}
    phase_targets, scale, warnings = _targets(recipe, available)
    validation = {split: {"documents": int(n), "tokens": int(t or 0)} for split, n, t in
                  ws.query("SELECT split, count(*), sum(tokens) FROM mix_validation GROUP BY split ORDER BY split")}
    for role in recipe.validation.sets:
        got = validation.get(f"validation_{role}", {}).get("tokens", 0)
        if any(role_of(c) == role or c.role == role for c in recipe.components) and got < recipe.validation.tokens:
            warnings.append(f"validation set {role!r} has {got:,} of {recipe.validation.tokens:,} tokens")
    total_requested = recipe.total_tokens
    components = []
    for i, comp in enumerate(recipe.components):
        n, tokens, uncounted = stats.get(i, (0, 0, 0))
        requested = sum(recipe.total_tokens * p.fraction * p.shares.get(comp.name, 0) / sum(p.shares.values())
                        for p in recipe.effective_phases())
        planned = sum(t.get(i, 0.0) for t in phase_targets.values())
        max_repeats = comp.max_repeats or recipe.max_repeats
        if uncounted:
            warnings.append(f"component {comp.name!r}: {uncounted:,} documents have no token count yet "
                            "(`studio tokens`)")
        if n == 0 and requested > 0:
            warnings.append(f"component {comp.name!r} has no documents to draw from")
        components.append(ComponentPlan(
            name=comp.name, source=comp.source, role=role_of(comp), corpora=list(comp.corpora),
            share=requested / total_requested, available_documents=n, available_tokens=tokens,
            uncounted_documents=uncounted, requested_tokens=round(requested), planned_tokens=round(planned),
            max_repeats=max_repeats, repeats=planned / tokens if tokens else 0.0,
            short=requested > tokens * max_repeats + 0.5, claimed_elsewhere=exclusions[i][0],
            benchmark_copies=exclusions[i][1]))
    names = [c.name for c in recipe.components]
    return MixPlan(
        recipe=recipe, components=components, validation=validation, requested_tokens=total_requested,
        planned_tokens=round(sum(c.planned_tokens for c in components)), scale=scale,
        phase_targets={p: {names[i]: round(t) for i, t in ts.items()} for p, ts in phase_targets.items()},
        warnings=warnings)


def plan_mix(ws: Workspace, recipe: MixRecipe) -> MixPlan:
    """Per component: what is available, what is requested, what will be drawn (read-only; temp tables)."""
    recipe.validate()
    try:
        exclusions = _build_pools(ws, recipe)
        _carve_validation(ws, recipe)
        return _plan_from_pools(ws, recipe, exclusions)
    finally:
        _drop_temp(ws)


def _drop_temp(ws: Workspace) -> None:
    for name in ("mix_pool", "mix_validation", "mix_benchmark_hashes", "mix_stream", "mix_comp_params",
                 "mix_phase_params", "mix_screened"):
        with contextlib.suppress(Exception):
            ws.con.execute(f"DROP TABLE IF EXISTS temp.{name}")


def sample_documents(ws: Workspace, recipe: MixRecipe, component: str, n: int = 5) -> list[dict[str, Any]]:
    """A few documents a component would draw from (seeded), for the page."""
    recipe.validate()
    index = [c.name for c in recipe.components].index(component)
    try:
        _build_pools(ws, recipe)
        rows = ws.query(
            "SELECT p.doc_id, p.corpus, p.tokens, left(d.text, 1200) FROM mix_pool p JOIN documents d "
            "USING (doc_id) WHERE p.comp_idx = ? ORDER BY md5(? || ':sample:' || p.doc_id) LIMIT ?",
            [index, str(recipe.seed), n])
    finally:
        _drop_temp(ws)
    return [{"doc_id": r[0], "corpus": r[1], "tokens": r[2], "text": r[3]} for r in rows]


# --- building the mix ----------------------------------------------------------------------------------------
def _build_stream(ws: Workspace, recipe: MixRecipe, plan: MixPlan) -> None:
    """Temp table mix_stream: the sampled training documents with component, copy, phase and position."""
    names = [c.name for c in recipe.components]
    comp_rows = []
    for i, cp in enumerate(plan.components):
        target = sum(ts.get(cp.name, 0) for ts in plan.phase_targets.values())
        available = cp.available_tokens
        full = int(target // available) if available else 0
        max_copies = math.ceil(cp.max_repeats)
        full = min(full, max_copies)
        remainder = max(target - full * available, 0) if full < max_copies else 0
        comp_rows.append((i, full, float(remainder)))
    ws.con.register("mix_comp_params_arrow", pa.table({
        "comp_idx": pa.array([r[0] for r in comp_rows], pa.int32()),
        "full_copies": pa.array([r[1] for r in comp_rows], pa.int64()),
        "remainder": pa.array([r[2] for r in comp_rows], pa.float64())}))
    ws.con.execute("CREATE OR REPLACE TEMP TABLE mix_comp_params AS SELECT * FROM mix_comp_params_arrow")
    ws.con.unregister("mix_comp_params_arrow")
    # Each component's stream is cut into consecutive pieces, one per phase, in phase order.
    phase_rows: list[tuple[int, int, str, float, float, bool]] = []
    phases = recipe.effective_phases()
    for i, name in enumerate(names):
        start = 0.0
        pieces = [(p_idx, p.name, plan.phase_targets[p.name].get(name, 0)) for p_idx, p in enumerate(phases)]
        pieces = [piece for piece in pieces if piece[2] > 0]
        for k, (p_idx, p_name, length) in enumerate(pieces):
            phase_rows.append((i, p_idx, p_name, start, float(length), k == len(pieces) - 1))
            start += length
    ws.con.register("mix_phase_params_arrow", pa.table({
        "comp_idx": pa.array([r[0] for r in phase_rows], pa.int32()),
        "phase_idx": pa.array([r[1] for r in phase_rows], pa.int32()),
        "phase": pa.array([r[2] for r in phase_rows], pa.string()),
        "start": pa.array([r[3] for r in phase_rows], pa.float64()),
        "length": pa.array([r[4] for r in phase_rows], pa.float64()),
        "last": pa.array([r[5] for r in phase_rows], pa.bool_())}))
    ws.con.execute("CREATE OR REPLACE TEMP TABLE mix_phase_params AS SELECT * FROM mix_phase_params_arrow")
    ws.con.unregister("mix_phase_params_arrow")
    ws.con.register("mix_component_names", pa.table({"comp_idx": pa.array(range(len(names)), pa.int32()),
                                                     "component": names}))
    ws.con.execute(
        """
        CREATE OR REPLACE TEMP TABLE mix_stream AS
        WITH copies AS (
            SELECT p.doc_id, p.comp_idx, p.tokens, p.budget, p.corpus, g.copy
            FROM mix_pool p JOIN mix_comp_params cp USING (comp_idx),
                 LATERAL (SELECT range AS copy FROM range(cp.full_copies + CASE WHEN cp.remainder > 0 THEN 1
                                                                                  ELSE 0 END)) g
            WHERE p.tokens > 0
        ), keyed AS (
            SELECT *, md5($seed || ':' || comp_idx || ':' || copy || ':' || doc_id) AS shuffle_key FROM copies
        ), cut AS (
            SELECT k.*, sum(k.budget) OVER (PARTITION BY k.comp_idx, k.copy ORDER BY k.shuffle_key, k.doc_id
                                            ROWS UNBOUNDED PRECEDING) AS copy_cum
            FROM keyed k
        ), kept AS (
            -- whole copies, then the prefix of one more copy whose token midpoints fall inside the remainder
            SELECT c.* FROM cut c JOIN mix_comp_params cp USING (comp_idx)
            WHERE c.copy < cp.full_copies OR c.copy_cum - c.budget / 2.0 < cp.remainder
        ), streamed AS (
            SELECT k.*, sum(k.budget) OVER (PARTITION BY k.comp_idx ORDER BY k.copy, k.shuffle_key, k.doc_id
                                            ROWS UNBOUNDED PRECEDING) - k.budget / 2.0 AS mid
            FROM kept k
        ), phased AS (
            SELECT s.*, ph.phase_idx, ph.phase,
                   CASE WHEN $by_tokens THEN least((s.mid - ph.start) / ph.length, 1.0)
                        ELSE (row_number() OVER (PARTITION BY s.comp_idx, ph.phase_idx
                                                 ORDER BY s.copy, s.shuffle_key, s.doc_id) - 0.5)
                             / count(*) OVER (PARTITION BY s.comp_idx, ph.phase_idx) END AS place
            FROM streamed s JOIN mix_phase_params ph
              ON ph.comp_idx = s.comp_idx AND s.mid >= ph.start AND (s.mid < ph.start + ph.length OR ph.last)
        )
        SELECT (row_number() OVER (ORDER BY phase_idx, place, comp_idx, copy, doc_id) - 1)::BIGINT AS position,
               p.doc_id, n.component, p.phase, p.copy::INTEGER AS copy, p.tokens, p.corpus
        FROM phased p JOIN mix_component_names n USING (comp_idx)
        """,
        {"seed": str(recipe.seed), "by_tokens": recipe.interleave == "tokens"},
    )
    ws.con.unregister("mix_component_names")


# Refill rounds after decontamination: each drops what the new sample brought in; contaminated documents are
# rare, so the second round nearly always finds none.
MAX_SCREEN_ROUNDS = 8


@dataclass
class Screening:
    """Decontamination run on the sampled training documents before the export, so the documents it drops are
    replaced from the pool and the budget and shares hold. `verdicts` holds the contaminated documents only:
    doc_id -> (the text to export, None when dropped; the overlaps found)."""

    verdicts: dict[str, tuple[str | None, list[Any]]] = field(default_factory=dict)
    rounds: int = 0
    screened_documents: int = 0
    refilled_tokens: int = 0
    # The plan before anything was dropped: what the export is held to.
    planned_tokens: int = 0
    planned_shares: dict[str, float] = field(default_factory=dict)


def _check_texts(checker: ContaminationChecker, texts: list[str]) -> list[tuple[str | None, list[Any]]]:
    """(the cleaned text, None when dropped; the overlaps) for each text; unchanged texts come back as they are."""
    found = checker.find_many(texts) if hasattr(checker, "find_many") else None
    out = []
    for k, text in enumerate(texts):
        if found is None:
            out.append(checker.cut(text))
        else:
            out.append((checker.apply(text, found[k]) if found[k] else text, found[k]))
    return out


def _screen_and_refill(ws: Workspace, recipe: MixRecipe, plan: MixPlan, exclusions: dict[int, tuple[int, int]],
                       checker: ContaminationChecker, progress: Progress) -> tuple[MixPlan, Screening]:
    """Sample, check every sampled document not checked yet, take the dropped ones out of the budget and sample
    again, until a sample holds no new drop. Leaves mix_stream built for the final plan."""
    screening = Screening(planned_tokens=plan.planned_tokens, planned_shares={
        cp.name: cp.planned_tokens / plan.planned_tokens for cp in plan.components} if plan.planned_tokens else {})
    ws.con.execute("CREATE OR REPLACE TEMP TABLE mix_screened (doc_id VARCHAR)")
    sql = ("SELECT u.doc_id, d.text FROM (SELECT DISTINCT doc_id FROM mix_stream WHERE doc_id NOT IN "
           "(SELECT doc_id FROM mix_screened)) u JOIN documents d USING (doc_id) ORDER BY u.doc_id")
    while True:
        _build_stream(ws, recipe, plan)
        screening.rounds += 1
        dropped: list[str] = []
        # On this connection, not a cursor of its own as `_stream` takes: mix_stream is a temp table of this one.
        for batch in ws.con.sql(sql).to_arrow_reader(BATCH_ROWS):
            ids = batch.column("doc_id").to_pylist()
            texts = batch.column("text").to_pylist()
            for doc_id, text, (new, overlaps) in zip(ids, texts, _check_texts(checker, texts), strict=True):
                if new is None or new != text:
                    screening.verdicts[doc_id] = (new, overlaps)
                    if new is None:
                        dropped.append(doc_id)
            screening.screened_documents += len(ids)
            progress(0.1, f"decontamination before export: {screening.screened_documents:,} documents checked")
        ws.con.execute("INSERT INTO mix_screened SELECT DISTINCT doc_id FROM mix_stream "
                       "WHERE doc_id NOT IN (SELECT doc_id FROM mix_screened)")
        if not dropped or screening.rounds >= MAX_SCREEN_ROUNDS:
            break
        screening.refilled_tokens += int(ws.scalar(
            "SELECT coalesce(sum(budget), 0) FROM mix_pool WHERE doc_id IN (SELECT unnest(?))", [dropped]))
        ws.con.execute("UPDATE mix_pool SET budget = 0 WHERE doc_id IN (SELECT unnest(?))", [dropped])
        plan = _plan_from_pools(ws, recipe, exclusions)
    if dropped:  # still dropping after the last round: the next sample was never checked
        ws.con.execute("UPDATE mix_pool SET budget = 0 WHERE doc_id IN (SELECT unnest(?))", [dropped])
    return plan, screening


class ContaminationChecker(Protocol):
    """What the export needs of core.decontam's ContaminationIndex (which also offers the faster batch pair
    `find_many(texts)` / `apply(text, overlaps)`, used when present)."""

    def cut(self, text: str) -> tuple[str | None, list[Any]]: ...


def contamination_checker(ws: Workspace, recipe: MixRecipe) -> ContaminationChecker | None:
    if not recipe.decontaminate:
        return None
    try:
        from core.decontam import DecontamConfig, contamination_index
    except ImportError as exc:
        raise WorkspaceError("decontamination is not available in this build (core.decontam); set "
                             "decontaminate = false in the recipe to export without it") from exc
    return contamination_index(ws, DecontamConfig(**recipe.decontam))


@dataclass
class ExportedFile:
    path: str
    rows: int
    bytes: int
    sha256: str


@dataclass
class MixResult:
    run_id: str
    name: str
    out_dir: str
    plan: MixPlan
    train_documents: int
    train_tokens: int
    components: dict[str, dict[str, Any]]
    validation: dict[str, dict[str, int]]
    decontamination: dict[str, Any]
    window: dict[str, Any]
    files: dict[str, ExportedFile]
    manifest: str

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "name": self.name, "out_dir": self.out_dir,
                "train_documents": self.train_documents, "train_tokens": self.train_tokens,
                "budget": {"requested": self.plan.requested_tokens, "planned": self.plan.planned_tokens,
                           "scale": self.plan.scale},
                "warnings": self.plan.warnings, "components": self.components, "validation": self.validation,
                "decontamination": self.decontamination, "window": self.window,
                "files": {k: asdict(v) for k, v in self.files.items()}, "manifest": self.manifest}


def _stream(ws: Workspace, sql: str, params: list[Any], batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Arrow record batches of a query, on a cursor of their own (so the main connection stays free)."""
    cursor = ws.con.cursor()
    try:
        reader = cursor.sql(sql, params=params).to_arrow_reader(batch_rows)
        yield from reader
    finally:
        cursor.close()


class _TextSink:
    """Writes `{"text": ...}` JSONL and/or a Parquet `text` column, batch by batch."""

    def __init__(self, folder: Path, stem: str, formats: list[str]) -> None:
        self.paths: dict[str, Path] = {}
        self.rows = 0
        self._jsonl = None
        self._parquet: pq.ParquetWriter | None = None
        if "jsonl" in formats:
            self.paths["jsonl"] = folder / f"{stem}.jsonl"
            self._jsonl = open(self.paths["jsonl"], "wb", buffering=1 << 20)  # noqa: SIM115
        if "parquet" in formats:
            self.paths["parquet"] = folder / f"{stem}.parquet"
            self._parquet = pq.ParquetWriter(self.paths["parquet"], pa.schema([("text", pa.string())]),
                                             compression="zstd")

    def write(self, texts: list[str]) -> None:
        if not texts:
            return
        if self._jsonl is not None:
            self._jsonl.write(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
        if self._parquet is not None:
            self._parquet.write_table(pa.table({"text": pa.array(texts, pa.string())}))
        self.rows += len(texts)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._parquet is not None:
            self._parquet.close()


# Speaker names as LLaMA-Factory's sharegpt tags expect them.
HUMAN_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "chatgpt", "model"}


def _turns_of(kind: str, record: dict[str, Any]) -> tuple[str, list[tuple[str, str]]] | None:
    """(system, [(human, gpt), ...]) from an alpaca or sharegpt record; None when turns do not alternate."""
    if kind == "alpaca":
        pairs = []
        for item in record.get("history") or []:
            if isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((str(item[0]), str(item[1])))
        prompt = "\n".join(p for p in (str(record.get("instruction") or "").strip(),
                                       str(record.get("input") or "").strip()) if p)
        pairs.append((prompt, str(record.get("output") or "")))
        return str(record.get("system") or ""), pairs
    turns = sharegpt_turns(record)
    system = str(record.get("system") or "")
    if turns and turns[0]["from"].lower() == "system":
        system, turns = turns[0]["value"], turns[1:]
    pairs = []
    for k in range(0, len(turns) - 1, 2):
        who, answer = turns[k]["from"].lower(), turns[k + 1]["from"].lower()
        if who not in HUMAN_ROLES or answer not in ASSISTANT_ROLES:
            return None
        pairs.append((turns[k]["value"], turns[k + 1]["value"]))
    if not pairs or len(turns) % 2:
        return None
    return system, pairs


def instruction_row(kind: str, record: dict[str, Any], fmt: str) -> dict[str, Any] | None:
    """An exported instruction example (LLaMA-Factory alpaca or sharegpt), every column always present."""
    parsed = _turns_of(kind, record)
    if parsed is None:
        return None
    system, pairs = parsed
    if fmt == "alpaca":
        if kind == "alpaca":
            return {"instruction": str(record.get("instruction") or ""), "input": str(record.get("input") or ""),
                    "output": str(record.get("output") or ""), "system": system,
                    "history": [list(p) for p in pairs[:-1]]}
        last = pairs[-1]
        return {"instruction": last[0], "input": "", "output": last[1], "system": system,
                "history": [list(p) for p in pairs[:-1]]}
    conversations = []
    for human, gpt in pairs:
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return {"conversations": conversations, "system": system}


def dataset_info(name: str, files: dict[str, ExportedFile], instruction_format: str) -> dict[str, Any]:
    """Entries for LLaMA-Factory's data/dataset_info.json (with this folder as its dataset_dir)."""
    info: dict[str, Any] = {}
    for key, exported in files.items():
        file_name = Path(exported.path).name
        if key.startswith(("train.", "validation_")):
            stem, fmt = key.rsplit(".", 1)
            entry = f"{name}_{stem}" + ("" if fmt == "jsonl" else f"_{fmt}")
            info[entry] = {"file_name": file_name, "columns": {"prompt": "text"}}
        elif key.startswith("sft."):
            if instruction_format == "alpaca":
                info[f"{name}_sft"] = {"file_name": file_name, "formatting": "alpaca", "columns": {
                    "prompt": "instruction", "query": "input", "response": "output", "system": "system",
                    "history": "history"}}
            else:
                info[f"{name}_sft"] = {"file_name": file_name, "formatting": "sharegpt",
                                       "columns": {"messages": "conversations", "system": "system"},
                                       "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                                "assistant_tag": "gpt"}}
    return info


def _window_check(ws: Workspace, mix_id: str, recipe: MixRecipe) -> dict[str, Any]:
    """How far the token share of each component strays from its phase's share over windows of N documents."""
    shares = []
    for p_idx, phase in enumerate(recipe.effective_phases()):
        total = sum(phase.shares.values())
        shares += [(phase.name, p_idx, c, s / total) for c, s in phase.shares.items() if s > 0]
    ws.con.register("mix_phase_shares", pa.table({
        "phase": [s[0] for s in shares], "component": [s[2] for s in shares],
        "share": pa.array([s[3] for s in shares], pa.float64())}))
    try:
        row = ws.con.execute(
            """
            WITH w AS (
                SELECT position // $n AS win, any_value(phase) AS phase, count(*) AS docs, sum(tokens) AS tokens
                FROM mix_members WHERE mix_id = $mix AND split = 'train' GROUP BY ALL
            ), full_windows AS (
                SELECT * FROM w WHERE docs = $n
                  AND win IN (SELECT position // $n FROM mix_members WHERE mix_id = $mix AND split = 'train'
                              GROUP BY 1 HAVING count(DISTINCT phase) = 1)
            ), per AS (
                SELECT f.win, s.component, s.share,
                       coalesce(sum(m.tokens), 0) / any_value(f.tokens) AS got,
                       count(m.doc_id) AS docs
                FROM full_windows f JOIN mix_phase_shares s ON s.phase = f.phase
                LEFT JOIN mix_members m ON m.mix_id = $mix AND m.split = 'train' AND m.position // $n = f.win
                     AND m.component = s.component
                GROUP BY ALL
            )
            SELECT count(DISTINCT win), max(abs(got - share)), avg(abs(got - share)),
                   count(*) FILTER (WHERE docs = 0 AND share * $n >= 1)
            FROM per
            """,
            {"n": recipe.window, "mix": mix_id}).fetchall()[0]
    finally:
        ws.con.unregister("mix_phase_shares")
    return {"size": recipe.window, "windows_checked": int(row[0] or 0),
            "max_share_deviation": round(float(row[1] or 0), 4),
            "mean_share_deviation": round(float(row[2] or 0), 4),
            "windows_missing_a_component": int(row[3] or 0)}


# Written into the partial folder while an export is under way (and removed before it becomes the export), so a
# leftover `DIR.partial` is known to be the studio's own and a user's folder of that name is never deleted.
PARTIAL_MARKER = ".studio-export-in-progress"


def _not_a_studio_export(out_dir: Path) -> str | None:
    """Why `out_dir` may not be replaced by an export, or None when it is empty or a studio export: a manifest
    of the studio's format and, beside it, only the files that manifest lists."""
    if not out_dir.is_dir():
        return "it is not a folder"
    entries = list(out_dir.iterdir())
    if not entries:
        return None
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "it is not empty and holds no manifest.json"
    except (OSError, ValueError) as exc:
        return f"its manifest.json is not a studio manifest ({exc})"
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        return f"its manifest.json is not a studio mix manifest (format {MANIFEST_FORMAT})"
    listed = {"manifest.json"} | {str(f.get("file")) for f in manifest["files"].values() if isinstance(f, dict)}
    foreign = sorted(e.name + ("/" if e.is_dir() else "") for e in entries
                     if e.name not in listed or e.is_symlink() or not e.is_file())
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        return f"it holds files the studio did not export ({shown})"
    return None


def _prepare_folder(out_dir: Path) -> Path:
    """A fresh partial folder beside `out_dir`. An existing `out_dir` is replaced only when the studio wrote it
    (see `_not_a_studio_export`), an existing `DIR.partial` only when it carries the studio's marker."""
    if out_dir.exists() or out_dir.is_symlink():
        reason = _not_a_studio_export(out_dir) if not out_dir.is_symlink() else "it is a symbolic link"
        if reason:
            raise WorkspaceError(f"{out_dir} exists and is not a studio export: {reason}; nothing was changed. "
                                 "Choose another --out (or empty that folder yourself)")
    partial = out_dir.with_name(out_dir.name + ".partial")
    if partial.exists() or partial.is_symlink():
        if partial.is_symlink() or not (partial / PARTIAL_MARKER).is_file():
            raise WorkspaceError(f"{partial} exists and is not a studio export in progress; nothing was changed. "
                                 "Move it away or choose another --out")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    (partial / PARTIAL_MARKER).write_text("a studio mix export in progress; removed when it finishes\n",
                                          encoding="utf-8")
    return partial


@contextlib.contextmanager
def duckdb_memory_limit(ws: Workspace, limit: str | None) -> Iterator[None]:
    """Cap DuckDB's memory for a block (it spills sorts and joins to the workspace's temp folder beyond it)."""
    if not limit:
        yield
        return
    before = ws.scalar("SELECT current_setting('memory_limit')")
    ws.con.execute(f"SET memory_limit = '{limit}'")
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            ws.con.execute(f"SET memory_limit = '{before}'")


def build_mix(ws: Workspace, recipe: MixRecipe, out_dir: str | Path | None = None,
              progress: Progress = no_progress, checker: ContaminationChecker | None = None,
              memory_limit: str | None = EXPORT_MEMORY_LIMIT) -> MixResult:
    """Sample, order and export the mix; record it as a run and its membership in mix_members.
    `checker` replaces the workspace's contamination index (decontamination always runs unless the recipe
    turns it off). DuckDB works under `memory_limit` meanwhile, so a large export's memory stays bounded."""
    if memory_limit and not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", memory_limit.strip(), re.IGNORECASE):
        raise ValueError(f"memory limit {memory_limit!r} should look like 512MB or 2GB")
    with duckdb_memory_limit(ws, memory_limit):
        return _build_mix(ws, recipe, out_dir, progress, checker)


def _build_mix(ws: Workspace, recipe: MixRecipe, out_dir: str | Path | None, progress: Progress | None,
               checker: ContaminationChecker | None) -> MixResult:
    progress = progress or no_progress
    recipe.validate()
    out_path = Path(out_dir).expanduser().resolve() if out_dir else exports_folder(ws) / recipe.name
    progress(0.0, "planning the mix")
    if recipe.count_missing_tokens:
        exclusions = _build_pools(ws, recipe)
        if ws.scalar("SELECT count(*) FROM mix_pool WHERE NOT counted"):
            from core.tokens import count_tokens

            _drop_temp(ws)
            count_tokens(ws, progress=lambda f, m: progress(0.05 * max(f, 0), f"counting tokens: {m}"))
    exclusions = _build_pools(ws, recipe)
    uncounted = ws.scalar("SELECT count(*) FROM mix_pool WHERE NOT counted")
    if uncounted:
        _drop_temp(ws)
        raise WorkspaceError(f"{uncounted:,} documents of the mix have no token count; run `studio tokens` first")
    _carve_validation(ws, recipe)
    plan = _plan_from_pools(ws, recipe, exclusions)
    if plan.planned_tokens <= 0:
        _drop_temp(ws)
        raise WorkspaceError("the mix would be empty: " + ("; ".join(plan.warnings) or "no documents"))
    if checker is None:
        checker = contamination_checker(ws, recipe)
    params = recipe_to_dict(recipe)
    partial = _prepare_folder(out_path)
    try:
        screening = None
        if checker is not None:
            plan, screening = _screen_and_refill(ws, recipe, plan, exclusions, checker, progress)
        with ws.run("mix", params, supersede=False) as run:
            result = _export(ws, recipe, plan, run.run_id, partial, out_path, checker, progress, screening)
            run.counts = {"train_documents": result.train_documents, "train_tokens": result.train_tokens,
                          "decontam_dropped": result.decontamination["dropped_documents"],
                          "decontam_cut": result.decontamination["cut_documents"],
                          "validation_documents": sum(v["documents"] for v in result.validation.values())}
            ws.con.execute(
                "INSERT INTO mixes (mix_id, name, recipe, seed, export_dir, manifest_sha256, train_documents, "
                "train_tokens) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [run.run_id, recipe.name, json.dumps(params), recipe.seed, str(out_path),
                 result.files["manifest.json"].sha256, result.train_documents, result.train_tokens])
            (partial / PARTIAL_MARKER).unlink()
            if out_path.exists():
                if _not_a_studio_export(out_path):  # it changed during the export: still never delete it
                    raise WorkspaceError(f"{out_path} changed during the export and is no longer a studio "
                                         "export; nothing was replaced")
                shutil.rmtree(out_path)
            partial.rename(out_path)
    except BaseException:
        with contextlib.suppress(Exception):
            ws.con.execute("DELETE FROM mix_members WHERE mix_id IN (SELECT run_id FROM runs WHERE step = 'mix' "
                           "AND status <> 'ok')")
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        _drop_temp(ws)
    progress(1.0, f"mix {recipe.name} exported to {out_path}")
    return result


def _warn_if_off_target(plan: MixPlan, screening: Screening, components: dict[str, dict[str, Any]],
                        train_tokens: int) -> None:
    """After decontamination: say where the export misses the budget or a share planned before anything was
    dropped by more than EXPORT_TOLERANCE (the pool could not refill what decontamination dropped)."""
    planned_tokens = screening.planned_tokens
    if planned_tokens and abs(train_tokens - planned_tokens) > EXPORT_TOLERANCE * planned_tokens:
        plan.warnings.append(f"after decontamination the export holds {train_tokens:,} of {planned_tokens:,} "
                             "planned tokens: the pool could not refill what was dropped")
    for name, share in screening.planned_shares.items():
        got = components[name]["share_exported"]
        if abs(got - share) > EXPORT_TOLERANCE:
            plan.warnings.append(f"after decontamination component {name!r} is {got:.1%} of the export, not "
                                 f"{share:.1%}: its pool could not refill what was dropped")


def _export(ws: Workspace, recipe: MixRecipe, plan: MixPlan, mix_id: str, folder: Path, final: Path,
            checker: ContaminationChecker | None, progress: Progress,
            screening: Screening | None = None) -> MixResult:
    progress(0.08, "sampling and interleaving")
    if screening is None:  # a screened export has its stream built already
        _build_stream(ws, recipe, plan)
    # Membership goes into the workspace first: it is committed per statement, so the export can read it
    # from a cursor of its own while this connection records what decontamination changes.
    ws.con.execute(
        "INSERT INTO mix_members (mix_id, split, position, doc_id, component, phase, copy, corpus, tokens) "
        "SELECT ?, 'train', position, doc_id, component, phase, copy, corpus, tokens FROM mix_stream "
        "ORDER BY position", [mix_id])
    ws.con.execute(
        "INSERT INTO mix_members (mix_id, split, position, doc_id, component, phase, copy, corpus, tokens) "
        "SELECT ?, v.split, row_number() OVER (PARTITION BY v.split ORDER BY v.shuffle_key, v.doc_id) - 1, "
        "v.doc_id, NULL, NULL, 0, v.corpus, v.tokens FROM mix_validation v ORDER BY v.split, 2", [mix_id])
    total_rows = ws.scalar("SELECT count(*) FROM mix_members WHERE mix_id = ? AND split = 'train'", [mix_id])
    progress(0.15, f"exporting {total_rows:,} training documents")

    changes: dict[str, list[Any]] = {"split": [], "position": [], "action": [], "removed_chars": []}
    decontam = {"enabled": checker is not None, "checked_documents": 0, "dropped_documents": 0,
                "cut_documents": 0, "removed_chars": 0, "dropped_tokens": 0, "items": Counter(),
                "by_component": Counter(), "examples": []}

    def clean(batch: pa.RecordBatch, split: str) -> list[str]:
        texts = batch.column("text").to_pylist()
        if checker is None:
            return texts
        out = []
        positions = batch.column("position").to_pylist()
        if split == "train" and screening is not None:  # every training document was checked when sampled
            verdicts = [screening.verdicts.get(doc_id, (text, [])) for doc_id, text in
                        zip(batch.column("doc_id").to_pylist(), texts, strict=True)]
        else:
            verdicts = _check_texts(checker, texts)
        for k, text in enumerate(texts):
            new, overlaps = verdicts[k]
            decontam["checked_documents"] += 1
            if new is not None and new == text:
                out.append(text)
                continue
            action = "dropped" if new is None else "cut"
            removed = len(text) - (len(new) if new is not None else 0)
            changes["split"].append(split)
            changes["position"].append(positions[k])
            changes["action"].append(action)
            changes["removed_chars"].append(removed)
            decontam[f"{action}_documents"] += 1
            decontam["removed_chars"] += removed
            component = batch.column("component")[k].as_py() or split
            decontam["by_component"][component] += 1
            items = sorted({str(getattr(o, "item_doc_id", "")) for o in overlaps})
            decontam["items"].update(items)
            if new is None:
                decontam["dropped_tokens"] += batch.column("tokens")[k].as_py()
            else:
                out.append(new)
            if len(decontam["examples"]) < 50:
                decontam["examples"].append({"doc_id": batch.column("doc_id")[k].as_py(), "split": split,
                                             "position": positions[k], "component": component,
                                             "action": action, "removed_chars": removed, "items": items[:5]})
        return out

    member_sql = ("SELECT m.position, m.doc_id, m.component, m.tokens, d.text FROM mix_members m "
                  "JOIN documents d USING (doc_id) WHERE m.mix_id = ? AND m.split = ? ORDER BY m.position")
    sink = _TextSink(folder, "train", recipe.formats)
    done = 0
    try:
        for batch in _stream(ws, member_sql, [mix_id, "train"]):
            sink.write(clean(batch, "train"))
            done += batch.num_rows
            progress(0.15 + 0.7 * done / max(total_rows, 1), f"{done:,} / {total_rows:,} documents written")
    finally:
        sink.close()
    written: dict[str, Path] = {f"train.{fmt}": p for fmt, p in sink.paths.items()}
    rows: dict[str, int] = dict.fromkeys(written, sink.rows)

    for split in sorted(plan.validation):
        vsink = _TextSink(folder, split, ["jsonl"])
        try:
            for batch in _stream(ws, member_sql, [mix_id, split]):
                vsink.write(clean(batch, split))
        finally:
            vsink.close()
        written[f"{split}.jsonl"] = vsink.paths["jsonl"]
        rows[f"{split}.jsonl"] = vsink.rows
    progress(0.88, "instruction records and membership")

    if changes["position"]:
        ws.con.register("mix_decontam_changes", pa.table({
            "split": changes["split"], "position": pa.array(changes["position"], pa.int64()),
            "action": changes["action"], "removed_chars": pa.array(changes["removed_chars"], pa.int64())}))
        ws.con.execute("UPDATE mix_members SET decontam = c.action, removed_chars = c.removed_chars "
                       "FROM mix_decontam_changes c WHERE mix_members.mix_id = ? AND mix_members.split = c.split "
                       "AND mix_members.position = c.position", [mix_id])
        ws.con.unregister("mix_decontam_changes")

    sft_skipped = Counter()
    if recipe.instruction_format != "none":
        sft_path = folder / f"sft_{recipe.instruction_format}.jsonl"
        sft_rows = 0
        # Each instruction record once, in order of first appearance; records that decontamination touched
        # are left out (a cut cannot be applied to a structured record).
        sft_sql = ("SELECT d.doc_id, d.kind, d.record FROM (SELECT doc_id, min(position) AS first, "
                   "bool_or(decontam IS NOT NULL) AS touched FROM mix_members WHERE mix_id = ? AND split = 'train' "
                   "GROUP BY doc_id) m JOIN documents d USING (doc_id) "
                   "WHERE d.kind IN ('alpaca', 'sharegpt') AND NOT m.touched ORDER BY m.first")
        with open(sft_path, "wb", buffering=1 << 20) as fh:
            for batch in _stream(ws, sft_sql, [mix_id]):
                for kind, record in zip(batch.column("kind").to_pylist(), batch.column("record").to_pylist(),
                                        strict=True):
                    try:
                        row = instruction_row(kind, orjson.loads(record), recipe.instruction_format)
                    except (ValueError, orjson.JSONDecodeError, TypeError):
                        row = None
                    if row is None:
                        sft_skipped["turns do not alternate human/assistant"] += 1
                        continue
                    fh.write(orjson.dumps(row) + b"\n")
                    sft_rows += 1
        sft_skipped["touched by decontamination"] = int(ws.scalar(
            "SELECT count(DISTINCT m.doc_id) FROM mix_members m JOIN documents d USING (doc_id) WHERE m.mix_id = ? "
            "AND m.split = 'train' AND m.decontam IS NOT NULL AND d.kind IN ('alpaca', 'sharegpt')", [mix_id]))
        if sft_rows:
            written[f"sft.{recipe.instruction_format}.jsonl"] = sft_path
            rows[f"sft.{recipe.instruction_format}.jsonl"] = sft_rows
        else:
            sft_path.unlink()

    # The membership, for tracing a trained model back to every document (the manifest names this file).
    members_path = folder / "members.parquet"
    members_sql = ("SELECT m.split, m.position, m.doc_id, m.component, m.phase, m.copy, m.corpus, m.tokens, "
                   "m.decontam, m.removed_chars FROM mix_members m WHERE m.mix_id = ? "
                   "ORDER BY m.split DESC, m.position")
    writer: pq.ParquetWriter | None = None
    members_rows = 0
    try:
        for batch in _stream(ws, members_sql, [mix_id], 65_536):
            if writer is None:
                writer = pq.ParquetWriter(members_path, batch.schema, compression="zstd")
            writer.write_batch(batch)
            members_rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    written["members.parquet"] = members_path
    rows["members.parquet"] = members_rows

    files = {key: ExportedFile(path=str(final / path.name), rows=rows[key], bytes=path.stat().st_size,
                               sha256=file_sha256(path)) for key, path in written.items()}
    info = dataset_info(recipe.name, files, recipe.instruction_format)
    info_path = folder / "dataset_info.json"
    info_path.write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    files["dataset_info.json"] = ExportedFile(str(final / info_path.name), len(info), info_path.stat().st_size,
                                              file_sha256(info_path))
    recipe_path = folder / "recipe.toml"
    recipe_path.write_text(recipe_toml(recipe), encoding="utf-8")
    files["recipe.toml"] = ExportedFile(str(final / recipe_path.name), 1, recipe_path.stat().st_size,
                                        file_sha256(recipe_path))

    # Per-component figures as exported (after decontamination drops).
    comp_rows = ws.query(
        "SELECT component, count(*) FILTER (WHERE decontam IS DISTINCT FROM 'dropped'), "
        "sum(tokens) FILTER (WHERE decontam IS DISTINCT FROM 'dropped'), "
        "count(DISTINCT doc_id) FILTER (WHERE decontam IS DISTINCT FROM 'dropped'), max(copy) + 1, "
        "list(DISTINCT corpus ORDER BY corpus) FROM mix_members WHERE mix_id = ? AND split = 'train' "
        "GROUP BY component", [mix_id])
    got = {r[0]: r[1:] for r in comp_rows}
    train_documents = sum(int(v[0]) for v in got.values())
    train_tokens = sum(int(v[1] or 0) for v in got.values())
    components: dict[str, dict[str, Any]] = {}
    for cp in plan.components:
        docs, tokens, unique, copies, corpora = got.get(cp.name, (0, 0, 0, 0, []))
        components[cp.name] = {
            "source": cp.source, "role": cp.role, "corpora": list(corpora), "share_requested": round(cp.share, 6),
            "share_exported": round(int(tokens or 0) / train_tokens, 6) if train_tokens else 0.0,
            "requested_tokens": cp.requested_tokens, "planned_tokens": cp.planned_tokens,
            "available_tokens": cp.available_tokens, "available_documents": cp.available_documents,
            "tokens": int(tokens or 0), "documents": int(docs), "unique_documents": int(unique),
            "repeats": round(cp.repeats, 4), "max_copies": int(copies or 0), "max_repeats": cp.max_repeats,
            "short": cp.short, "claimed_by_earlier_component": cp.claimed_elsewhere,
            "benchmark_copies_excluded": cp.benchmark_copies}
    if screening is not None:
        _warn_if_off_target(plan, screening, components, train_tokens)
    validation = {split: {"documents": int(n), "tokens": int(t or 0)} for split, n, t in ws.query(
        "SELECT split, count(*) FILTER (WHERE decontam IS DISTINCT FROM 'dropped'), "
        "sum(tokens) FILTER (WHERE decontam IS DISTINCT FROM 'dropped') FROM mix_members "
        "WHERE mix_id = ? AND split <> 'train' GROUP BY split ORDER BY split", [mix_id])}
    window = _window_check(ws, mix_id, recipe)

    item_corpus = {}
    if decontam["items"]:
        ws.con.register("mix_items", pa.table({"doc_id": list(decontam["items"])}))
        item_corpus = dict(ws.query("SELECT d.doc_id, d.corpus FROM documents d JOIN mix_items USING (doc_id)"))
        ws.con.unregister("mix_items")
    by_benchmark = Counter()
    for item, n in decontam["items"].items():
        by_benchmark[item_corpus.get(item, "unknown")] += n
    decontam_summary = {
        "enabled": decontam["enabled"], "config": recipe.decontam, "checked_documents": decontam["checked_documents"],
        "dropped_documents": decontam["dropped_documents"], "cut_documents": decontam["cut_documents"],
        "removed_chars": decontam["removed_chars"], "dropped_tokens": decontam["dropped_tokens"],
        "by_component": dict(sorted(decontam["by_component"].items())),
        "benchmark_items_matched": len(decontam["items"]), "item_matches_by_benchmark": dict(sorted(by_benchmark.items())),
        "top_items": [{"item": k, "documents": n} for k, n in
                      sorted(decontam["items"].items(), key=lambda kv: (-kv[1], kv[0]))[:20]],
        "examples": decontam["examples"], "sft_records_skipped": dict(sft_skipped),
        "refill": {"rounds": screening.rounds if screening else 0,
                   "screened_documents": screening.screened_documents if screening else 0,
                   "refilled_tokens": screening.refilled_tokens if screening else 0}}

    source_corpora = sorted({c for comp in components.values() for c in comp["corpora"]} |
                            {r[0] for r in ws.query("SELECT DISTINCT corpus FROM mix_members WHERE mix_id = ?",
                                                    [mix_id])})
    filtering = ws.query(
        """
        SELECT r.run_id, r.step, r.params, count(*) AS dropped
        FROM active_drops x JOIN runs r USING (run_id) JOIN documents d ON d.doc_id = x.doc_id
        WHERE d.corpus IN (SELECT unnest(?)) GROUP BY ALL ORDER BY r.run_id
        """, [source_corpora])
    ingest_runs = ws.query("SELECT corpus, list(DISTINCT run_id ORDER BY run_id) FROM documents "
                           "WHERE corpus IN (SELECT unnest(?)) GROUP BY corpus ORDER BY corpus", [source_corpora])
    manifest = {
        "format": MANIFEST_FORMAT, "name": recipe.name, "seed": recipe.seed, "recipe": recipe_to_dict(recipe),
        "tokenizer": ws.tokenizer_name,
        "budget": {"requested_tokens": plan.requested_tokens, "planned_tokens": plan.planned_tokens,
                   "scale": plan.scale, "on_short": recipe.on_short, "exported_tokens": train_tokens,
                   "exported_documents": train_documents},
        "warnings": plan.warnings, "phase_targets": plan.phase_targets, "components": components,
        "validation": validation, "window": window, "decontamination": decontam_summary,
        "source_corpora": source_corpora,
        "filtering_runs": [{"run_id": r[0], "step": r[1], "params": json.loads(r[2]) if r[2] else {},
                            "documents_dropped_in_sources": int(r[3])} for r in filtering],
        "ingest_runs": {corpus: runs for corpus, runs in ingest_runs},
        "document_ids": {"file": "members.parquet", "rows": members_rows,
                         "columns": ["split", "position", "doc_id", "component", "phase", "copy", "corpus",
                                     "tokens", "decontam", "removed_chars"]},
        "files": {key: {"file": Path(f.path).name, "rows": f.rows, "bytes": f.bytes, "sha256": f.sha256}
                  for key, f in sorted(files.items())},
        # Everything above is the same for the same recipe, seed and workspace; this block is not.
        "run": {"run_id": mix_id, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "code_version": code_version(), "workspace": str(ws.path), "export_dir": str(final)},
    }
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n",
                             encoding="utf-8")
    files["manifest.json"] = ExportedFile(str(final / "manifest.json"), 1, manifest_path.stat().st_size,
                                          file_sha256(manifest_path))
    return MixResult(run_id=mix_id, name=recipe.name, out_dir=str(final), plan=plan,
                     train_documents=train_documents, train_tokens=train_tokens, components=components,
                     validation=validation, decontamination=decontam_summary, window=window, files=files,
                     manifest=str(final / "manifest.json"))


# --- finding mixes ---------------------------------------------------------------------------------------------
MIX_COLUMNS = ("mix_id", "name", "export_dir", "train_documents", "train_tokens", "seed", "ended_at")


def recent_mixes(ws: Workspace, name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """Successful mixes (of `name`), newest first, `limit` at most."""
    sql = ("SELECT m.mix_id, m.name, m.export_dir, m.train_documents, m.train_tokens, m.seed, r.ended_at "
           "FROM mixes m JOIN runs r ON r.run_id = m.mix_id WHERE r.status = 'ok'"
           + (" AND m.name = ?" if name else "") + " ORDER BY r.ended_at DESC LIMIT ?")
    rows = ws.query(sql, ([name] if name else []) + [limit])
    return [dict(zip(MIX_COLUMNS, row, strict=True)) for row in rows]


def latest_mix(ws: Workspace, name: str | None = None) -> dict[str, Any] | None:
    """The newest successful mix (of `name`), as the report and training steps look it up."""
    mixes = recent_mixes(ws, name, limit=1)
    return mixes[0] if mixes else None


def mixable_corpora(ws: Workspace):  # -> pandas.DataFrame
    """Every corpus a mix may draw from (benchmarks never enter one): name, role and current documents."""
    scope, params = scope_sql(ws, None)
    return ws.df(f"SELECT c.name, c.role, count(d.doc_id) AS documents FROM corpora c "
                 f"LEFT JOIN ({scope}) d ON d.corpus = c.name WHERE c.role <> 'benchmark' "
                 f"GROUP BY ALL ORDER BY c.role, c.name", params)


@dataclass
class PresetMixConfig:
    """A mix from a preset, as a recipe asks for it; any other MixRecipe field (seed, ...) is an override."""

    preset: str = param("MIP 80/10/10", choices=tuple(PRESETS), help="the preset's shares of the roles")
    total_tokens: int = param(1_000_000, minimum=1, help="training tokens the mix holds")
    mix_name: str = param("demo-mix", help="the mix's name (`name` is the step's own key in a recipe)")
    validation: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict, metadata={"recipe": False})

    def recipe(self) -> MixRecipe:
        return preset_recipe(self.preset, self.total_tokens, name=self.mix_name,
                             validation=ValidationConfig(**self.validation), **self.overrides)

    def validate(self) -> None:
        validate_fields(self)
        self.recipe()


def run_preset_mix(ws: Workspace, cfg: PresetMixConfig, progress: Progress = no_progress) -> MixResult:
    """The mix step of a recipe: the preset's recipe saved among the workspace's recipes, then built."""
    recipe = cfg.recipe()
    save_recipe(recipe, recipes_folder(ws) / f"{recipe.name}.toml")
    return build_mix(ws, recipe, progress=progress)


def _recipe_configs(table: dict[str, Any]) -> dict[None, PresetMixConfig]:
    own = set(recipe_keys(PresetMixConfig))
    overrides = {k: v for k, v in table.items() if k not in own and k != "name"}
    unknown = sorted(set(overrides) - {f.name for f in fields(MixRecipe)} - {"name", "components"})
    if unknown:
        raise ValueError(f"step mix: unknown keys {unknown}")
    config = config_from_recipe(PresetMixConfig, {k: v for k, v in table.items() if k in own}, step="mix")
    config.overrides = overrides
    return {None: config}


REGISTERED_STEP = Step("mix", PresetMixConfig, run_preset_mix, recipe_configs=_recipe_configs,
            summary=lambda r: {"run_id": r.run_id, "out_dir": r.out_dir, "train_documents": r.train_documents,
                               "train_tokens": r.train_tokens,
                               "decontam_dropped": r.decontamination["dropped_documents"],
                               "decontam_cut": r.decontamination["cut_documents"]})
