"""The mix's plan and stream: each component's pool of documents (never a benchmark, never a copy of a benchmark
item), the validation sets carved out of the pools, the token targets per component and phase (`plan_mix`, the
accounting the page shows live), and the ordered stream of sampled training documents (`build_stream`), all in
DuckDB temp tables. Steps 1-4 of `core.mix`'s docstring."""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

from core.corpus import document_texts
from core.mix_recipe import MixRecipe, role_of
from core.workspace import Workspace, WorkspaceError

# Rows per Arrow batch read back from DuckDB (the stream, the screening, the export).
BATCH_ROWS = 8_192


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


def build_pools(ws: Workspace, recipe: MixRecipe) -> dict[int, tuple[int, int]]:
    """Temp table mix_pool: each component's documents; returns index -> (claimed elsewhere, benchmark copies).
    Documents without a token count get 0 tokens here and are counted as uncounted."""
    _check_corpora(ws, recipe)
    ws.con.execute(
        "CREATE OR REPLACE TEMP TABLE mix_benchmark_hashes AS SELECT DISTINCT d.content_hash FROM documents d "
        "JOIN corpora c ON c.name = d.corpus WHERE c.role = 'benchmark'")
    ws.con.execute(
        "CREATE OR REPLACE TEMP TABLE mix_pool (doc_id VARCHAR, comp_idx INTEGER, tokens BIGINT, "
        "counted BOOLEAN, content_hash VARCHAR, corpus VARCHAR, role VARCHAR, budget BIGINT)")
    # Every component draws from the current documents: they are resolved once (the view checks each document
    # against every active drop), not twice per component.
    ws.con.execute(
        "CREATE OR REPLACE TEMP TABLE mix_current AS SELECT d.doc_id, d.token_count, d.content_hash, d.corpus, "
        "c.role FROM current_documents d JOIN corpora c ON c.name = d.corpus WHERE c.role <> 'benchmark'")
    exclusions: dict[int, tuple[int, int]] = {}
    for index, comp in enumerate(recipe.components):
        where = ["TRUE"]
        params: dict[str, Any] = {}
        if comp.corpora:
            where.append("d.corpus IN (SELECT unnest($corpora))")
            params["corpora"] = comp.corpora
        elif role_of(comp):
            where.append("d.role = $role")
            params["role"] = role_of(comp)
        if comp.source != "corpora":
            where.append(f"d.doc_id IN (SELECT doc_id FROM {comp.source}_documents)")
        candidates = (f"SELECT d.doc_id, d.token_count, d.content_hash, d.corpus, d.role FROM mix_current d "
                      f"WHERE {' AND '.join(where)}")
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


def carve_validation(ws: Workspace, recipe: MixRecipe) -> None:
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


def plan_from_pools(ws: Workspace, recipe: MixRecipe, exclusions: dict[int, tuple[int, int]]) -> MixPlan:
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
        exclusions = build_pools(ws, recipe)
        carve_validation(ws, recipe)
        return plan_from_pools(ws, recipe, exclusions)
    finally:
        drop_temp_tables(ws)


def drop_temp_tables(ws: Workspace) -> None:
    for name in ("mix_current", "mix_pool", "mix_validation", "mix_benchmark_hashes", "mix_stream", "mix_comp_params",
                 "mix_phase_params", "mix_screened"):
        with contextlib.suppress(Exception):
            ws.con.execute(f"DROP TABLE IF EXISTS temp.{name}")


def preview_mix(ws: Workspace, recipe: MixRecipe, samples: int = 4
                ) -> tuple[MixPlan, dict[str, list[dict[str, Any]]]]:
    """What the Mix page shows, from one build of the pools (on 1M documents a build costs ~0.5 s): the plan, as
    `plan_mix` gives it, and a few documents (seeded) each component would draw from, with the first 1,200
    characters of their texts."""
    recipe.validate()
    try:
        exclusions = build_pools(ws, recipe)
        rows = ws.query(
            """SELECT comp_idx, doc_id, corpus, tokens FROM (
                   SELECT comp_idx, doc_id, corpus, tokens, row_number() OVER (
                       PARTITION BY comp_idx ORDER BY md5(? || ':sample:' || doc_id), doc_id) AS k
                   FROM mix_pool QUALIFY k <= ?)
               ORDER BY comp_idx, k""",
            [str(recipe.seed), samples])
        carve_validation(ws, recipe)
        plan = plan_from_pools(ws, recipe, exclusions)
    finally:
        drop_temp_tables(ws)
    texts = document_texts(ws, [row[1] for row in rows])  # read for the picked documents only
    picked: dict[str, list[dict[str, Any]]] = {c.name: [] for c in recipe.components}
    for index, doc_id, corpus, tokens in rows:
        picked[recipe.components[index].name].append(
            {"doc_id": doc_id, "corpus": corpus, "tokens": tokens, "text": texts[doc_id][:1200]})
    return plan, picked


# --- building the mix ----------------------------------------------------------------------------------------
def build_stream(ws: Workspace, recipe: MixRecipe, plan: MixPlan) -> None:
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
