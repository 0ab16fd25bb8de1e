"""The mix's export: the stream written out as files in a partial folder that replaces the export folder only
when complete (never a folder the studio did not write), the membership recorded in `mix_members`, and a
manifest with every file's hash. Step 5 of `core.mix`'s docstring."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from core.ingest import file_sha256
from core.mix_formats import ExportedFile, TextSink, dataset_info, instruction_row
from core.mix_plan import (
    BATCH_ROWS,
    MixPlan,
    build_pools,
    build_stream,
    carve_validation,
    drop_temp_tables,
    plan_from_pools,
)
from core.mix_recipe import MixRecipe, exports_folder, recipe_to_dict, recipe_toml
from core.mix_screening import (
    ContaminationChecker,
    Screening,
    contamination_checker,
    screen_and_refill,
    screen_texts,
)
from core.progress import Progress, no_progress
from core.steps import param
from core.workspace import Workspace, WorkspaceError, code_version

MANIFEST_FORMAT = "studio-mix/1"
# How far an export may miss its planned budget and shares (the tolerance tests/test_mix.py holds exports to).
EXPORT_TOLERANCE = 0.01
# DuckDB's memory during an export (it spills beyond it). bench/mix.py, 1.01M documents on 2 cores: without a
# limit the export peaked at 2,205 MB RSS (10.9 s); with 512MB at 788 MB (12.1 s), and a quarter-size export at
# 771 MB, so peak memory no longer grows with the export. Decontamination adds its index (1,220 MB in all).
EXPORT_MEMORY_LIMIT = "512MB"


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


@dataclass
class MixExportConfig:
    """What `studio mix` exports (its options) and the Mix page launches: a recipe file, built and exported."""

    recipe: str | None = param(None, metavar="FILE", help="the recipe (TOML); see `--write-preset` for a starting "
                                                          "point")
    out: str | None = param(None, metavar="DIR",
                            help="export folder (default: WORKSPACE/artifacts/exports/<recipe name>)")
    memory_limit: str = param(EXPORT_MEMORY_LIMIT, help="DuckDB's memory during the export; it spills to disk "
                                                        "beyond it")

    def validate(self) -> None:
        if not self.recipe:
            raise ValueError("--recipe FILE is required")


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
    _forget_unfinished_mixes(ws)
    if recipe.count_missing_tokens:
        exclusions = build_pools(ws, recipe)
        if ws.scalar("SELECT count(*) FROM mix_pool WHERE NOT counted"):
            from core.tokens import count_tokens

            drop_temp_tables(ws)
            count_tokens(ws, progress=lambda f, m: progress(0.05 * max(f, 0), f"counting tokens: {m}"))
    exclusions = build_pools(ws, recipe)
    uncounted = ws.scalar("SELECT count(*) FROM mix_pool WHERE NOT counted")
    if uncounted:
        drop_temp_tables(ws)
        raise WorkspaceError(f"{uncounted:,} documents of the mix have no token count; run `studio tokens` first")
    carve_validation(ws, recipe)
    plan = plan_from_pools(ws, recipe, exclusions)
    if plan.planned_tokens <= 0:
        drop_temp_tables(ws)
        raise WorkspaceError("the mix would be empty: " + ("; ".join(plan.warnings) or "no documents"))
    if checker is None:
        checker = contamination_checker(ws, recipe)
    params = recipe_to_dict(recipe)
    partial = _prepare_folder(out_path)
    try:
        screening = None
        if checker is not None:
            plan, screening = screen_and_refill(ws, recipe, plan, exclusions, checker, progress)
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
            _forget_unfinished_mixes(ws)
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        drop_temp_tables(ws)
    progress(1.0, f"mix {recipe.name} exported to {out_path}")
    return result


def _forget_unfinished_mixes(ws: Workspace) -> None:
    """Remove the membership rows of mix runs that did not finish. A failed build removes its own as it fails; a
    killed one cannot (its rows are committed as they are written, its run is marked failed when the workspace is
    next opened), so each build first removes what such a run left."""
    ws.con.execute("DELETE FROM mix_members WHERE mix_id IN (SELECT run_id FROM runs WHERE step = 'mix' "
                   "AND status <> 'ok')")


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
    """Write the mix into `folder` (named as `final` in the manifest): membership, texts, instruction records,
    the members file, dataset_info.json, the recipe and the manifest."""
    progress(0.08, "sampling and interleaving")
    total_rows = _record_membership(ws, recipe, plan, mix_id, screening)
    progress(0.15, f"exporting {total_rows:,} training documents")
    tally = DecontamTally(checker, screening)
    written, rows = _write_texts(ws, recipe, plan, mix_id, folder, tally, total_rows, progress)
    progress(0.88, "instruction records and membership")
    tally.record_changes(ws, mix_id)
    sft_skipped = Counter()
    if recipe.instruction_format != "none":
        sft_skipped = _write_sft(ws, recipe, mix_id, folder, written, rows)
    members_rows = _write_members(ws, mix_id, folder, written, rows)
    files = _exported_files(recipe, folder, final, written, rows)

    components, train_documents, train_tokens = _component_figures(ws, plan, mix_id)
    if screening is not None:
        _warn_if_off_target(plan, screening, components, train_tokens)
    validation = {split: {"documents": int(n), "tokens": int(t or 0)} for split, n, t in ws.query(
        "SELECT split, count(*) FILTER (WHERE decontam IS DISTINCT FROM 'dropped'), "
        "sum(tokens) FILTER (WHERE decontam IS DISTINCT FROM 'dropped') FROM mix_members "
        "WHERE mix_id = ? AND split <> 'train' GROUP BY split ORDER BY split", [mix_id])}
    window = _window_check(ws, mix_id, recipe)
    decontam_summary = tally.summary(ws, recipe, sft_skipped)
    manifest = _manifest(ws, recipe, plan, mix_id, final, components, validation, window, decontam_summary,
                         files, train_documents, train_tokens, members_rows)
    manifest_path = folder / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n",
                             encoding="utf-8")
    files["manifest.json"] = ExportedFile(str(final / "manifest.json"), 1, manifest_path.stat().st_size,
                                          file_sha256(manifest_path))
    return MixResult(run_id=mix_id, name=recipe.name, out_dir=str(final), plan=plan,
                     train_documents=train_documents, train_tokens=train_tokens, components=components,
                     validation=validation, decontamination=decontam_summary, window=window, files=files,
                     manifest=str(final / "manifest.json"))


def _record_membership(ws: Workspace, recipe: MixRecipe, plan: MixPlan, mix_id: str,
                       screening: Screening | None) -> int:
    """The stream's and the validation sets' documents into `mix_members`; returns the training rows."""
    if screening is None:  # a screened export has its stream built already
        build_stream(ws, recipe, plan)
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
    return ws.scalar("SELECT count(*) FROM mix_members WHERE mix_id = ? AND split = 'train'", [mix_id])


class DecontamTally:
    """Decontamination as the texts are written: each batch's texts cleaned (from the screening's verdicts for
    training documents when screened, else checked here), and what it dropped or cut counted and kept for
    `mix_members` and the manifest."""

    def __init__(self, checker: ContaminationChecker | None, screening: Screening | None) -> None:
        self.checker = checker
        self.screening = screening
        self.changes: dict[str, list[Any]] = {"split": [], "position": [], "action": [], "removed_chars": []}
        self.counts: dict[str, Any] = {
            "enabled": checker is not None, "checked_documents": 0, "dropped_documents": 0, "cut_documents": 0,
            "removed_chars": 0, "dropped_tokens": 0, "items": Counter(), "by_component": Counter(),
            "examples": []}

    def clean(self, batch: pa.RecordBatch, split: str) -> list[str]:
        """The batch's texts as exported: unchanged, cut, or left out when dropped."""
        texts = batch.column("text").to_pylist()
        if self.checker is None:
            return texts
        decontam, changes = self.counts, self.changes
        out = []
        positions = batch.column("position").to_pylist()
        if split == "train" and self.screening is not None:  # every training document was checked when sampled
            verdicts = [self.screening.verdicts.get(doc_id, (text, [])) for doc_id, text in
                        zip(batch.column("doc_id").to_pylist(), texts, strict=True)]
        else:
            verdicts = screen_texts(self.checker, texts)
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

    def record_changes(self, ws: Workspace, mix_id: str) -> None:
        """What was dropped or cut, into `mix_members` (decontam, removed_chars)."""
        changes = self.changes
        if not changes["position"]:
            return
        ws.con.register("mix_decontam_changes", pa.table({
            "split": changes["split"], "position": pa.array(changes["position"], pa.int64()),
            "action": changes["action"], "removed_chars": pa.array(changes["removed_chars"], pa.int64())}))
        ws.con.execute("UPDATE mix_members SET decontam = c.action, removed_chars = c.removed_chars "
                       "FROM mix_decontam_changes c WHERE mix_members.mix_id = ? AND mix_members.split = c.split "
                       "AND mix_members.position = c.position", [mix_id])
        ws.con.unregister("mix_decontam_changes")

    def summary(self, ws: Workspace, recipe: MixRecipe, sft_skipped: Counter) -> dict[str, Any]:
        """The manifest's decontamination block."""
        decontam, screening = self.counts, self.screening
        item_corpus = {}
        if decontam["items"]:
            ws.con.register("mix_items", pa.table({"doc_id": list(decontam["items"])}))
            item_corpus = dict(ws.query("SELECT d.doc_id, d.corpus FROM documents d JOIN mix_items USING (doc_id)"))
            ws.con.unregister("mix_items")
        by_benchmark = Counter()
        for item, n in decontam["items"].items():
            by_benchmark[item_corpus.get(item, "unknown")] += n
        return {
            "enabled": decontam["enabled"], "config": recipe.decontam,
            "checked_documents": decontam["checked_documents"],
            "dropped_documents": decontam["dropped_documents"], "cut_documents": decontam["cut_documents"],
            "removed_chars": decontam["removed_chars"], "dropped_tokens": decontam["dropped_tokens"],
            "by_component": dict(sorted(decontam["by_component"].items())),
            "benchmark_items_matched": len(decontam["items"]),
            "item_matches_by_benchmark": dict(sorted(by_benchmark.items())),
            "top_items": [{"item": k, "documents": n} for k, n in
                          sorted(decontam["items"].items(), key=lambda kv: (-kv[1], kv[0]))[:20]],
            "examples": decontam["examples"], "sft_records_skipped": dict(sft_skipped),
            "refill": {"rounds": screening.rounds if screening else 0,
                       "screened_documents": screening.screened_documents if screening else 0,
                       "refilled_tokens": screening.refilled_tokens if screening else 0}}


MEMBER_TEXTS_SQL = ("SELECT m.position, m.doc_id, m.component, m.tokens, d.text FROM mix_members m "
                    "JOIN documents d USING (doc_id) WHERE m.mix_id = ? AND m.split = ? ORDER BY m.position")


def _write_texts(ws: Workspace, recipe: MixRecipe, plan: MixPlan, mix_id: str, folder: Path, tally: DecontamTally,
                 total_rows: int, progress: Progress) -> tuple[dict[str, Path], dict[str, int]]:
    """The training texts in the recipe's formats and each validation set as JSONL, cleaned by `tally`;
    returns the files written and their rows, by manifest key."""
    sink = TextSink(folder, "train", recipe.formats)
    done = 0
    try:
        for batch in _stream(ws, MEMBER_TEXTS_SQL, [mix_id, "train"]):
            sink.write(tally.clean(batch, "train"))
            done += batch.num_rows
            progress(0.15 + 0.7 * done / max(total_rows, 1), f"{done:,} / {total_rows:,} documents written")
    finally:
        sink.close()
    written: dict[str, Path] = {f"train.{fmt}": p for fmt, p in sink.paths.items()}
    rows: dict[str, int] = dict.fromkeys(written, sink.rows)

    for split in sorted(plan.validation):
        vsink = TextSink(folder, split, ["jsonl"])
        try:
            for batch in _stream(ws, MEMBER_TEXTS_SQL, [mix_id, split]):
                vsink.write(tally.clean(batch, split))
        finally:
            vsink.close()
        written[f"{split}.jsonl"] = vsink.paths["jsonl"]
        rows[f"{split}.jsonl"] = vsink.rows
    return written, rows


def _write_sft(ws: Workspace, recipe: MixRecipe, mix_id: str, folder: Path, written: dict[str, Path],
               rows: dict[str, int]) -> Counter:
    """The instruction records of the mix in the recipe's instruction format (added to `written` / `rows` when
    there are any); returns the records left out, by reason."""
    sft_skipped = Counter()
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
    return sft_skipped


MEMBER_COLUMNS = ["split", "position", "doc_id", "component", "phase", "copy", "corpus", "tokens", "decontam",
                  "removed_chars"]


def _write_members(ws: Workspace, mix_id: str, folder: Path, written: dict[str, Path], rows: dict[str, int]) -> int:
    """The membership, for tracing a trained model back to every document (the manifest names this file)."""
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
    return members_rows


def _exported_files(recipe: MixRecipe, folder: Path, final: Path, written: dict[str, Path],
                    rows: dict[str, int]) -> dict[str, ExportedFile]:
    """Every file written so far with its hash, plus dataset_info.json and recipe.toml (written here)."""
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
    return files


def _component_figures(ws: Workspace, plan: MixPlan, mix_id: str) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Per-component figures as exported (after decontamination drops), the training documents and tokens."""
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
    return components, train_documents, train_tokens


def _manifest(ws: Workspace, recipe: MixRecipe, plan: MixPlan, mix_id: str, final: Path,
              components: dict[str, dict[str, Any]], validation: dict[str, dict[str, int]], window: dict[str, Any],
              decontam_summary: dict[str, Any], files: dict[str, ExportedFile], train_documents: int,
              train_tokens: int, members_rows: int) -> dict[str, Any]:
    """The manifest: the recipe, the budget, every figure, the filtering and ingest runs behind the source
    corpora, and every file with its hash."""
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
    return {
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
        "document_ids": {"file": "members.parquet", "rows": members_rows, "columns": MEMBER_COLUMNS},
        "files": {key: {"file": Path(f.path).name, "rows": f.rows, "bytes": f.bytes, "sha256": f.sha256}
                  for key, f in sorted(files.items())},
        # Everything above is the same for the same recipe, seed and workspace; this block is not.
        "run": {"run_id": mix_id, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "code_version": code_version(), "workspace": str(ws.path), "export_dir": str(final)},
    }
