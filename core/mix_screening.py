"""Decontamination before the export: every sampled training document is checked against the benchmarks, the
documents it drops leave the pools, and the stream is sampled again, so the budget and the shares hold."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from core.mix_plan import BATCH_ROWS, MixPlan, build_stream, plan_from_pools
from core.mix_recipe import MixRecipe
from core.progress import Progress
from core.workspace import Workspace, WorkspaceError

# Refill rounds after decontamination: each drops what the new sample brought in; contaminated documents are
# rare, so the second round nearly always finds none.
MAX_SCREEN_ROUNDS = 8


@dataclass
class Screening:
    """Decontamination run on the sampled training documents before the export, so the documents it drops are
    replaced from the pool and the budget and shares hold. `verdicts` holds the contaminated documents only:
    doc_id -> (the text to export, None when dropped; the overlaps found)."""

    verdicts: dict[str, tuple[str | None, list[Any]]] = field(default_factory=dict)
    rounds: int = 0
    screened_documents: int = 0
    refilled_tokens: int = 0
    # The plan before anything was dropped: what the export is held to.
    planned_tokens: int = 0
    planned_shares: dict[str, float] = field(default_factory=dict)


def screen_texts(checker: ContaminationChecker, texts: list[str]) -> list[tuple[str | None, list[Any]]]:
    """(the cleaned text, None when dropped; the overlaps) for each text; unchanged texts come back as they are."""
    found = checker.find_many(texts) if hasattr(checker, "find_many") else None
    out = []
    for k, text in enumerate(texts):
        if found is None:
            out.append(checker.cut(text))
        else:
            out.append((checker.apply(text, found[k]) if found[k] else text, found[k]))
    return out


def screen_and_refill(ws: Workspace, recipe: MixRecipe, plan: MixPlan, exclusions: dict[int, tuple[int, int]],
                       checker: ContaminationChecker, progress: Progress) -> tuple[MixPlan, Screening]:
    """Sample, check every sampled document not checked yet, take the dropped ones out of the budget and sample
    again, until a sample holds no new drop. Leaves mix_stream built for the final plan."""
    screening = Screening(planned_tokens=plan.planned_tokens, planned_shares={
        cp.name: cp.planned_tokens / plan.planned_tokens for cp in plan.components} if plan.planned_tokens else {})
    ws.con.execute("CREATE OR REPLACE TEMP TABLE mix_screened (doc_id VARCHAR)")
    sql = ("SELECT u.doc_id, d.text FROM (SELECT DISTINCT doc_id FROM mix_stream WHERE doc_id NOT IN "
           "(SELECT doc_id FROM mix_screened)) u JOIN documents d USING (doc_id) ORDER BY u.doc_id")
    while True:
        build_stream(ws, recipe, plan)
        screening.rounds += 1
        dropped: list[str] = []
        # On this connection, not a cursor of its own as `_stream` takes: mix_stream is a temp table of this one.
        for batch in ws.con.sql(sql).to_arrow_reader(BATCH_ROWS):
            ids = batch.column("doc_id").to_pylist()
            texts = batch.column("text").to_pylist()
            for doc_id, text, (new, overlaps) in zip(ids, texts, screen_texts(checker, texts), strict=True):
                if new is None or new != text:
                    screening.verdicts[doc_id] = (new, overlaps)
                    if new is None:
                        dropped.append(doc_id)
            screening.screened_documents += len(ids)
            progress(0.1, f"decontamination before export: {screening.screened_documents:,} documents checked")
        ws.con.execute("INSERT INTO mix_screened SELECT DISTINCT doc_id FROM mix_stream "
                       "WHERE doc_id NOT IN (SELECT doc_id FROM mix_screened)")
        if not dropped or screening.rounds >= MAX_SCREEN_ROUNDS:
            break
        screening.refilled_tokens += int(ws.scalar(
            "SELECT coalesce(sum(budget), 0) FROM mix_pool WHERE doc_id IN (SELECT unnest(?))", [dropped]))
        ws.con.execute("UPDATE mix_pool SET budget = 0 WHERE doc_id IN (SELECT unnest(?))", [dropped])
        plan = plan_from_pools(ws, recipe, exclusions)
    if dropped:  # still dropping after the last round: the next sample was never checked
        ws.con.execute("UPDATE mix_pool SET budget = 0 WHERE doc_id IN (SELECT unnest(?))", [dropped])
    return plan, screening


class ContaminationChecker(Protocol):
    """What the export needs of core.decontam's ContaminationIndex (which also offers the faster batch pair
    `find_many(texts)` / `apply(text, overlaps)`, used when present)."""

    def cut(self, text: str) -> tuple[str | None, list[Any]]: ...


def contamination_checker(ws: Workspace, recipe: MixRecipe) -> ContaminationChecker | None:
    if not recipe.decontaminate:
        return None
    try:
        from core.decontam import DecontamConfig, contamination_index
    except ImportError as exc:
        raise WorkspaceError("decontamination is not available in this build (core.decontam); set "
                             "decontaminate = false in the recipe to export without it") from exc
    return contamination_index(ws, DecontamConfig(**recipe.decontam))
