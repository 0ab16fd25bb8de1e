"""The `studio` command: every step of the studio, headless.

Each subcommand lives in a module of `studio/commands/` that exposes `register(subparsers)`; a command's
handler takes the parsed arguments and a `Reporter` and returns a `CommandResult`. `main` turns that into a
human summary or, with `--json`, one JSON object on stdout, and turns any `StudioError` into a one-line reason
on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.models import ModelUnavailable
from core.readers import SourceError
from core.workspace import WorkspaceError

# Order here is the order of `studio --help`.
COMMAND_MODULES = [
    "studio.commands.workspace",
    "studio.commands.ingest",
    "studio.commands.dedup",
    "studio.commands.quality",
    "studio.commands.terms",
    "studio.commands.recall",
    "studio.commands.mix",
    "studio.commands.evaluate",
    "studio.commands.app",
]

USER_ERRORS = (WorkspaceError, SourceError, ModelUnavailable, FileNotFoundError, ValueError)


@dataclass
class CommandResult:
    """What a command did: `data` is the --json object, `summary` the human lines."""

    data: dict[str, Any]
    summary: list[str] = field(default_factory=list)
    exit_code: int = 0


class Reporter:
    """Progress for a command: a bar on stderr for people, JSON lines in a file for the app's job panel."""

    def __init__(self, quiet: bool, progress_file: str | None) -> None:
        self.quiet = quiet or not sys.stderr.isatty()
        self.file = open(progress_file, "a", buffering=1, encoding="utf-8") if progress_file else None  # noqa: SIM115
        self._last_draw = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        if self.file:
            self.file.write(json.dumps({"t": time.time(), "fraction": fraction, "message": message}) + "\n")
        if self.quiet:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.1 and 0 <= fraction < 1:
            return
        self._last_draw = now
        if fraction < 0:
            bar = "working"
        else:
            filled = int(30 * min(fraction, 1.0))
            bar = f"[{'#' * filled}{'.' * (30 - filled)}] {100 * min(fraction, 1.0):5.1f}%"
        sys.stderr.write(f"\r\033[K{bar} {message[:80]}")
        if fraction >= 1:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if not self.quiet:
            sys.stderr.write("\r\033[K")
        if self.file:
            self.file.close()


Handler = Callable[[argparse.Namespace, Reporter], CommandResult]


def comma_list(value: str | None) -> list[str]:
    """`a, b,,c` -> ['a', 'b', 'c']: the form of every comma-separated option."""
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def add_workspace_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments every subcommand takes: the workspace and the output mode."""
    parser.add_argument("workspace", type=Path, help="workspace folder (holds studio.duckdb and artifacts/)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--progress-file", help=argparse.SUPPRESS)  # JSON-lines progress for the app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studio", description="Curate domain-adaptation training data for language models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def format_summary(result: CommandResult) -> str:
    return "\n".join(result.summary) if result.summary else json.dumps(result.data, indent=2, default=str)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    reporter = Reporter(quiet=getattr(args, "json", False), progress_file=getattr(args, "progress_file", None))
    try:
        result: CommandResult = args.handler(args, reporter)
    except USER_ERRORS as exc:
        reporter.close()
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}))
        print(f"studio {args.command}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        reporter.close()
        print(f"studio {args.command}: interrupted; the step's unfinished work was rolled back", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one line for people, the trace for the log file
        reporter.close()
        if getattr(args, "progress_file", None):
            traceback.print_exc()
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}))
        print(f"studio {args.command}: failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1
    reporter.close()
    if getattr(args, "json", False):
        print(json.dumps({"ok": result.exit_code == 0, **result.data}, default=str))
    else:
        print(format_summary(result))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
