"""The mix's recipe: components (what each draws from, its share in tokens), curriculum phases, validation sets
and export settings; read from and written to hand-editable TOML, or made from a preset. `core.mix` says how a
recipe becomes a mix."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from core.workspace import Workspace

DRAWABLE_ROLES = ("domain", "general", "instruction")
SOURCES = ("corpora", "recalled", "control")
ON_SHORT = ("shrink", "allow", "error")
INTERLEAVE = ("tokens", "documents")
INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "none")
EXPORT_FORMATS = ("jsonl", "parquet")

# Presets from common practice (domain : general replay, and instruction data mixed into pretraining).
PRESETS: dict[str, dict[str, float]] = {
    "domain:general 1:5": {"domain": 1 / 6, "general": 5 / 6},
    "domain:general 70:30": {"domain": 0.7, "general": 0.3},
    "domain:general 80:20": {"domain": 0.8, "general": 0.2},
    "MIP 80/10/10": {"domain": 0.8, "instruction": 0.1, "general": 0.1},
}



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
                  domain_source: str = "corpora", source_share: float = 1.0, **overrides: Any) -> MixRecipe:
    """The preset's shares of the roles as components. With `domain_source` "recalled" or "control", the part
    `source_share` of the domain share is drawn from the recall step's set (eval-driven) or its random control (same
    size and length profile) by a component named after it, listed first so it claims that set whole, whatever
    the role of its corpora (the control is drawn from every corpus of the recall pool, so only the whole set keeps
    the two comparable). The `domain` component keeps the rest and stays even at share 0: the domain validation set
    is carved from every domain corpus either way, so an eval-driven mix and its control hold out the same text."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")
    if domain_source not in SOURCES:
        raise ValueError(f"domain_source must be one of {', '.join(SOURCES)}, not {domain_source!r}")
    if not 0.0 <= source_share <= 1.0:
        raise ValueError(f"source_share must be between 0 and 1, not {source_share}")
    components = []
    for role, share in PRESETS[preset].items():
        if role == "domain" and domain_source != "corpora":
            components.append(Component(name=domain_source, share=share * source_share, source=domain_source))
            share *= 1.0 - source_share
        components.append(Component(name=role, share=share))
    recipe = MixRecipe(name=name, seed=seed, total_tokens=total_tokens, components=components, **overrides)
    recipe.validate()
    return recipe


def recipes_folder(ws: Workspace) -> Path:
    return ws.artifacts / "recipes"


def exports_folder(ws: Workspace) -> Path:
    return ws.artifacts / "exports"
