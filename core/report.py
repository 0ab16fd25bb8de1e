"""The domain-gain / retention report: what training bought (domain gain) and what it cost (retention), with
intervals, for people who do not read code.

For each training job the report evaluates the job's model (and any variant beside it, e.g. an averaged model)
and its base with `core.evaluate` (cached, so nothing is scored twice), and builds: headline cards (gain and
retention with 95 % intervals, pass or flag against the curator's targets), per-subject bars with intervals,
perplexity before and after, the job's training curves, the items that flipped, and the lineage (mix recipe and
manifest hash, the curation runs and their drops, the job's config). It is written as ONE self-contained HTML
file (plotly.js embedded inline, no external request) and as JSON.
"""

from __future__ import annotations

import html
import json
import tomllib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio

from core.evaluate.evaluation import (
    RETENTION_TARGET,
    EvalConfig,
    ModelScores,
    TrainedModelsEvalConfig,
    compare,
    compare_perplexity,
    evaluate_model,
    training_mixes,
    validation_files,
)
from core.evaluate.models import ModelSpec, resolve_model
from core.evaluate.stats import mcnemar, paired_difference, paired_ratio
from core.models import BUNDLED_LM, ModelUnavailable
from core.progress import Progress, no_progress
from core.steps import Step, config_from_recipe, param
from core.workspace import Workspace, WorkspaceError

SECTIONS = ("Headline", "Scores by subject", "Perplexity", "Training curves", "Flipped items", "Lineage")
BASE_COLOR, TRAINED_COLOR = "#8c8c8c", "#1f77b4"


@dataclass
class ReportConfig:
    jobs: list[str] = param(required=True, help="comma-separated job ids or job output folders")  # or `jobs` rows
    out: str = param(required=True, metavar="FILE.html", help="the HTML report (JSON beside it)")
    baseline: str | None = param(None, metavar="PATH_OR_ID",
                                 help="the base model (default: each job's base model)")
    # domain gain must exceed this (points of accuracy, as a fraction)
    min_gain: float = param(0.0, help="domain gain target (default: above 0)")
    min_retention: float = param(RETENTION_TARGET, help=f"retention target (default {RETENTION_TARGET})")
    # the scoring options of `studio eval` but its --model / --baseline (REPORT_SKIPS)
    scoring: EvalConfig = field(default_factory=lambda: EvalConfig(model=""))


# `studio report`'s options are ReportConfig's fields; the models come from the jobs, not from `scoring`
REPORT_SKIPS = ("scoring.model", "scoring.baseline")


@dataclass
class JobModels:
    """A training job's output: its models (the trained one first, then variants such as an averaged model),
    its training metrics and its metadata."""

    job: str
    output_dir: Path
    models: dict[str, Path]  # label -> model folder
    metrics: list[dict[str, Any]]
    meta: dict[str, Any]  # model/studio_model.json: job, mix manifest hash, base model
    config: dict[str, Any]


@dataclass
class ReportResult:
    html_path: str
    json_path: str
    html_bytes: int
    cards: list[dict[str, Any]]
    data: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"html": self.html_path, "json": self.json_path, "html_bytes": self.html_bytes, "cards": self.cards}


# --- jobs ----------------------------------------------------------------------------------------------------
def _table_exists(ws: Workspace, name: str) -> bool:
    return bool(ws.scalar("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl: one JSON object per logging step; unreadable lines are skipped."""
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict):
                rows.append(rec)
    return rows


def job_model_dir(ws: Workspace, job: str) -> JobModels:
    """The one place a job is looked up: `job` is a job id of the `jobs` table (when the workspace has one) or the
    path of a job output folder. Its `model/` folder holds the trained model (a full model or a PEFT adapter);
    sibling folders `model_*` (e.g. `model_averaged`) are variants evaluated beside it."""
    output_dir: Path | None = None
    config: dict[str, Any] = {}
    if Path(job).expanduser().is_dir():
        output_dir = Path(job).expanduser().resolve()
    elif _table_exists(ws, "jobs"):
        row = ws.query("SELECT output_dir, config FROM jobs WHERE job_id = ?", [job])
        if not row:
            raise WorkspaceError(f"{job!r} is neither a job output folder nor a job of this workspace")
        if not row[0][0]:
            raise WorkspaceError(f"job {job!r} has no output folder")
        output_dir = Path(row[0][0])
        raw = row[0][1]
        config = tomllib.loads(raw) if isinstance(raw, str) and raw else {}  # the job's TOML (core.jobs)
    else:
        raise WorkspaceError(f"{job!r} is neither a job output folder nor a job of this workspace")
    models = {}
    if (output_dir / "model").is_dir():
        models["trained"] = output_dir / "model"
    for variant in sorted(output_dir.glob("model_*")):
        if variant.is_dir() and any((variant / f).is_file() for f in ("config.json", "adapter_config.json")):
            models[variant.name.removeprefix("model_")] = variant
    if not models:
        raise ModelUnavailable(f"job {job}: {output_dir} holds no model/ folder (has the job finished?)")
    meta = _read_json(output_dir / "model" / "studio_model.json")
    if not config and (output_dir / "config.toml").is_file():  # a training job's folder (core.train)
        config = tomllib.loads((output_dir / "config.toml").read_text(encoding="utf-8"))
    config = config or _read_json(output_dir / "config.json")
    return JobModels(job=meta.get("job") or (job if not Path(job).is_dir() else output_dir.name),
                     output_dir=output_dir, models=models, metrics=read_metrics(output_dir / "metrics.jsonl"),
                     meta=meta, config=config)


def mix_manifest_of(job: JobModels) -> str:
    """The manifest hash of the mix the job trained on (`manifest_sha256` in a training job's studio_model.json)."""
    meta = job.meta
    return str(meta.get("mix_manifest_sha256") or meta.get("manifest_sha256") or meta.get("mix_manifest") or "")


def _validation_of(ws: Workspace, job: JobModels, scoring: EvalConfig) -> dict[str, Path]:
    """The validation sets of `scoring.mix`, else of the job's mix (by its manifest hash), else the latest mix."""
    if not scoring.perplexity:
        return {}
    for ref in (scoring.mix, mix_manifest_of(job)):
        if ref:
            try:
                return validation_files(ws, ref)
            except WorkspaceError:
                continue
    return validation_files(ws, None)


def base_model_of(job: JobModels) -> str:
    return str(job.meta.get("base_model") or job.config.get("base_model") or job.config.get("model") or BUNDLED_LM)


# --- figures -------------------------------------------------------------------------------------------------
def primary_metric(formulation: str) -> str:
    return "acc_norm" if formulation == "cloze" else "acc"


def pooled(base: ModelScores, trained: ModelScores, kind: str, formulation: str, min_gain: float,
           min_retention: float) -> dict[str, Any] | None:
    """Gain or retention over every item of every benchmark of `kind`, paired."""
    metric = primary_metric(formulation)
    b_all, t_all = [], []
    for t in trained.benchmarks:
        b = base.score(t.benchmark, formulation)
        if t.kind != kind or t.formulation != formulation or b is None or len(b.items) != len(t.items):
            continue
        b_all += [i.correct(metric) for i in b.items]
        t_all += [i.correct(metric) for i in t.items]
    if not t_all:
        return None
    bc, tc = np.array(b_all, dtype=float), np.array(t_all, dtype=float)
    gain, retention = paired_difference(tc, bc), paired_ratio(tc, bc)
    test = mcnemar(bc.astype(bool), tc.astype(bool))
    if kind == "domain":
        passed = gain.value > min_gain
        text = f"{100 * gain.value:+.1f} points [{100 * gain.low:+.1f}, {100 * gain.high:+.1f}]"
        target = f"target: above {100 * min_gain:+.1f} points"
    elif bc.mean() == 0:  # trained / base is undefined; the base had nothing on these items to lose
        passed = True
        text = f"undefined: the base scored 0 of {len(t_all)} (trained {100 * tc.mean():.1f} %)"
        target = f"target: at least {min_retention:.2f}"
    else:
        passed = retention.value >= min_retention
        text = f"{retention.value:.3f} [{retention.low:.3f}, {retention.high:.3f}]"
        target = f"target: at least {min_retention:.2f}"
    return {"kind": kind, "formulation": formulation, "metric": metric, "items": len(t_all),
            "base": float(bc.mean()), "trained": float(tc.mean()), "gain": gain.to_dict(),
            "retention": retention.to_dict(), "mcnemar": test.to_dict(), "passed": bool(passed),
            "title": "Domain gain" if kind == "domain" else "Retention", "text": text, "target": target}


def subject_figure(base: ModelScores, trained: ModelScores, label: str, benchmark: str, formulation: str
                   ) -> go.Figure | None:
    t, b = trained.score(benchmark, formulation), base.score(benchmark, formulation)
    if t is None or b is None:
        return None
    metric = primary_metric(formulation)
    subjects = sorted(t.subjects)
    fig = go.Figure()
    for name, score, color in (("base", b, BASE_COLOR), (label, t, TRAINED_COLOR)):
        values = [score.subjects[s][metric] for s in subjects]
        fig.add_bar(name=name, x=[s.replace("_", " ") for s in subjects], y=[100 * e.value for e in values],
                    marker_color=color,
                    error_y={"type": "data", "symmetric": False, "array": [100 * (e.high - e.value) for e in values],
                             "arrayminus": [100 * (e.value - e.low) for e in values]},
                    hovertemplate="%{x}: %{y:.1f}<extra>" + name + "</extra>")
    fig.update_layout(barmode="group", title=f"{benchmark} ({t.kind}), {formulation} {metric}, {t.shots}-shot, "
                      f"95 % intervals", yaxis_title=f"{metric} (%)", height=380, margin={"t": 50, "b": 90})
    return fig


def perplexity_figure(comparisons: list[dict[str, Any]], label: str) -> go.Figure | None:
    if not comparisons:
        return None
    sets = [c["validation_set"] for c in comparisons]
    fig = go.Figure()
    fig.add_bar(name="base", x=sets, y=[c["base_token_perplexity"] for c in comparisons], marker_color=BASE_COLOR)
    fig.add_bar(name=label, x=sets, y=[c["trained_token_perplexity"] for c in comparisons], marker_color=TRAINED_COLOR,
                customdata=[[c["base_bits_per_byte"], c["trained_bits_per_byte"]] for c in comparisons],
                hovertemplate="%{x}: %{y:.2f} (bits per byte %{customdata[1]:.3f})<extra></extra>")
    fig.update_layout(barmode="group", title="Token perplexity on the held-out validation sets (lower is better)",
                      yaxis_title="perplexity", height=340)
    return fig


def curves_figure(metrics: list[dict[str, Any]], job: str) -> go.Figure | None:
    rows = [m for m in metrics if "step" in m]
    if not rows:
        return None
    fig = go.Figure()
    keys = sorted({k for m in rows for k, v in m.items() if "loss" in k and isinstance(v, int | float)})
    for key in keys:
        points = [(m["step"], m[key]) for m in rows if isinstance(m.get(key), int | float)]
        fig.add_scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers", name=key)
    fig.update_layout(title=f"Training curves of {job}", xaxis_title="step", yaxis_title="loss", height=340)
    return fig


# --- the report ----------------------------------------------------------------------------------------------
def lineage(ws: Workspace, job: JobModels) -> dict[str, Any]:
    """Mix recipe and manifest hash, the curation runs with their drops, and the job's config."""
    manifest_hash = mix_manifest_of(job)
    mix_rows = ws.query("SELECT mix_id, name, recipe, manifest_sha256, export_dir, train_documents, train_tokens "
                        "FROM mixes WHERE manifest_sha256 = ? OR ? = '' ORDER BY created_at DESC LIMIT 1",
                        [manifest_hash, manifest_hash])
    mix = None
    if mix_rows:
        r = mix_rows[0]
        mix = {"mix_id": r[0], "name": r[1], "recipe": json.loads(r[2]) if r[2] else None, "manifest_sha256": r[3],
               "export_dir": r[4], "train_documents": r[5], "train_tokens": r[6]}
    runs = ws.query(
        "SELECT r.run_id, r.step, r.status, r.started_at, r.counts, "
        "(SELECT count(*) FROM decisions d WHERE d.run_id = r.run_id AND d.verdict = 'drop') "
        "FROM runs r WHERE r.active AND r.status = 'ok' AND r.step NOT IN ('eval', 'report') ORDER BY r.started_at")
    curation = [{"run_id": r[0], "step": r[1], "status": r[2], "started_at": str(r[3]),
                 "counts": json.loads(r[4]) if r[4] else {}, "dropped": int(r[5])} for r in runs]
    return {"mix": mix, "manifest_sha256": manifest_hash or (mix or {}).get("manifest_sha256"),
            "curation": curation, "job_config": job.config, "job_meta": job.meta,
            "output_dir": str(job.output_dir)}


def build_report(ws: Workspace, cfg: ReportConfig, progress: Progress = no_progress) -> ReportResult:
    """Evaluate every job's models and their bases (cached), compare them, and write the HTML and JSON."""
    if not cfg.jobs:
        raise ValueError("--jobs needs at least one job id or job folder")
    if not cfg.out.endswith((".html", ".htm")):
        raise ValueError("--out must name an .html file (the JSON is written beside it)")
    jobs = [job_model_dir(ws, j) for j in cfg.jobs]
    # every model is resolved (and refused with its reason) before any work
    bases = {j.job: resolve_model(cfg.baseline or base_model_of(j)) for j in jobs}
    trained = {(j.job, label): resolve_model(str(path)) for j in jobs for label, path in j.models.items()}
    scoring = cfg.scoring
    scoring.validate()
    entries: list[dict[str, Any]] = []
    with ws.run("report", {"jobs": cfg.jobs, "out": cfg.out, "baseline": cfg.baseline,
                           "min_gain": cfg.min_gain, "min_retention": cfg.min_retention}, supersede=False) as rec:
        evaluated: dict[tuple[str, tuple[str, ...]], ModelScores] = {}
        todo = [(j, spec) for j in jobs for spec in [bases[j.job], *(trained[(j.job, lb)] for lb in j.models)]]
        for k, (j, spec) in enumerate(todo):
            validation = _validation_of(ws, j, scoring)
            key = (spec.fingerprint, tuple(str(p) for p in validation.values()))
            if key in evaluated:
                continue

            def step_progress(fraction: float, message: str, k: int = k) -> None:
                progress((k + max(fraction, 0)) / (len(todo) + 1) if fraction >= 0 else -1, message)

            evaluated[key] = evaluate_model(ws, spec, scoring, rec.run_id, validation, step_progress)
        for j in jobs:
            files = tuple(str(p) for p in _validation_of(ws, j, scoring).values())
            base_scores = evaluated[(bases[j.job].fingerprint, files)]
            for label in j.models:
                spec = trained[(j.job, label)]
                entries.append(_entry(ws, j, label, spec, base_scores, evaluated[(spec.fingerprint, files)], cfg))
        rec.counts = {"jobs": len(jobs), "models": len(evaluated)}
    progress(0.97, "writing the report")
    data = {"created_at": datetime.now(UTC).isoformat(timespec="seconds"), "workspace": str(ws.path),
            "run_id": rec.run_id, "targets": {"min_gain": cfg.min_gain, "min_retention": cfg.min_retention},
            "scoring": {k: v for k, v in scoring.__dict__.items() if k not in ("model", "baseline")},
            "side_by_side": side_by_side(entries),
            "entries": [{k: v for k, v in e.items() if not k.startswith("_")} for e in entries]}
    out = Path(cfg.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n", encoding="utf-8")
    out.write_text(render_html(data, entries), encoding="utf-8")
    progress(1.0, f"report written to {out}")
    cards = [c for e in entries for c in e["cards"]]
    return ReportResult(str(out), str(json_path), out.stat().st_size, cards, data)


def _entry(ws: Workspace, job: JobModels, label: str, spec: ModelSpec, base: ModelScores, trained: ModelScores,
           cfg: ReportConfig) -> dict[str, Any]:
    name = f"{job.job} ({label})" if label != "trained" else job.job
    comparisons = compare(base, trained, cfg.min_retention, cfg.min_gain)
    ppl = compare_perplexity(base, trained)
    formulations = [f for f in ("cloze", "letter") if any(s.formulation == f for s in trained.benchmarks)]
    cards = []
    for kind in ("domain", "general"):
        for formulation in formulations[:1]:  # the headline uses cloze acc_norm where cloze was scored
            card = pooled(base, trained, kind, formulation, cfg.min_gain, cfg.min_retention)
            if card:
                cards.append({"job": name, **card})
    for p in ppl:
        if p["validation_set"] == "domain":
            change = p["token_perplexity_change"]
            cards.append({"job": name, "kind": "domain", "title": "Domain perplexity",
                          "text": f"{p['base_token_perplexity']:.2f} → {p['trained_token_perplexity']:.2f} "
                                  f"({change['value']:+.2f} [{change['low']:+.2f}, {change['high']:+.2f}])",
                          "target": "lower is better", "passed": change["value"] < 0})
    questions = _questions(ws, comparisons)
    flips = []
    for c in comparisons:
        if c.metric != primary_metric(c.formulation):
            continue
        for direction, rows in c.flips.items():
            for r in rows:
                flips.append({"benchmark": c.benchmark, "formulation": c.formulation, "direction": direction,
                              **r, "question": questions.get(r["item_doc_id"], "")})
    figures = []
    for s in trained.benchmarks:
        fig = subject_figure(base, trained, label if label != "trained" else "trained", s.benchmark, s.formulation)
        if fig is not None:
            figures.append(fig)
    origin = lineage(ws, job)
    mix_name = (origin["mix"] or {}).get("name") or job.meta.get("mix") or job.config.get("mix") or ""
    return {"job": name, "label": label, "mix": str(mix_name), "model": spec.to_dict(), "base": base.model.to_dict(),
            "cards": cards, "comparisons": [c.to_dict() for c in comparisons], "perplexity": ppl,
            "scores": {"base": base.to_dict(), "trained": trained.to_dict()},
            "flips": flips, "lineage": origin, "metrics": job.metrics,
            "_subject_figures": figures, "_perplexity_figure": perplexity_figure(ppl, label),
            "_curves_figure": curves_figure(job.metrics, job.job)}


def _questions(ws: Workspace, comparisons: list[Any]) -> dict[str, str]:
    ids = sorted({r["item_doc_id"] for c in comparisons for rows in c.flips.values() for r in rows})
    if not ids:
        return {}
    return dict(ws.query("SELECT doc_id, question FROM benchmark_items WHERE doc_id IN (SELECT unnest(?))", [ids]))


# --- HTML ----------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:26px} h2{border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:36px} h3{margin-bottom:4px}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ccc;border-radius:8px;padding:12px 16px;min-width:250px}
.card .value{font-size:22px;font-weight:600} .pass{border-left:6px solid #2ca02c} .flag{border-left:6px solid #d62728}
.verdict{font-weight:600} .pass .verdict{color:#2ca02c} .flag .verdict{color:#d62728}
table{border-collapse:collapse;font-size:13px;margin:8px 0} td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4} .muted{color:#777;font-size:13px} pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:12px}
"""


def _fig_html(fig: go.Figure | None, include_js: list[bool], div_id: str) -> str:
    if fig is None:
        return '<p class="muted">No data for this chart.</p>'
    first = not include_js[0]
    include_js[0] = True
    return pio.to_html(fig, full_html=False, include_plotlyjs=first, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def _estimate_text(e: dict[str, Any], pct: bool = True) -> str:
    scale = 100 if pct else 1
    return f"{scale * e['value']:.1f} [{scale * e['low']:.1f}, {scale * e['high']:.1f}]" if pct else \
        f"{e['value']:.3f} [{e['low']:.3f}, {e['high']:.3f}]"


def side_by_side(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model of the report (each job's trained and averaged model): its mix and its headline cards
    by title, so runs on different mixes (an eval-driven mix and its random control) read side by side."""
    return [{"job": e["job"], "mix": e.get("mix", ""), "label": e["label"],
             "cards": {c["title"]: {"text": c["text"], "passed": c["passed"]} for c in e["cards"]}} for e in entries]


def _side_by_side_html(entries: list[dict[str, Any]]) -> str:
    """The runs compared in one table, when the report holds more than one job."""
    if len({e["lineage"]["output_dir"] for e in entries}) < 2:
        return ""
    esc = html.escape
    rows = side_by_side(entries)
    titles = list(dict.fromkeys(t for r in rows for t in r["cards"]))
    cells = "".join(
        "<tr><td>" + esc(r["job"]) + "</td><td>" + esc(r["mix"]) + "</td>" + "".join(
            f"<td class='{'pass' if r['cards'][t]['passed'] else 'flag'}'>{esc(r['cards'][t]['text'])} "
            f"({'pass' if r['cards'][t]['passed'] else 'FLAG'})</td>" if t in r["cards"] else "<td>–</td>"
            for t in titles) + "</tr>" for r in rows)
    return ("<section id='section-side-by-side' data-section='Runs side by side'><h2>Runs side by side</h2>"
            "<p class='muted'>Each job's models against the same base, on the same benchmark items: an eval-driven "
            "mix beside its random control shows what the selection bought over random text of the same size.</p>"
            f"<table><tr><th>model</th><th>mix</th>{''.join(f'<th>{esc(t)}</th>' for t in titles)}</tr>{cells}"
            "</table></section>")


def render_html(data: dict[str, Any], entries: list[dict[str, Any]]) -> str:
    """One self-contained page: plotly.js inline once, every chart a div, no external reference."""
    esc = html.escape
    js = [False]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Domain gain and retention report"
             f"</title><style>{_CSS}</style></head><body>",
             "<h1>Domain gain and retention report</h1>",
             f"<p class='muted'>Workspace {esc(data['workspace'])} · created {esc(data['created_at'])} · "
             f"scores by lm-evaluation-harness, 95 % paired bootstrap intervals over items · targets: domain gain "
             f"above {100 * data['targets']['min_gain']:+.1f} points, retention at least "
             f"{data['targets']['min_retention']:.2f}</p>"]
    parts.append(_side_by_side_html(entries))
    for n, e in enumerate(entries):
        parts.append(f"<section class='entry' id='entry-{n}'><h1>{esc(e['job'])}"
                     f"{' on mix ' + esc(e['mix']) if e.get('mix') else ''}</h1>"
                     f"<p class='muted'>model {esc(str(e['model']['path']))}"
                     f"{' + adapter ' + esc(str(e['model']['adapter'])) if e['model']['adapter'] else ''} "
                     f"versus base {esc(str(e['base']['name']))}</p>")
        # Headline
        parts.append(f"<section id='section-headline-{n}' data-section='Headline'><h2>Headline</h2><div class='cards'>")
        for c in e["cards"]:
            parts.append(f"<div class='card {'pass' if c['passed'] else 'flag'}'><div>{esc(c['title'])}"
                         f"{' (' + esc(c['formulation']) + ' ' + esc(c['metric']) + ')' if 'metric' in c else ''}"
                         f"</div><div class='value'>{esc(c['text'])}</div><div class='muted'>{esc(c['target'])}"
                         + (f" · McNemar p = {c['mcnemar']['p_value']:.3g} · {c['items']:,} items" if 'mcnemar' in c
                            else "") +
                         f"</div><div class='verdict'>{'PASS' if c['passed'] else 'FLAGGED'}</div></div>")
        if not e["cards"]:
            parts.append("<p class='muted'>No benchmark was scored for both models.</p>")
        parts.append("</div>")
        rows = "".join(
            f"<tr><td>{esc(c['benchmark'])}</td><td>{esc(c['kind'])}</td><td>{esc(c['formulation'])}</td>"
            f"<td>{esc(c['metric'])}</td><td>{100 * c['base']:.1f}</td><td>{100 * c['trained']:.1f}</td>"
            f"<td>{_estimate_text(c['gain'])}</td><td>{_estimate_text(c['retention'], False)}</td>"
            f"<td>{_estimate_text(c['clean_gain']) if c['clean_gain'] else '–'}</td>"
            f"<td>{c['mcnemar']['p_value']:.3g}</td><td>{'pass' if c['passed'] else 'FLAG'}</td></tr>"
            for c in e["comparisons"])
        parts.append("<table><tr><th>benchmark</th><th>kind</th><th>formulation</th><th>metric</th><th>base</th>"
                     "<th>trained</th><th>gain (points)</th><th>retention</th><th>gain, clean subset</th>"
                     f"<th>McNemar p</th><th></th></tr>{rows}</table></section>")
        # Scores by subject
        parts.append(f"<section id='section-subjects-{n}' data-section='Scores by subject'><h2>Scores by subject</h2>")
        for k, fig in enumerate(e["_subject_figures"]):
            parts.append(_fig_html(fig, js, f"subjects-{n}-{k}"))
        if not e["_subject_figures"]:
            parts.append(_fig_html(None, js, ""))
        parts.append("</section>")
        # Perplexity
        parts.append(f"<section id='section-perplexity-{n}' data-section='Perplexity'><h2>Perplexity</h2>")
        parts.append(_fig_html(e["_perplexity_figure"], js, f"perplexity-{n}"))
        prow = "".join(
            f"<tr><td>{esc(p['validation_set'])}</td><td>{p['documents']:,}</td><td>{p['base_token_perplexity']:.2f}</td>"
            f"<td>{p['trained_token_perplexity']:.2f}</td><td>{_estimate_text(p['token_perplexity_change'], False)}</td>"
            f"<td>{p['base_bits_per_byte']:.4f}</td><td>{p['trained_bits_per_byte']:.4f}</td></tr>"
            for p in e["perplexity"])
        parts.append("<table><tr><th>validation set</th><th>documents</th><th>base perplexity</th><th>trained</th>"
                     "<th>change [95 %]</th><th>base bits/byte</th><th>trained bits/byte</th></tr>"
                     f"{prow}</table></section>")
        # Training curves
        parts.append(f"<section id='section-curves-{n}' data-section='Training curves'><h2>Training curves</h2>")
        parts.append(_fig_html(e["_curves_figure"], js, f"curves-{n}") + "</section>")
        # Flipped items
        parts.append(f"<section id='section-flips-{n}' data-section='Flipped items'><h2>Flipped items</h2>")
        if e["flips"]:
            frows = "".join(
                f"<tr><td>{'wrong → right' if f['direction'] == 'wrong_to_right' else 'right → wrong'}</td>"
                f"<td>{esc(f['benchmark'])}</td><td>{esc(f['formulation'])}</td><td>{esc(f['subject'])}</td>"
                f"<td>{esc(f['question'][:300])}</td><td>{'ABCDEFGHIJ'[f['gold']]}</td>"
                f"<td>{'ABCDEFGHIJ'[f['base_pred']]}</td><td>{'ABCDEFGHIJ'[f['trained_pred']]}</td></tr>"
                for f in e["flips"][:200])
            parts.append("<table><tr><th>flip</th><th>benchmark</th><th>formulation</th><th>subject</th>"
                         "<th>question</th><th>gold</th><th>base</th><th>trained</th></tr>" + frows + "</table>")
        else:
            parts.append("<p class='muted'>No item changed between the base and the trained model.</p>")
        parts.append("</section>")
        # Lineage
        lin = e["lineage"]
        mix = lin["mix"] or {}
        crow = "".join(f"<tr><td>{esc(c['step'])}</td><td>{esc(c['run_id'])}</td><td>{c['dropped']:,}</td>"
                       f"<td>{esc(json.dumps(c['counts'], default=str)[:200])}</td></tr>" for c in lin["curation"])
        parts.append(
            f"<section id='section-lineage-{n}' data-section='Lineage'><h2>Lineage</h2>"
            f"<p>Mix <b>{esc(str(mix.get('name', '–')))}</b> ({esc(str(mix.get('mix_id', '–')))}), manifest sha256 "
            f"<code>{esc(str(lin['manifest_sha256'] or '–'))}</code>, {mix.get('train_tokens') or 0:,} training "
            f"tokens. Job output: <code>{esc(lin['output_dir'])}</code></p>"
            "<h3>Curation runs</h3><table><tr><th>step</th><th>run</th><th>documents dropped</th><th>counts</th></tr>"
            f"{crow}</table><h3>Mix recipe</h3><pre>{esc(json.dumps(mix.get('recipe'), indent=1, default=str))}</pre>"
            f"<h3>Job config</h3><pre>{esc(json.dumps(lin['job_config'], indent=1, default=str))}</pre></section>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "".join(parts)


def list_jobs(ws: Workspace):  # -> pandas.DataFrame
    """Training jobs of the workspace (the `jobs` table of the training step, when it exists)."""
    import pandas as pd

    if not _table_exists(ws, "jobs"):
        return pd.DataFrame(columns=["job_id", "kind", "status", "output_dir"])
    return ws.df("SELECT job_id, kind, status, output_dir FROM jobs ORDER BY job_id DESC")


def saved_reports(ws: Workspace) -> list[Path]:
    """Reports written under the workspace's artifacts/reports folder, newest first."""
    folder = ws.artifacts / "reports"
    return sorted(folder.glob("*.html"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []


@dataclass
class TrainingReportConfig:
    """The report on the newest training job on `mix`, or on each of `mixes` side by side (each waited for while it
    runs): `out` (relative to the workspace's artifacts), `min_gain`, `min_retention`, and the evaluation settings
    in `scoring` (EvalConfig keys, the same as the evaluate step's so every score comes from its cache)."""

    mix: str | None = None
    mixes: list[str] = field(default_factory=list)
    out: str = "reports/demo.html"
    min_gain: float = 0.0
    min_retention: float = RETENTION_TARGET
    scoring: dict[str, Any] = field(default_factory=dict, metadata={"recipe": False})

    def eval_config(self) -> EvalConfig:
        # With several mixes each job's perplexity comes from its own mix's validation sets (by manifest hash).
        return TrainedModelsEvalConfig(mix=self.mix, settings=self.scoring).eval_config("", None)

    def validate(self) -> None:
        training_mixes(self.mix, self.mixes)
        self.eval_config().validate()


@dataclass
class TrainingReportResult:
    html: str
    json: str
    cards: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_training_job(ws: Workspace, cfg: TrainingReportConfig, progress: Progress = no_progress
                        ) -> TrainingReportResult:
    """Wait for the newest training job on `cfg.mix` (or on each of `cfg.mixes`) and write one report (HTML and
    JSON) on them under the artifacts."""
    from core.train.launch import wait_for_latest_training

    jobs = [wait_for_latest_training(ws, mix, progress).job_id for mix in training_mixes(cfg.mix, cfg.mixes)]
    out = ws.artifacts / cfg.out
    result = build_report(ws, ReportConfig(jobs=jobs, out=str(out), scoring=cfg.eval_config(),
                                           min_gain=cfg.min_gain, min_retention=cfg.min_retention), progress)
    return TrainingReportResult(result.html_path, result.json_path,
                                [f"{c['job']}: {c['title']} {c['text']}" for c in result.cards])


def _recipe_configs(table: dict[str, Any]) -> dict[None, TrainingReportConfig]:
    # `scoring` is a free table of EvalConfig keys (checked by `validate`); the other keys are the config's fields.
    config = config_from_recipe(TrainingReportConfig, {k: v for k, v in table.items() if k != "scoring"},
                                step="report")
    config.scoring = dict(table.get("scoring", {}))
    return {None: config}


REGISTERED_STEP = Step("report", TrainingReportConfig, report_training_job, kind="job",
                       recipe_configs=_recipe_configs)
