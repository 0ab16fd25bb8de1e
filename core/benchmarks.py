"""Benchmarks: held-out evaluation sets, registered with their kind (domain or general retention) and subjects.

A benchmark is a corpus of role 'benchmark' ingested by `core.ingest` (multiple-choice records of layout 'mcq',
free-text question/answer records of layout 'qa'). Registering it fills `benchmarks` (kind, subjects, item count)
and `benchmark_items` (question, choices, gold answer and subject per item, one row per document), which recall
and decontamination read. Re-registering a benchmark refreshes its rows, so items ingested later are picked up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from core.ingest import IngestConfig, expand_sources, ingest
from core.progress import Progress, no_progress
from core.record_layouts import gold_index
from core.steps import param
from core.workspace import Workspace, WorkspaceError

BENCHMARK_KINDS = ("domain", "general")
BENCHMARK_FORMATS = ("auto", "mcq", "qa")  # auto: multiple choice when records have choices, else free text
_SPLIT_SUFFIXES = ("_test", "_dev", "_val", "_validation", "_train")


@dataclass
class BenchmarkImportConfig:
    sources: list[str] = param(positional=True, required=True, help="files, folders or globs of the benchmark")
    name: str = param(required=True, help="benchmark (corpus) name")  # the benchmark's corpus name
    kind: str = param(required=True, choices=BENCHMARK_KINDS,
                      help="domain: measures domain gain; general: measures retention")
    fmt: str = param("auto", flag="--format", choices=BENCHMARK_FORMATS, show_default=False,
                     help="mcq: question/choices/answer; qa: free-text question/answer; auto: by record")
    encoding: str | None = param(None, help="force an encoding (default: detected; CMMLU CSVs may be GB18030)")
    description: str = param("", help="a line on what the benchmark measures")


@dataclass
class BenchmarkInfo:
    corpus: str
    kind: str
    items: int
    subjects: dict[str, int] = field(default_factory=dict)
    free_text_items: int = 0
    items_without_answer: int = 0


@dataclass
class BenchmarkImportResult:
    ingest_run_id: str
    documents_added: int
    errors: int
    benchmark: BenchmarkInfo
    ingest_counts: dict[str, Any] = field(default_factory=dict)


def arrow_query(ws: Workspace, sql: str, params: list[Any] | None = None) -> pa.Table:
    """A query's result as an Arrow table, through its own cursor (no result left open on `ws.con`)."""
    cursor = ws.con.cursor()
    try:
        return cursor.sql(sql, params=params).to_arrow_table()
    finally:
        cursor.close()


def subject_from_file(source_file: str | None) -> str | None:
    """`.../anatomy_test.csv` -> 'anatomy' (MMLU and CMMLU name their files by subject)."""
    if not source_file:
        return None
    stem = Path(source_file).name.split(".")[0]
    for suffix in _SPLIT_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem or None


def item_parts(record: dict[str, Any] | None, text: str) -> tuple[str, list[str], int | None, str]:
    """(question, choices, answer index, gold answer text) of one benchmark document."""
    if not record:
        return text, [], None, ""
    question = str(record.get("question") or text)
    choices = [str(c) for c in record.get("choices") or []]
    try:  # records stored before items were checked at ingest may hold 2.5 or true: no gold answer, not a guess
        index = gold_index(record.get("answer_index"), len(choices))
    except ValueError:
        index = None
    answer = choices[index] if index is not None else str(record.get("answer") or "")
    return question, choices, index, answer


def register_benchmark(ws: Workspace, corpus: str, kind: str, description: str = "") -> BenchmarkInfo:
    """Record (or refresh) `corpus` as a benchmark of `kind` and derive its items from its documents."""
    if kind not in BENCHMARK_KINDS:
        raise WorkspaceError(f"benchmark kind must be one of {', '.join(BENCHMARK_KINDS)}, not {kind!r}")
    role = ws.scalar("SELECT role FROM corpora WHERE name = ?", [corpus])
    if role is None:
        raise WorkspaceError(f"no corpus named {corpus!r}")
    if role != "benchmark":
        raise WorkspaceError(f"corpus {corpus!r} has role {role!r}; only role 'benchmark' corpora are benchmarks")
    rows = ws.query("SELECT doc_id, text, record, source_file FROM documents WHERE corpus = ? ORDER BY doc_id",
                    [corpus])
    cols: dict[str, list] = {k: [] for k in ("doc_id", "item_id", "subject", "question", "choices",
                                              "answer_index", "answer", "item_text", "format")}
    for doc_id, text, record_json, source_file in rows:
        record = json.loads(record_json) if record_json else None
        question, choices, index, answer = item_parts(record, text)
        subject = (record or {}).get("subject") or subject_from_file(source_file) or "(none)"
        cols["doc_id"].append(doc_id)
        cols["item_id"].append(str((record or {}).get("item_id") or doc_id))
        cols["subject"].append(str(subject))
        cols["question"].append(question)
        cols["choices"].append(json.dumps(choices, ensure_ascii=False))
        cols["answer_index"].append(index)
        cols["answer"].append(answer)
        cols["item_text"].append(text)
        cols["format"].append("mcq" if choices else "qa")
    table = pa.table({**cols, "answer_index": pa.array(cols["answer_index"], pa.int32())})
    with ws.transaction():
        ws.con.execute("DELETE FROM benchmark_items WHERE corpus = ?", [corpus])
        ws.con.register("new_items", table)
        ws.con.execute(
            "INSERT INTO benchmark_items (doc_id, corpus, item_id, subject, question, choices, answer_index, "
            "answer, item_text, format) SELECT doc_id, ?, item_id, subject, question, choices, answer_index, "
            "answer, item_text, format FROM new_items", [corpus])
        ws.con.unregister("new_items")
        subjects = dict(ws.query("SELECT subject, count(*) FROM benchmark_items WHERE corpus = ? GROUP BY 1 "
                                 "ORDER BY 2 DESC, 1", [corpus]))
        ws.con.execute(
            "INSERT OR REPLACE INTO benchmarks (corpus, kind, description, subjects, items, registered_at) "
            "VALUES (?, ?, ?, ?, ?, current_timestamp)",
            [corpus, kind, description, json.dumps(subjects, ensure_ascii=False), len(rows)])
    return BenchmarkInfo(corpus=corpus, kind=kind, items=len(rows), subjects=subjects,
                         free_text_items=cols["format"].count("qa"),
                         items_without_answer=sum(1 for a in cols["answer"] if not a))


def import_benchmark(ws: Workspace, cfg: BenchmarkImportConfig,
                     progress: Progress = no_progress) -> BenchmarkImportResult:
    """Ingest benchmark files through `core.ingest` and register them.

    Normalised JSONL (question, choices, answer_index, subject), MMLU-style CSV (question, options A-D or
    choice0.., answer letter or index), CMMLU CSV and free-text sets (question, answer) are all read by the
    ingest readers; this only chooses the layout and records the kind and subjects.
    """
    if cfg.kind not in BENCHMARK_KINDS:
        raise WorkspaceError(f"--kind must be one of {', '.join(BENCHMARK_KINDS)}, not {cfg.kind!r}")
    if cfg.fmt not in BENCHMARK_FORMATS:
        raise WorkspaceError(f"--format must be one of {', '.join(BENCHMARK_FORMATS)}, not {cfg.fmt!r}")
    expand_sources(cfg.sources)  # a clear error for a missing file before anything is written
    layout = {"auto": "auto", "mcq": "mcq", "qa": "qa"}[cfg.fmt]
    result = ingest(ws, IngestConfig(sources=cfg.sources, corpus=cfg.name, role="benchmark", layout=layout,
                                     encoding=cfg.encoding), progress)
    info = register_benchmark(ws, cfg.name, cfg.kind, cfg.description)
    if info.items == 0:
        raise WorkspaceError(f"benchmark {cfg.name!r} has no items: {result.errors} record(s) could not be read "
                             "(see `studio status` or the ingest_errors table)")
    return BenchmarkImportResult(ingest_run_id=result.run_id, documents_added=result.documents_added,
                                 errors=result.errors, benchmark=info, ingest_counts=result.counts())


def benchmarks(ws: Workspace) -> list[dict[str, Any]]:
    """Registered benchmarks with kind, item count and subjects."""
    rows = ws.query("SELECT corpus, kind, items, subjects, description FROM benchmarks ORDER BY kind, corpus")
    return [{"corpus": c, "kind": k, "items": n, "subjects": json.loads(s) if s else {}, "description": d}
            for c, k, n, s, d in rows]


def flagged_item_counts(ws: Workspace):  # -> pandas.DataFrame
    """Per benchmark and flag ('near' from the recall's cap, 'ngram' from the contamination check): how many of
    its items the latest runs found a copy of in training data."""
    return ws.df("SELECT i.corpus AS benchmark, f.flag, count(DISTINCT f.item_doc_id) AS items "
                 "FROM flagged_benchmark_items f JOIN benchmark_items i ON i.doc_id = f.item_doc_id GROUP BY 1, 2")


def item_with_answer(ws: Workspace, item_doc_id: str) -> str | None:
    """A benchmark item's rendered text followed by its gold answer (what the page shows beside a training
    document that shares a span with it); None for an unknown item."""
    return ws.scalar("SELECT item_text || chr(10) || 'Answer: ' || answer FROM benchmark_items WHERE doc_id = ?",
                     [item_doc_id])


def benchmark_names(ws: Workspace, names: list[str] | None = None) -> list[str]:
    """The benchmark corpora to use: `names` checked against the workspace, or every benchmark corpus."""
    known = [r[0] for r in ws.query("SELECT name FROM corpora WHERE role = 'benchmark' ORDER BY name")]
    if names is None:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise WorkspaceError(f"not benchmark corpora of this workspace: {', '.join(unknown)} "
                             f"(benchmarks: {', '.join(known) or 'none'})")
    return list(names)


def ensure_registered(ws: Workspace, names: list[str]) -> None:
    """Benchmarks ingested without `bench-import` (plain `studio ingest --role benchmark`) are registered as
    domain benchmarks on first use, so their items exist; the kind can be changed with bench-import --kind."""
    if ws.read_only:
        return
    for name in names:
        registered = ws.scalar("SELECT items FROM benchmarks WHERE corpus = ?", [name])
        documents = ws.scalar("SELECT count(*) FROM documents WHERE corpus = ?", [name])
        if registered is None:
            register_benchmark(ws, name, "domain")
        elif registered != documents:
            kind = ws.scalar("SELECT kind FROM benchmarks WHERE corpus = ?", [name])
            register_benchmark(ws, name, kind)
