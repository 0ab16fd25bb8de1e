"""Scale benchmark: the curation steps of the demo recipe (ingest through mix export, no training) on N documents
built from the shared corpora, each step in its own process, with its wall time, CPU time (user + sys), peak RSS
and the workspace's size after it, and how each grows between sizes (the growth exponent log(t2/t1)/log(n2/n1),
target <= 1.1). Moonshot: the whole curation of 1M documents in <= 30 minutes on 2 cores, peak RSS < 4 GB.

    nice -n 19 .venv/bin/python bench/scale.py --work ../scale-work --sizes 100000,1000000 --pages --json scale.json

The corpus (`--work DIR/corpus-N/`, streamed to JSONL, seeded, deterministic): every domain and general text corpus
and every alpaca-layout instruction corpus of `data/demo.toml` is scaled to a share of N in proportion to its
size (English and Chinese, roles as in the recipe). Of each corpus's documents ~10% are exact copies of an earlier
document, ~15% near-duplicates (2% of the words, or characters in Chinese, replaced, deleted or swapped: Jaccard
of the 5-shingles ~0.8 and above), the rest new documents: the originals first, then paragraphs recombined from
the sentences of the same corpus (same language). The sharegpt corpora, the GB18030 CSV and the benchmarks are
imported unchanged (fixed size). A unique document is a pure function of (seed, corpus, index), so copies are
regenerated instead of kept: the builder holds only the original corpora in memory.

The steps run through the same code as the CLI: ingest is `studio demo WS --recipe R --no-steps --no-app` (every
corpus, with its read snapshots), each later step one `core.demo.run_steps` on one recipe table (the code
`studio demo` runs), dedup one process per method. CPU time and peak RSS come from `os.wait4` on the step's
process (children included; the peak is the largest process, not a sum). CPU time is robust to other load on the
machine, wall time is not. The model-bound parts stay bounded by the demo recipe's own knobs and do not grow with
N: semantic dedup embeds at most `--semantic-limit` documents (of the recipe's corpora), perplexity scores
`--perplexity-sample` documents per corpus, recall embeds a `--pool-sample` of the pool and at most
`--recall-items` items per benchmark, and each mix exports the recipe's fixed token budget.

With `--pages`, the app is served on the largest workspace and each page's render time is measured in headless
Chromium (from the sidebar click until Streamlit has run the page's script to the end; target < 3 s), twice
(first visit, then again), with the app server's peak RSS; `--pages-on WS` measures only that, on a workspace an
earlier run left (`--work DIR/ws-N` is kept). Below the largest size's figures the bench extrapolates each step to
`--extrapolate` documents (default 1M) from the two largest sizes. `--corpora` keeps a few of the recipe's corpora
and `--set STEP.KEY=VALUE` overrides a step's key (the tests run it tiny that way).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

EXACT_SHARE = 0.10  # of each scaled corpus: exact copies of an earlier document
NEAR_SHARE = 0.15  # near-duplicates of an earlier document
EDIT_SHARE = 0.02  # of a near-duplicate's tokens edited
NEAR_MIN_TOKENS = 30  # shorter documents are not near-duplicated (one edit would change too many shingles)
NEAR_TRIES = 8  # sources drawn for a near-duplicate before a unique document is written instead
MAX_SENTENCES = 12  # of a recombined document
TARGET_EXPONENT = 1.1
MOONSHOT_S = 30 * 60
MOONSHOT_RSS_MB = 4096
PAGE_TARGET_S = 3.0
CJK = re.compile(r"[\u3400-\u9fff]")
SENTENCE_EN = re.compile(r"(?<=[.!?])\s+")
SENTENCE_ZH = re.compile(r"(?<=[。！？；])")


# --- the corpus -------------------------------------------------------------------------------------------------
def is_chinese(text: str) -> bool:
    sample = text[:200]
    return len(CJK.findall(sample)) > 0.3 * max(len(sample), 1)


def sentences(text: str) -> list[str]:
    parts = SENTENCE_ZH.split(text) if is_chinese(text) else SENTENCE_EN.split(text)
    return [p.strip() for p in parts if p.strip()]


def read_records(path: Path) -> list[dict[str, Any]]:
    """A JSONL file's or JSON array's records."""
    import orjson

    data = path.read_bytes()
    if path.suffix == ".json":
        return list(orjson.loads(data))
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def record_kind(corpus: dict[str, Any], files: list[Path]) -> str:
    """"text" or "alpaca" for a corpus the builder scales, "fixed" for one imported unchanged."""
    if corpus["role"] == "benchmark" or len(files) != 1 or files[0].suffix not in (".jsonl", ".json"):
        return "fixed"
    if set(corpus) & {"template", "text_field", "layout", "fmt"}:
        return "fixed"
    first = read_records(files[0])[:1]
    if first and isinstance(first[0].get("text"), str):
        return "text"
    if first and {"instruction", "output"} <= set(first[0]):
        return "alpaca"
    return "fixed"


class ScaledCorpus:
    """One corpus scaled to `quota` documents: its unique documents are a pure function of their index."""

    def __init__(self, name: str, kind: str, records: list[dict[str, Any]], seed: int) -> None:
        self.name, self.kind, self.records, self.seed = name, kind, records, seed
        self.field = "text" if kind == "text" else "output"
        self.pool = [s for r in records for s in sentences(str(r.get(self.field) or ""))]
        self.counts = {"documents": 0, "original": 0, "recombined": 0, "exact": 0, "near": 0}

    def unique(self, i: int) -> dict[str, Any]:
        if i < len(self.records):
            rec = self.records[i]
            return {"text": rec["text"]} if self.kind == "text" else {
                "instruction": rec["instruction"], "input": rec.get("input") or "", "output": rec["output"]}
        rng = random.Random(f"{self.seed}:{self.name}:{i}")
        template = self.records[rng.randrange(len(self.records))]
        k = min(MAX_SENTENCES, max(2, len(sentences(str(template.get(self.field) or "")))))
        picked = [self.pool[rng.randrange(len(self.pool))] for _ in range(k)]
        text = ("" if is_chinese(picked[0]) else " ").join(picked)
        if self.kind == "text":
            return {"text": text}
        return {"instruction": template["instruction"], "input": template.get("input") or "", "output": text}

    def near(self, rec: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        """A copy of `rec` with EDIT_SHARE of its tokens edited, or None when it is too short."""
        text = rec[self.field]
        chinese = is_chinese(text)
        tokens = list(text) if chinese else text.split()
        if len(tokens) < NEAR_MIN_TOKENS:
            return None
        for _ in range(max(1, round(EDIT_SHARE * len(tokens)))):
            pos = rng.randrange(len(tokens) - 1)
            op = rng.randrange(3)
            if op == 0:
                tokens[pos] = tokens[rng.randrange(len(tokens))]
            elif op == 1:
                del tokens[pos]
            else:
                tokens[pos], tokens[pos + 1] = tokens[pos + 1], tokens[pos]
        return {**rec, self.field: ("" if chinese else " ").join(tokens)}

    def write(self, path: Path, quota: int) -> None:
        """Stream `quota` documents to a JSONL file: unique ones, exact copies and near-duplicates, interleaved."""
        import orjson

        rng = random.Random(f"{self.seed}:{self.name}")
        uniques = 0
        with open(path, "wb", buffering=1 << 20) as fh:
            for line in range(quota):
                u = rng.random()
                rec = None
                if uniques and u < EXACT_SHARE:
                    rec, kind = self.unique(rng.randrange(uniques)), "exact"
                elif uniques and u < EXACT_SHARE + NEAR_SHARE:
                    for _ in range(NEAR_TRIES):  # a source long enough to edit
                        if (rec := self.near(self.unique(rng.randrange(uniques)), rng)) is not None:
                            kind = "near"
                            break
                if rec is None:
                    rec, kind = self.unique(uniques), "original" if uniques < len(self.records) else "recombined"
                    uniques += 1
                self.counts[kind] += 1
                fh.write(orjson.dumps({"id": f"{self.name}/{line}", **rec}) + b"\n")
        self.counts["documents"] = quota


def quotas(sizes: dict[str, int], n: int) -> dict[str, int]:
    """`n` shared out in proportion to `sizes` (largest remainders; sums to n)."""
    total = sum(sizes.values())
    exact = {k: n * v / total for k, v in sizes.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - out[k], reverse=True)[:n - sum(out.values())]:
        out[k] += 1
    return out


def parse_override(text: str) -> tuple[str, str, Any]:
    """`STEP.KEY=VALUE` (VALUE a TOML value, else a string) -> (step, key, value)."""
    import tomllib

    name, _, value = text.partition("=")
    step, _, key = name.strip().partition(".")
    if not (step and key and _):
        raise ValueError(f"--set {text!r}: expected STEP.KEY=VALUE")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return step, key, parsed


def bounded_steps(recipe: dict[str, Any], args: argparse.Namespace, kept: set[str]) -> list[dict[str, Any]]:
    """The recipe's curation steps (no train / evaluate / report), model-bound parts bounded by the CLI's knobs,
    corpus lists narrowed to the `kept` corpora, then the `--set` overrides."""
    from core.steps import get_step

    steps = []
    for table in recipe.get("step", []):
        if get_step(table["name"]).kind != "curation":
            continue
        table = json.loads(json.dumps(table))  # a deep copy
        for sub in (table, table.get("semantic", {})):
            for key in ("corpora", "pool", "benchmarks"):
                if isinstance(sub.get(key), list):
                    sub[key] = [c for c in sub[key] if c in kept]
        for step, key, value in map(parse_override, args.set):
            if step == table["name"]:
                table[key] = value
        if table["name"] == "dedup" and "semantic" in table.get("methods", []):
            table.setdefault("semantic", {})["limit"] = args.semantic_limit
        elif table["name"] == "quality" and table.get("perplexity"):
            table["sample_per_corpus"] = args.perplexity_sample
        elif table["name"] == "recall":
            table["pool_sample"] = args.pool_sample
            table["max_items_per_benchmark"] = args.recall_items
        steps.append(table)
    return steps


def build_corpus(n: int, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Write the corpus of `n` scaled documents and its recipe (`recipe-N.toml` beside `out`); its manifest."""
    import tomli_w

    from core.demo import demo_data_folder, load_recipe, step_labels

    data = demo_data_folder(args.data)
    recipe = load_recipe(args.recipe)
    out.mkdir(parents=True, exist_ok=True)
    scaled: dict[str, ScaledCorpus] = {}
    corpora = []
    wanted = set(args.corpora.split(",")) if args.corpora else {c["name"] for c in recipe["corpus"]}
    for corpus in recipe["corpus"]:
        if corpus["name"] not in wanted:
            continue
        files = [data / f for f in corpus["files"]]
        kind = record_kind(corpus, files)
        if kind == "fixed":
            corpora.append({**corpus, "files": [str(f) for f in files]})
        else:
            scaled[corpus["name"]] = ScaledCorpus(corpus["name"], kind, read_records(files[0]), args.seed)
            corpora.append({"name": corpus["name"], "role": corpus["role"],
                            "files": [str(out / f"{corpus['name']}.jsonl")]})
    share = quotas({name: len(c.records) for name, c in scaled.items()}, n)
    corpora = [c for c in corpora if c["name"] not in share or share[c["name"]] > 0]
    for name, corpus in scaled.items():
        if share[name]:
            corpus.write(out / f"{name}.jsonl", share[name])
    steps = bounded_steps(recipe, args, {c["name"] for c in corpora})
    with open(out.parent / f"recipe-{n}.toml", "wb") as fh:  # beside the workspace: kept with it
        tomli_w.dump({"workspace": recipe.get("workspace", {}), **({"flow": recipe["flow"]} if "flow" in recipe
                      else {}), "corpus": corpora, "step": steps}, fh)
    manifest = {"documents": n, "seed": args.seed, "scaled": {k: c.counts for k, c in scaled.items() if share[k]},
                "fixed": [c["name"] for c in corpora if c["name"] not in scaled],
                "bytes": sum(f.stat().st_size for f in out.glob("*.jsonl")),
                # (index, label, dedup methods) of each step: the parent stays small (its RSS would be the floor
                # of every child's ru_maxrss), so it imports nothing of core
                "plan": [(i, label, t.get("methods") if t["name"] == "dedup" else None)
                         for i, (t, label) in enumerate(zip(steps, step_labels(steps), strict=True))]}
    for kind in ("exact", "near", "original", "recombined"):
        manifest[kind] = sum(c[kind] for c in manifest["scaled"].values())
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# --- the steps, each measured in its own process ----------------------------------------------------------------
def run_step_child(workspace: Path, recipe_path: Path, index: int, method: str | None) -> dict[str, Any]:
    """One recipe step (one dedup method) as `studio demo` runs it: `core.demo.run_steps` on its table."""
    from core.demo import load_recipe, run_steps
    from core.workspace import Workspace

    table = load_recipe(recipe_path)["step"][index]
    if method:
        table = {**table, "methods": [method]}
    with Workspace.open(workspace, create=False) as ws:
        out = run_steps(ws, [table])[0]
        out["current_documents"] = ws.con.execute("SELECT count(*) FROM current_documents").fetchone()[0]
    return out


def folder_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def measured(argv: list[str], log: Path) -> dict[str, Any]:
    """Run `argv`; its wall time, CPU time and peak RSS (os.wait4, its reaped children included) and its stdout.
    The child's ru_maxrss starts at this process's RSS (fork/exec carries the high-water mark over), so this
    process stays small: it imports nothing of core and holds no documents."""
    start = time.perf_counter()
    with open(log, "ab") as err:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
        stdout = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    figures = {"wall_s": round(wall, 2), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
               "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout": stdout.decode()}
    if proc.returncode:  # recorded, and the next steps still run: a late failure must not lose the rest
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        figures["error"] = f"exit {proc.returncode}: " + (lines[-1] if lines else "")
    return figures


def last_json(stdout: str) -> dict[str, Any]:
    return json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Build the corpus of `n` documents and a fresh workspace, then every step; the figures."""
    corpus_dir, ws = args.work / f"corpus-{n}", args.work / f"ws-{n}"
    log = args.work / f"log-{n}.txt"
    shutil.rmtree(ws, ignore_errors=True)
    log.unlink(missing_ok=True)
    me = [sys.executable, str(Path(__file__).resolve())]
    bounds = ["--semantic-limit", str(args.semantic_limit), "--perplexity-sample", str(args.perplexity_sample),
              "--pool-sample", str(args.pool_sample), "--recall-items", str(args.recall_items),
              "--seed", str(args.seed), "--recipe", str(args.recipe)] + (["--data", str(args.data)] if args.data else [])
    bounds += (["--corpora", args.corpora] if args.corpora else []) + [f"--set={o}" for o in args.set]
    build = measured([*me, "--build", str(n), "--work", str(args.work), *bounds], log)
    if "error" in build:
        raise RuntimeError(f"building the corpus failed: {build['error']}")
    manifest = last_json(build.pop("stdout"))
    print(f"\n{n:,} documents: corpus built in {build['wall_s']:.1f} s ({manifest['bytes'] / 2**20:,.0f} MB; "
          f"{manifest['exact']:,} exact copies, {manifest['near']:,} near-duplicates, {manifest['original']:,} "
          f"originals, {manifest['recombined']:,} recombined; fixed: {', '.join(manifest['fixed'])})", flush=True)
    recipe_path = args.work / f"recipe-{n}.toml"
    steps: list[dict[str, Any]] = []

    def record(name: str, figures: dict[str, Any], counts: dict[str, Any]) -> None:
        figures.pop("stdout", None)
        row = {"step": name, **figures, "workspace_mb": round(folder_mb(ws), 1),
               "db_mb": round((ws / "studio.duckdb").stat().st_size / 2**20, 1), "counts": counts}
        steps.append(row)
        print(f"  {name:<18} {row['wall_s']:>8.1f} s wall {row['cpu_s']:>8.1f} s CPU {row['peak_rss_mb']:>7.0f} MB "
              f"peak RSS {row['workspace_mb']:>8.0f} MB workspace"
              + (f"  FAILED {row['error']}" if "error" in row else ""), flush=True)

    ingest = measured([sys.executable, "-m", "studio.cli", "demo", str(ws), "--data", str(corpus_dir), "--recipe",
                       str(recipe_path), "--no-app", "--no-steps", "--json"], log)
    result = {} if "error" in ingest else last_json(ingest["stdout"])
    added = {c["corpus"]: c["documents_added"] for c in result.get("corpora", [])}
    record("ingest", ingest, {"documents_added": sum(added.values()),
                              "scaled_added": sum(added.get(k, 0) for k in manifest["scaled"]),
                              "errors": sum(c.get("errors", 0) for c in result.get("corpora", []))})
    for index, label, methods in manifest["plan"]:
        for method in methods or [None]:
            name = f"dedup {method}" if method else label
            figures = measured([*me, "--run-step", str(ws), str(recipe_path), str(index)]
                               + (["--method", method] if method else []), log)
            counts = {} if "error" in figures else last_json(figures["stdout"])
            record(name, figures, {k: v for k, v in counts.items() if k not in ("step", "stage", "seconds")})
    totals = {"wall_s": round(sum(s["wall_s"] for s in steps), 1),
              "cpu_s": round(sum(s["cpu_s"] for s in steps), 1),
              "peak_rss_mb": max(s["peak_rss_mb"] for s in steps),
              "workspace_mb": steps[-1]["workspace_mb"]}
    print(f"  {'total':<18} {totals['wall_s']:>8.1f} s wall {totals['cpu_s']:>8.1f} s CPU "
          f"{totals['peak_rss_mb']:>7.0f} MB peak RSS {totals['workspace_mb']:>8.0f} MB workspace", flush=True)
    return {"documents": n, "corpus": manifest, "build": build, "workspace": str(ws), "steps": steps,
            "totals": totals}


def exponent(a: float, b: float, n1: int, n2: int) -> float | None:
    """Growth exponent of a figure from size n1 to n2: log(b/a)/log(n2/n1) (1 = linear)."""
    if a <= 0 or b <= 0 or n1 == n2:
        return None
    return round(math.log(b / a) / math.log(n2 / n1), 2)


def growth(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step and in total, the exponent of wall, CPU, peak RSS and workspace size between consecutive sizes."""
    out = []
    for small, large in zip(runs, runs[1:], strict=False):
        n1, n2 = small["documents"], large["documents"]
        rows = {}
        for s in small["steps"]:
            b = next((x for x in large["steps"] if x["step"] == s["step"]), None)
            if b is not None:
                rows[s["step"]] = {k: exponent(s[k], b[k], n1, n2)
                                   for k in ("wall_s", "cpu_s", "peak_rss_mb", "workspace_mb")}
        rows["total"] = {k: exponent(small["totals"][k], large["totals"][k], n1, n2)
                         for k in ("wall_s", "cpu_s", "peak_rss_mb", "workspace_mb")}
        out.append({"from": n1, "to": n2, "steps": rows})
    return out


def fmt(x: float | None) -> str:
    return "   -" if x is None else f"{x:>5.2f}"


def print_growth(grown: list[dict[str, Any]]) -> None:
    for g in grown:
        print(f"\ngrowth exponent {g['from']:,} -> {g['to']:,} documents (1 = linear; target <= {TARGET_EXPONENT}; "
              "CPU time is robust to other load on the machine, wall time is not):")
        print(f"  {'step':<18} {'wall':>5} {'CPU':>5} {'RSS':>5} {'disk':>5}")
        for name, e in g["steps"].items():
            worse = [k for k in ("cpu_s", "peak_rss_mb") if e[k] is not None and e[k] > TARGET_EXPONENT]
            print(f"  {name:<18} {fmt(e['wall_s'])} {fmt(e['cpu_s'])} {fmt(e['peak_rss_mb'])} "
                  f"{fmt(e['workspace_mb'])}" + (f"  <- {', '.join(worse)} above {TARGET_EXPONENT}" if worse else ""))


# The model-bound steps, their work counted in units of their own (in their counts) and capped by a bound of the
# bench: (counts table or None, count key, argument holding the bound).
BOUNDED_STEPS: dict[str, tuple[str | None, str, str]] = {
    "dedup semantic": ("semantic", "documents", "semantic_limit"),
    "recall": (None, "pool_documents", "pool_sample"),
}


def work_units(step: dict[str, Any]) -> int | None:
    """How much a bounded step embedded (its own count), or None for another step."""
    if step["step"] not in BOUNDED_STEPS:
        return None
    table, key, _ = BOUNDED_STEPS[step["step"]]
    counts = step.get("counts", {})
    value = (counts.get(table) or {}).get(key) if table else counts.get(key)
    return value if isinstance(value, int) else None


def extrapolate(runs: list[dict[str, Any]], target: int, bounds: dict[str, int]) -> dict[str, Any] | None:
    """Each step's wall and CPU time at `target` documents: a fixed cost plus a cost per document, fitted through
    the two largest sizes (t = a + b n; b >= 0). At small sizes the fixed costs (imports, model loads, the bounded
    model work, the fixed-size corpora) dominate, so the power law of the growth exponent would overshoot; a step
    whose exponent is above 1 is flagged `superlinear`, and for it this is a lower bound. A bounded step (semantic
    dedup, recall) is fitted on the documents it embedded instead, which grow with n only up to their bound."""
    if len(runs) < 2 or runs[-1]["documents"] >= target:
        return None
    small, large = runs[-2], runs[-1]
    n1, n2 = small["documents"], large["documents"]
    out: dict[str, Any] = {}
    for b in large["steps"]:
        a = next((x for x in small["steps"] if x["step"] == b["step"]), None)
        if a is None or "error" in a or "error" in b:
            continue
        x1, x2, x = n1, n2, target
        u1, u2 = work_units(a), work_units(b)
        if u1 is not None and u2 is not None:
            bound = bounds[BOUNDED_STEPS[b["step"]][2]]
            x1, x2, x = u1, u2, min(bound, round(u2 * target / n2))
        row: dict[str, Any] = {}
        for key in ("wall_s", "cpu_s"):
            per_unit = max(0.0, (b[key] - a[key]) / (x2 - x1)) if x2 != x1 else 0.0
            row[key] = round(b[key] + per_unit * max(0, x - x2), 1)
        row["superlinear"] = (exponent(a["cpu_s"], b["cpu_s"], n1, n2) or 0) > TARGET_EXPONENT
        if u2 is not None:
            row["bounded_units"] = x
        out[b["step"]] = row
    out["total"] = {k: round(sum(r[k] for r in out.values()), 1) for k in ("wall_s", "cpu_s")}
    return out


# --- the pages ----------------------------------------------------------------------------------------------------
def page_titles() -> list[str]:
    """The app's pages in navigation order, as `studio/app.py` declares them (read, not imported: it runs)."""
    tree = ast.parse((REPO / "studio" / "app.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            target = node.target if isinstance(node, ast.AnnAssign) else node.targets[0]
            if isinstance(target, ast.Name) and target.id == "PAGES":
                return [title for _, title, _ in ast.literal_eval(node.value)]
    raise RuntimeError("studio/app.py declares no PAGES")


WATCH_JS = """() => {
  const app = document.querySelector("[data-testid='stApp']");
  window.__scale = {running: false, done: null, start: performance.now()};
  if (window.__scaleObserver) window.__scaleObserver.disconnect();
  window.__scaleObserver = new MutationObserver(records => {
    for (const r of records) if (r.oldValue === 'running') window.__scale.running = true;
    const state = app.getAttribute('data-test-script-state');
    if (state === 'running') window.__scale.running = true;
    else if (window.__scale.running && state === 'notRunning' && window.__scale.done === null)
      window.__scale.done = performance.now();
  });
  window.__scaleObserver.observe(app, {attributes: true, attributeOldValue: true,
                                       attributeFilter: ['data-test-script-state']});
}"""


def group_rss_mb(pgid: int) -> tuple[float, float]:
    """(current RSS summed, largest peak RSS) of the processes of a process group, in MB."""
    rss, hwm = 0.0, 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = max(hwm, int(line.split()[1]) / 1024)
    return round(rss, 1), round(hwm, 1)


def measure_pages(workspace: Path, rounds: int = 2, timeout_s: float = 120) -> dict[str, Any]:
    """Serve `workspace`, then each page's render time in headless Chromium: from the sidebar click until the
    page's script has run to the end (Streamlit idle), `rounds` times over; exceptions shown are counted."""
    sys.path.insert(0, str(REPO / "tests"))
    from browser_walk import VIEWPORT, launch_chromium, start_app, stop_app, wait_for_app
    from playwright.sync_api import sync_playwright

    titles = page_titles()
    rows: dict[str, dict[str, Any]] = {t: {"page": t, "render_s": []} for t in titles}
    proc, url = start_app(workspace.resolve())
    try:
        with sync_playwright() as pw:
            browser = launch_chromium(pw)
            try:
                page = browser.new_context(viewport=VIEWPORT).new_page()
                start = time.perf_counter()
                page.goto(url)
                wait_for_app(page, timeout_ms=int(timeout_s * 1000))
                first_load = round(time.perf_counter() - start - 0.3, 2)  # wait_for_app's settling pause
                for _ in range(rounds):
                    for title in titles:
                        page.evaluate(WATCH_JS)
                        started = time.perf_counter()
                        page.get_by_role("link", name=title).first.click()
                        page.wait_for_function("() => window.__scale.done !== null", timeout=timeout_s * 1000)
                        took = page.evaluate("() => window.__scale.done - window.__scale.start") / 1000
                        rows[title]["render_s"].append(round(min(took, time.perf_counter() - started), 2))
                        wait_for_app(page, timeout_ms=int(timeout_s * 1000))
                        rows[title]["exceptions"] = page.locator("[data-testid='stException']").count()
            finally:
                browser.close()
        rss, peak = group_rss_mb(proc.pid)
    finally:
        stop_app(proc)
    pages = list(rows.values())
    for row in pages:
        row["first_s"], row["max_s"] = row["render_s"][0], max(row["render_s"])
        row["ok"] = row["max_s"] < PAGE_TARGET_S and not row.get("exceptions")
    return {"workspace": str(workspace), "first_load_s": first_load, "app_rss_mb": rss, "app_peak_rss_mb": peak,
            "pages": pages}


def print_pages(result: dict[str, Any]) -> None:
    print(f"\npage render times on {result['workspace']} (sidebar click until Streamlit is idle; target < "
          f"{PAGE_TARGET_S:.0f} s; first app load {result['first_load_s']:.1f} s; app server RSS "
          f"{result['app_rss_mb']:,.0f} MB, peak of its largest process {result['app_peak_rss_mb']:,.0f} MB):")
    print(f"  {'page':<15} {'first s':>8} {'again s':>8}  ok")
    for row in result["pages"]:
        again = row["render_s"][1] if len(row["render_s"]) > 1 else float("nan")
        note = "yes" if row["ok"] else "NO" + (f" ({row['exceptions']} exceptions)" if row.get("exceptions") else "")
        print(f"  {row['page']:<15} {row['first_s']:>8.2f} {again:>8.2f}  {note}")


# --- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated document counts, ascending")
    parser.add_argument("--work", type=Path, default=REPO.parent / "scale-work",
                        help="scratch folder for the corpora and workspaces (several GB at 1M documents)")
    parser.add_argument("--data", type=Path, default=None, help="the shared data folder (default $STUDIO_DATA)")
    parser.add_argument("--recipe", type=Path, default=REPO / "data" / "demo.toml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--semantic-limit", type=int, default=5000,
                        help="documents semantic dedup embeds (of the recipe's corpora; the demo's are ~5,900)")
    parser.add_argument("--perplexity-sample", type=int, default=24, help="perplexity documents per corpus")
    parser.add_argument("--pool-sample", type=int, default=5000, help="recall: pool documents embedded")
    parser.add_argument("--recall-items", type=int, default=1100, help="recall: items per benchmark")
    parser.add_argument("--corpora", help="comma-separated corpora of the recipe to keep (default: all; the tests "
                        "keep a few so that the fixed-size ones cost little)")
    parser.add_argument("--set", action="append", default=[], metavar="STEP.KEY=VALUE",
                        help="override a key of a recipe step table (a TOML value), e.g. recall.floor=0.3")
    parser.add_argument("--pages", action="store_true", help="then measure each page's render time on the largest")
    parser.add_argument("--pages-on", type=Path, metavar="WS",
                        help="only measure the pages on this workspace (one an earlier run left), then exit")
    parser.add_argument("--extrapolate", type=int, default=1_000_000,
                        help="estimate each step at this many documents from the two largest sizes")
    parser.add_argument("--keep", action="store_true", help="keep the corpora (workspaces are always kept)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--build", type=int, help=argparse.SUPPRESS)  # child: build the corpus of N documents
    parser.add_argument("--run-step", nargs=3, metavar=("WS", "RECIPE", "INDEX"), help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = args.work.resolve()
    if args.build is not None:
        print(json.dumps(build_corpus(args.build, args.work / f"corpus-{args.build}", args)))
        return 0
    if args.run_step:
        ws, recipe, index = args.run_step
        print(json.dumps(run_step_child(Path(ws), Path(recipe), int(index), args.method), default=str))
        return 0
    if args.pages_on:
        pages = measure_pages(args.pages_on)
        print_pages(pages)
        if args.json:
            args.json.write_text(json.dumps({"pages": pages}, indent=1, default=str))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        parser.error("--sizes must be ascending")
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; work folder {args.work}; bounded (fixed, not growing with N): semantic dedup "
          f"<= {args.semantic_limit:,} documents, perplexity {args.perplexity_sample} documents per corpus, recall "
          f"pool sample {args.pool_sample:,} and <= {args.recall_items:,} items per benchmark, each mix the recipe's "
          "token budget; sharegpt, CSV and benchmark corpora imported unchanged")
    runs = []
    for n in sizes:
        runs.append(run_size(n, args))
        if not args.keep:
            shutil.rmtree(args.work / f"corpus-{n}", ignore_errors=True)
    with open("/proc/self/status", encoding="ascii") as fh:  # a floor under every step's ru_maxrss (see measured)
        own = next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))
    print(f"\n(the bench's own peak RSS, which a step's peak RSS cannot be below: {own:,.0f} MB)")
    result: dict[str, Any] = {"sizes": sizes, "runs": runs, "growth": growth(runs), "bench_rss_mb": round(own, 1)}
    print_growth(result["growth"])
    bounds = {"semantic_limit": args.semantic_limit, "perplexity_sample": args.perplexity_sample,
              "pool_sample": args.pool_sample, "recall_items": args.recall_items}
    result["bounds"] = bounds
    if est := extrapolate(runs, args.extrapolate, bounds):
        result["extrapolated"] = {"documents": args.extrapolate, "steps": est}
        print(f"\nextrapolated to {args.extrapolate:,} documents, CPU s (wall s): a fixed plus a per-document cost "
              "through the two largest sizes (semantic dedup and recall: per document embedded, up to their bound); "
              "trust CPU on a loaded machine, where the wall slope is noise; * grew faster than linearly, a lower "
              "bound:\n  " + ", ".join(f"{k}{'*' if v.get('superlinear') else ''} {v['cpu_s']:,.0f} ({v['wall_s']:,.0f})"
                                     for k, v in est.items()))
    largest = runs[-1]
    total = est["total"]["cpu_s"] if est else largest["totals"]["cpu_s"]
    moonshot = {"documents": largest["documents"], "wall_s": largest["totals"]["wall_s"],
                "peak_rss_mb": largest["totals"]["peak_rss_mb"],
                "wall_ok": largest["totals"]["wall_s"] <= MOONSHOT_S * largest["documents"] / 1_000_000,
                "rss_ok": largest["totals"]["peak_rss_mb"] < MOONSHOT_RSS_MB}
    result["moonshot"] = moonshot
    print(f"\nmoonshot (1M documents <= {MOONSHOT_S / 60:.0f} min, peak RSS < {MOONSHOT_RSS_MB / 1024:.0f} GB): "
          f"{largest['documents']:,} documents took {largest['totals']['wall_s'] / 60:.1f} min wall "
          f"({largest['totals']['cpu_s'] / 60:.1f} min CPU), peak RSS {largest['totals']['peak_rss_mb']:,.0f} MB"
          + (f"; at {args.extrapolate:,}: ~{total / 60:.0f} min CPU (wall on 2 idle cores: at most about that)"
             if est else ""))
    if args.pages:
        result["pages"] = measure_pages(Path(largest["workspace"]))
        print_pages(result["pages"])
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
