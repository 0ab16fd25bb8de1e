"""`studio <step>` for every registered step that no hand-written command module covers: options from its
config's fields (`core.steps`), the result's `to_dict()` as the --json object."""

from __future__ import annotations

import argparse
import json

from core.steps import REGISTRY, Step, add_config_arguments, config_from_args, get_step
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments


def step_command_parser(sub: argparse._SubParsersAction, step: Step, help: str = "",
                        description: str | None = None) -> argparse.ArgumentParser:
    """The subparser of a step's `studio` command: the workspace arguments and one option per config field."""
    parser = sub.add_parser(step.command, help=help or f"run the {step.name} step", description=description)
    add_workspace_arguments(parser)
    add_config_arguments(parser, step.config)
    return parser


def register(sub: argparse._SubParsersAction) -> None:
    for name in list(REGISTRY):
        step = get_step(name)
        if step.command and step.command not in sub.choices:
            p = step_command_parser(sub, step, help=(step.config.__doc__ or "").strip().split("\n")[0])
            p.set_defaults(handler=step_command, registered_step=step)


def step_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    step = args.registered_step
    config = config_from_args(step.config, args)
    if hasattr(config, "validate"):
        config.validate()
    with Workspace.open(args.workspace, create=False) as ws:
        result = step.run(ws, config, report)
    data = result.to_dict()
    return CommandResult(data, [f"{step.name}: {json.dumps(step.summarise(result), default=str)}"])
