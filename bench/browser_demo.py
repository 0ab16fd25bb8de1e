"""A real-browser check of the demo workspace (headless Chromium): on the Train page, a short CPT job on the demo
mix is launched from the form, watched live, the page closed and opened again (it re-attaches), stopped, resumed
and finished; on the Report page, the demo's report is shown and its HTML downloaded and opened offline with every
section visible and no network request. Screenshots go to --screens.

    python bench/browser_demo.py WORKSPACE [--screens DIR] [--steps 12]

WORKSPACE is one `studio demo` built (its mix `demo-mip` and its report `artifacts/reports/demo.html`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

from browser_walk import (  # noqa: E402
    check_report_offline,
    download_report,
    launch_chromium,
    open_app,
    start_app,
    stop_app,
    train_walk,
)


def full_page_snap(screens: Path):
    def snap(page, name: str) -> None:
        page.screenshot(path=str(screens / f"{name}.png"), full_page=True)

    return snap


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--screens", type=Path, default=Path("/work/measure/screens"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--step-delay", type=float, default=1.0, help="seconds added per step: time to watch")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-report", action="store_true")
    parser.add_argument("--model", default="", help="the model to train (default: the form's, bundled:smollm2)")
    parser.add_argument("--mix-folder", default="", help="train on this export folder instead of the mix demo-mip")
    args = parser.parse_args()
    args.screens.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    log: dict = {"workspace": str(args.workspace)}
    snap = full_page_snap(args.screens)
    proc, url = start_app(args.workspace.resolve(), {"STUDIO_TRAIN_STEP_DELAY": str(args.step_delay)})
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                if not args.skip_report:
                    page = open_app(browser, url, "Report", downloads=True)
                    html_file = download_report(page, args.screens, snap)
                    page.context.close()
                    log.update(check_report_offline(browser, html_file, snap))
                if not args.skip_train:
                    log.update(train_walk(browser, url, args.workspace.resolve(), snap, steps=args.steps,
                                          model=args.model, mix="" if args.mix_folder else "demo-mip",
                                          mix_folder=args.mix_folder))
            finally:
                browser.close()
    finally:
        stop_app(proc)
        print(json.dumps(log, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
