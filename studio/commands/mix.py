"""`studio mix`: build the training mix of a recipe and export it (or, with --plan, only do the accounting)."""

from __future__ import annotations

import argparse

from core.mix import (
    PRESETS,
    MixExportConfig,
    PresetMixConfig,
    build_mix,
    load_recipe,
    plan_mix,
    save_recipe,
)
from core.steps import add_config_arguments, config_from_args
from core.workspace import Workspace
from studio.cli import CommandResult, Reporter, add_workspace_arguments

# PresetMixConfig's fields that `--write-preset NAME` and `--tokens N` give (the recipe file names the mix)
PRESET_OWN_OPTIONS = ("preset", "total_tokens", "mix_name")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "mix", help="build a training mix from a recipe (shares in tokens) and export it for trainers",
        description="Sample the recipe's components from the current (filtered) workspace, interleave them, "
                    "carve out validation sets, decontaminate against the benchmarks and export JSONL, Parquet, "
                    "alpaca/sharegpt, LLaMA-Factory dataset_info.json and a manifest.")
    add_workspace_arguments(p)
    add_config_arguments(p, MixExportConfig)
    # the command's other modes: accounting only, or writing a starting recipe
    p.add_argument("--plan", action="store_true",
                   help="only show the accounting (available versus requested tokens); export nothing")
    p.add_argument("--write-preset", metavar="NAME", choices=list(PRESETS),
                   help=f"write a preset recipe to --recipe FILE and stop ({'; '.join(PRESETS)})")
    p.add_argument("--tokens", type=int, default=1_000_000, help="token budget for --write-preset")
    # the preset step's own fields (where the domain text comes from), as the demo recipe's mix step reads them
    add_config_arguments(p, PresetMixConfig, skip=PRESET_OWN_OPTIONS)
    p.set_defaults(handler=mix_command)


def _plan_lines(plan) -> list[str]:
    lines = [f"{'component':16} {'share':>6} {'requested':>12} {'available':>12} {'planned':>12} {'repeats':>8}"]
    for c in plan.components:
        flag = "  SHORT" if c.short else ""
        lines.append(f"{c.name[:16]:16} {c.share:6.1%} {c.requested_tokens:>12,} {c.available_tokens:>12,} "
                     f"{c.planned_tokens:>12,} {c.repeats:>7.2f}x{flag}")
    for split, v in plan.validation.items():
        lines.append(f"{split}: {v['documents']:,} documents, {v['tokens']:,} tokens (held out)")
    lines += [f"warning: {w}" for w in plan.warnings]
    return lines


def mix_command(args: argparse.Namespace, report: Reporter) -> CommandResult:
    cfg = config_from_args(MixExportConfig, args)
    cfg.validate()
    preset = config_from_args(PresetMixConfig, args, preset=args.write_preset or PresetMixConfig.preset,
                              total_tokens=args.tokens, mix_name="mix")
    if args.write_preset:
        preset.validate()
        path = save_recipe(preset.recipe(), cfg.recipe)
        source = f", domain text from {preset.domain_source}" if preset.domain_source != "corpora" else ""
        return CommandResult({"recipe": str(path), "preset": args.write_preset, "domain_source": preset.domain_source,
                              "source_share": preset.source_share},
                             [f"wrote preset {args.write_preset!r} ({args.tokens:,} tokens{source}) to {path}"])
    if (preset.domain_source, preset.source_share) != (PresetMixConfig.domain_source, PresetMixConfig.source_share):
        raise ValueError("--domain-source and --source-share shape a preset: give them with --write-preset NAME")
    recipe = load_recipe(cfg.recipe)
    if args.plan:
        with Workspace.open(args.workspace, create=False, read_only=True) as ws:
            plan = plan_mix(ws, recipe)
        return CommandResult({"plan": plan.to_dict()}, _plan_lines(plan))
    with Workspace.open(args.workspace, create=False, wait_s=60.0) as ws:
        result = build_mix(ws, recipe, cfg.out, report, memory_limit=cfg.memory_limit)
    d = result.decontamination
    lines = _plan_lines(result.plan) + [
        "",
        f"mix {result.name}: {result.train_documents:,} documents, {result.train_tokens:,} tokens "
        f"(run {result.run_id})",
        *(f"  {name:16} {c['tokens']:>12,} tokens ({c['share_exported']:.1%}), {c['documents']:,} documents, "
          f"{c['unique_documents']:,} unique" for name, c in result.components.items()),
        f"decontamination: {d['dropped_documents']:,} dropped, {d['cut_documents']:,} cut, "
        f"{d['benchmark_items_matched']:,} benchmark items matched" if d["enabled"] else "decontamination: off",
        f"windows of {result.window['size']} documents: largest token-share deviation "
        f"{result.window['max_share_deviation']:.3f}, mean {result.window['mean_share_deviation']:.3f}",
        f"exported to {result.out_dir}",
    ]
    return CommandResult(result.to_dict(), lines)
