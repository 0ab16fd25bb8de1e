"""One contract for every step, and the registry that names them.

A step is a config dataclass whose fields say everything about a parameter once — type, default, help, bounds,
choices, CLI flag — through `param(...)`; a `run(workspace, config, progress) -> result` whose result has
`to_dict()`; and a `Step` entry in `REGISTRY`. From the config's fields alone come:

- the options of `studio <command>` (`add_config_arguments`, `config_from_args`),
- the argument list a page launches as a job (`job_argv`),
- the keys the demo recipe's `[[step]]` table may hold (`config_from_recipe`),
- the bounds and choices checked by `validate_fields` (a config's `validate()` calls it, then adds its own rules).

How to add a step (here `shuffle`, in `core/shuffle.py`):

    @dataclass
    class ShuffleConfig:
        seed: int = param(0, help="random seed", minimum=0)
        def validate(self) -> None: validate_fields(self)

    def run_shuffle(ws, config, progress=no_progress) -> ShuffleResult: ...   # ShuffleResult.to_dict()
    REGISTERED_STEP = Step("shuffle", ShuffleConfig, run_shuffle, command="shuffle")

and add `"shuffle": "core.shuffle:REGISTERED_STEP"` to `REGISTRY`. `studio shuffle WORKSPACE --seed 3`, the recipe's
`[[step]] name = "shuffle"  seed = 3` and a page's `job_argv("shuffle", ShuffleConfig(seed=3))` then all work;
a new field is one more `param(...)` line.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from core.progress import Progress

# step name -> "module:attribute" of its `Step`; imported only when asked for (the CLI and demo stay quick to load).
REGISTRY: dict[str, str | Step] = {
    "tokens": "core.tokens:REGISTERED_STEP",
    "dedup": "core.dedup:REGISTERED_STEP",
    "quality": "core.quality:REGISTERED_STEP",
    "terms": "core.terms:REGISTERED_STEP",
    "recall": "core.recall:REGISTERED_STEP",
    "decontam": "core.decontam:REGISTERED_STEP",
    "mix": "core.mix:REGISTERED_STEP",
    "train": "core.train.launch:REGISTERED_STEP",
    "evaluate": "core.evaluate.evaluation:REGISTERED_STEP",
    "report": "core.report:REGISTERED_STEP",
}


@dataclass(frozen=True)
class Step:
    """A registered step. `kind` is "curation" (writes the workspace while it runs, so one at a time) or "job"
    (train / evaluate / report: a process that writes only its own folder while it runs)."""

    name: str
    config: type
    run: Callable[..., Any]  # (workspace, config, progress) -> result with to_dict()
    command: str | None = None  # `studio <command>` whose options come from `config`
    kind: str = "curation"
    # A recipe table that holds more than one config (dedup's `methods` with a table per method): table -> a
    # config per label, the label naming its counts in the demo's output.
    recipe_configs: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    # The counts the demo prints for one result (default: the result's to_dict()).
    summary: Callable[[Any], dict[str, Any]] | None = None

    @property
    def writes_workspace(self) -> bool:
        return self.kind == "curation"

    def configs_from_recipe(self, table: dict[str, Any]) -> dict[str | None, Any]:
        """The configs a recipe's `[[step]]` table describes: {None: config}, or one per label."""
        if self.recipe_configs is not None:
            return dict(self.recipe_configs(table))
        return {None: config_from_recipe(self.config, table, step=self.name)}

    def summarise(self, result: Any) -> dict[str, Any]:
        return self.summary(result) if self.summary is not None else result.to_dict()


def register_step(step: Step) -> Step:
    """Add (or replace) a step in the registry: how tests and plug-ins add one."""
    REGISTRY[step.name] = step
    return step


def get_step(name: str) -> Step:
    entry = REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown step {name!r} (known: {', '.join(REGISTRY)})")
    if isinstance(entry, str):
        module, attribute = entry.split(":")
        entry = getattr(importlib.import_module(module), attribute)
        REGISTRY[name] = entry
    return entry


def step_for_command(command: str) -> Step | None:
    """The registered step whose `studio` command is `command` (imports the registry's modules)."""
    for name in list(REGISTRY):
        step = get_step(name)
        if step.command == command:
            return step
    return None


# --- a parameter, defined once ------------------------------------------------------------------------------------
def param(default: Any = MISSING, *, help: str, flag: str | None = None, aliases: Sequence[str] = (),
          choices: Sequence[Any] | None = None, minimum: float | None = None, maximum: float | None = None,
          repeat: bool = False, negate: str | None = None, group: str | None = None, metavar: str | None = None,
          required: bool = False, cli: bool = True, recipe: bool = True, show_default: bool = True,
          positional: bool = False, always: bool = False, parse: Callable[[Any], Any] | None = None,
          render: Callable[[Any], str | list[str]] | None = None,
          default_factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its help, bounds and CLI spelling.

    flag: the option's name when it is not `--field-name`; aliases: more names for it; repeat: a list given as a
    repeated option (else comma-separated); negate: for a bool that defaults to true, the flag that turns it off
    (`--keep-case` for `casefold`); group: the `--help` section; cli / recipe: whether the field is an option /
    a recipe key at all; positional: a list given as the command's positional arguments (`studio ingest WS
    FILE...`); always: `job_argv` writes it even at its default (a command line that names what it applies);
    parse / render: for a field whose CLI form is text of its own (`--threshold RULE=VALUE` for a
    dict), the CLI text (a list of them with `repeat`) -> the value, and the value -> the CLI text (a list with
    `repeat`); a nested config dataclass field contributes its own fields."""
    metadata = {"help": help, "flag": flag, "aliases": tuple(aliases), "choices": tuple(choices) if choices else None,
                "minimum": minimum, "maximum": maximum, "repeat": repeat, "negate": negate, "group": group,
                "metavar": metavar, "required": required, "cli": cli, "recipe": recipe,
                "show_default": show_default, "positional": positional, "always": always, "parse": parse,
                "render": render}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Param:
    """A config field as the CLI, the pages and the recipe see it."""

    name: str  # the field's name: the recipe key and the argparse dest (dotted for a nested config's field)
    type: Any
    default: Any
    meta: dict[str, Any]

    @property
    def flag(self) -> str:
        return self.meta.get("negate") or self.meta.get("flag") or "--" + self.name.split(".")[-1].replace("_", "-")

    @property
    def is_bool(self) -> bool:
        return self.type is bool

    @property
    def is_list(self) -> bool:
        return typing.get_origin(self.type) in (list, tuple, Sequence, typing.Sequence) or self.type in (list, tuple)

    @property
    def scalar_type(self) -> type:
        if self.is_list:
            args = typing.get_args(self.type)
            return args[0] if args and isinstance(args[0], type) else str
        return self.type if isinstance(self.type, type) else str


def _resolved_hints(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out = {}
    for name, hint in hints.items():
        # `int | None` -> int: None is the "not given" default, not a type of its own
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            hint = args[0] if len(args) == 1 else hint
        out[name] = hint
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def params_of(cls: type, prefix: str = "") -> list[Param]:
    """The config's fields declared with `param`, in order; a nested config dataclass contributes its own."""
    hints = _resolved_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name, f.type)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            out += params_of(hint, prefix=f"{prefix}{f.name}.")
            continue
        if "help" not in f.metadata:
            continue
        out.append(Param(prefix + f.name, hint, _default(f), dict(f.metadata)))
    return out


def field_default(cls: type, name: str) -> Any:
    """A field's default, for a page widget's initial value (so no page repeats it)."""
    return next(p.default for p in params_of(cls) if p.name == name)


def param_info(cls: type, name: str) -> Param:
    return next(p for p in params_of(cls) if p.name == name)


# --- bounds ---------------------------------------------------------------------------------------------------
def validate_fields(config: Any) -> None:
    """Every field's choices and bounds; one-line ValueErrors naming the field."""
    for p in params_of(type(config)):
        value = _get(config, p.name)
        if value is None:
            continue
        values = list(value) if p.is_list else [value]
        for v in values:
            if p.meta.get("choices") and v not in p.meta["choices"]:
                raise ValueError(f"{p.name} must be one of {', '.join(map(str, p.meta['choices']))}, not {v!r}")
            if p.meta.get("minimum") is not None and v < p.meta["minimum"]:
                raise ValueError(f"{p.name} must be at least {p.meta['minimum']:g}, not {v}")
            if p.meta.get("maximum") is not None and v > p.meta["maximum"]:
                raise ValueError(f"{p.name} must be at most {p.meta['maximum']:g}, not {v}")


def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


# --- the command line -----------------------------------------------------------------------------------------
def comma_list(value: str | None) -> list[str]:
    """`a, b,,c` -> ['a', 'b', 'c']: the form of every comma-separated option."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _help(p: Param) -> str:
    text = p.meta["help"]
    default = p.default
    if (p.meta.get("show_default") and not p.is_bool and not p.meta.get("required") and default not in (None, MISSING, "", (), [])
            and "default" not in text):
        shown = ",".join(map(str, default)) if p.is_list else default
        text += f" (default {shown})"
    return text.replace("%", "%%")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: Sequence[str] = ()) -> None:
    """One option per CLI field of the config, named, typed, bounded and explained by its `param`."""
    groups: dict[str, Any] = {}
    for p in params_of(cls):
        if not p.meta.get("cli", True) or p.name in skip:
            continue
        group = p.meta.get("group")
        target = groups.setdefault(group, parser.add_argument_group(group)) if group else parser
        if p.meta.get("positional"):  # its dest is its name; argparse takes no dest= for a positional
            target.add_argument(p.name, nargs="+" if p.meta.get("required") else "*", help=_help(p),
                                **({"metavar": p.meta["metavar"]} if p.meta.get("metavar") else {}))
            continue
        names = [p.flag, *p.meta.get("aliases", ())]
        kwargs: dict[str, Any] = {"dest": p.name, "help": _help(p)}
        if p.meta.get("parse"):  # text of its own, read by `parse` in config_from_args
            kwargs.update(default=None, metavar=p.meta.get("metavar") or p.flag.lstrip("-").replace("-", "_").upper())
            if p.meta.get("repeat"):
                kwargs["action"] = "append"
            target.add_argument(*names, **kwargs)
            continue
        if p.is_bool:
            kwargs["action"] = "store_false" if p.meta.get("negate") else "store_true"
            kwargs["default"] = p.default
        else:
            kwargs["default"] = None if p.default is MISSING else p.default
            if p.meta.get("required"):
                kwargs["required"] = True
                kwargs.pop("default")
            if p.meta.get("choices"):
                kwargs["choices"] = p.meta["choices"]
            if not p.meta.get("choices"):  # named after the flag, as argparse would, not after the field
                kwargs["metavar"] = p.meta.get("metavar") or p.flag.lstrip("-").replace("-", "_").upper()
            if p.is_list and p.meta.get("repeat"):
                kwargs["action"] = "append"
                kwargs["type"] = p.scalar_type
                kwargs["default"] = None  # argparse appends to a given default: apply it after parsing
            elif p.is_list:
                kwargs["type"] = comma_list
                kwargs["default"] = None  # argparse appends to a given default: apply it after parsing
                if kwargs.get("choices"):  # each item is checked by validate_fields
                    kwargs.pop("choices")
            else:
                kwargs["type"] = p.scalar_type
        target.add_argument(*names, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The config the parsed options describe; options not given keep the field's default; `fixed` values
    (dotted for a nested config's field: `**{"scoring.model": ""}`) win over the options."""
    values: dict[str, Any] = {}
    for p in params_of(cls):
        if not p.meta.get("cli", True) or not hasattr(args, p.name):
            continue
        value = getattr(args, p.name)
        if value is None and (p.is_list or p.meta.get("parse")):
            continue
        if p.meta.get("parse"):
            value = p.meta["parse"](value)
        _put(values, p.name, value)
    for name, value in fixed.items():
        _put(values, name, value)
    return _build(cls, values)


def _put(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        values = values.setdefault(part, {})
    values[last] = value


def _build(cls: type, values: dict[str, Any]) -> Any:
    hints = _resolved_hints(cls)
    kwargs = {}
    for key, value in values.items():
        hint = hints.get(key)
        if isinstance(value, dict) and dataclasses.is_dataclass(hint):
            value = _build(hint, value)
        kwargs[key] = value
    return cls(**kwargs)


def job_argv(step: str | Step, config: Any) -> list[str]:
    """`[command, options...]` that makes `studio` run the step with this config: the argument list a page
    launches as a job. Required options always, others only where they differ from the field's default."""
    step = get_step(step) if isinstance(step, str) else step
    if step.command is None:
        raise ValueError(f"step {step.name} has no studio command")
    return [step.command, *config_argv(config)]


def config_argv(config: Any, skip: Sequence[str] = ()) -> list[str]:
    """The CLI words that give a command built with `add_config_arguments(parser, type(config), skip)` this
    config: positional values first, then the options that differ from their defaults (for `studio eval`, which
    is no registered step: `["eval", *config_argv(EvalConfig(...))]`)."""
    argv: list[str] = []
    options: list[str] = []
    for p in params_of(type(config)):
        if not p.meta.get("cli", True) or p.name in skip:
            continue
        value = _get(config, p.name)
        if p.meta.get("positional"):  # right after the command: `studio ingest WORKSPACE FILE... --options`
            argv += [_format(v) for v in value or []]
            continue
        options += _option_argv(p, value)
    return argv + options


def _option_argv(p: Param, value: Any) -> list[str]:
    """The CLI words that give one option `value`: none where it is the field's default."""
    argv: list[str] = []
    default = None if p.default is MISSING else p.default
    if p.is_list:
        value, default = list(value or []), list(default or [])
    if value == default and not (p.meta.get("required") or p.meta.get("always")):
        return argv
    if p.meta.get("render") and value is not None:
        rendered = p.meta["render"](value)
        for text in (rendered if p.meta.get("repeat") else [rendered]):
            argv += [p.flag, text]
    elif p.is_bool:
        if value != default:
            argv.append(p.flag)  # differs from the default: the flag flips it
    elif value is None:
        pass
    elif p.is_list and p.meta.get("repeat"):
        for item in value:
            argv += [p.flag, _format(item)]
    elif p.is_list:
        argv += [p.flag, ",".join(map(_format, value))]
    else:
        argv += [p.flag, _format(value)]
    return argv


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- the demo recipe ------------------------------------------------------------------------------------------
def recipe_keys(cls: type) -> list[str]:
    """The keys a recipe table of this config may hold: its fields (a nested config is one table key)."""
    keys = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("recipe", True):
            keys.append(f.name)
    return keys


def config_from_recipe(cls: type, table: dict[str, Any], step: str = "") -> Any:
    """The config a recipe's `[[step]]` table describes; a key that is not a field is an error, not ignored."""
    allowed = set(recipe_keys(cls))
    unknown = sorted(set(table) - allowed - {"name"})
    if unknown:
        raise ValueError(f"step {step or cls.__name__}: unknown keys {unknown} (known: {', '.join(sorted(allowed))})")
    return _build(cls, {k: v for k, v in table.items() if k != "name"})


def split_recipe(table: dict[str, Any], *classes: type, step: str, shared: Sequence[str] = ()) -> list[Any]:
    """One recipe table read into several configs (a step that scores, then filters): each key goes to the config
    that has it as a field (`shared` keys to every config that has them); a key no config has is an error."""
    table = {k: v for k, v in table.items() if k != "name"}
    known = [set(recipe_keys(cls)) for cls in classes]
    unknown = sorted(set(table) - set().union(*known))
    if unknown:
        raise ValueError(f"step {step}: unknown keys {unknown} (known: {', '.join(sorted(set().union(*known)))})")
    out, taken = [], set()
    for cls, keys in zip(classes, known, strict=True):
        mine = {k: v for k, v in table.items() if k in keys and (k in shared or k not in taken)}
        taken |= set(mine)
        out.append(_build(cls, mine))
    return out


@dataclass
class ScoredAndFiltered:
    """What a step that scores, then filters returns (quality, terminology)."""

    score: Any
    filter: Any

    def to_dict(self) -> dict[str, Any]:
        return {"score": as_dict(self.score), "filter": as_dict(self.filter)}


def as_dict(result: Any) -> dict[str, Any]:
    return result.to_dict() if hasattr(result, "to_dict") else dataclasses.asdict(result)


def score_then_filter(score: Callable[..., Any], apply: Callable[..., Any],
                      score_share: float = 0.9) -> Callable[..., ScoredAndFiltered]:
    """The run of a step whose config holds `score` and `filter` configs: score, then apply the filter."""
    def run(ws: Any, config: Any, progress: Progress) -> ScoredAndFiltered:
        scored = score(ws, config.score, lambda f, m: progress(score_share * max(f, 0.0), m))
        filtered = apply(ws, config.filter, lambda f, m: progress(score_share + (1 - score_share) * max(f, 0.0), m))
        return ScoredAndFiltered(scored, filtered)

    return run


def run_step(ws: Any, name: str, config: Any, progress: Progress) -> Any:
    step = get_step(name)
    if hasattr(config, "validate"):
        config.validate()
    return step.run(ws, config, progress)
