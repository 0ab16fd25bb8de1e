"""Ingest: corpora from files, folders and hubs into the workspace's `documents`.

Each file is one transaction: its documents go into a staging table, then into `documents` in a single
statement, together with its errors and its `ingested_files` row. A process killed mid-file therefore leaves
nothing of that file behind. Document ids are derived from (corpus, file, text, occurrence of that text in the
file), so re-ingesting a file adds nothing and a changed file adds only its new documents, while natural
duplicates inside a file stay separate documents for the dedup step to find.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa

from core.progress import Progress
from core.readers import (
    FORMAT_BY_SUFFIX,
    ReadOptions,
    SourceError,
    SourceInfo,
    SourceRecord,
    read_hub,
    read_source,
    split_suffixes,
)
from core.text import clean_text, content_hash, detect_language, raw_hash
from core.workspace import Workspace, WorkspaceError


@dataclass
class IngestConfig:
    sources: list[str]  # files, folders, globs or hf://owner/name[:config][/split]
    corpus: str
    role: str
    fmt: str = "auto"
    layout: str = "auto"
    text_field: str | None = None
    template: str | None = None
    txt_unit: str = "paragraph"
    encoding: str | None = None
    pattern: str = "**/*"  # files taken from a folder
    min_chars: int = 1
    max_chars: int = 1_000_000
    batch_size: int = 20_000

    def read_options(self) -> ReadOptions:
        return ReadOptions(fmt=self.fmt, layout=self.layout, text_field=self.text_field, template=self.template,
                           txt_unit=self.txt_unit, encoding=self.encoding)


@dataclass
class FileSummary:
    file: str
    status: str  # ingested | unchanged | failed
    documents_added: int = 0
    documents_seen: int = 0
    already_present: int = 0
    errors: int = 0
    error_reasons: dict[str, int] = field(default_factory=dict)
    mojibake_fixed: int = 0
    control_chars_removed: int = 0
    encoding: str = ""
    fmt: str = ""
    message: str = ""


@dataclass
class IngestResult:
    run_id: str
    corpus: str
    files: list[FileSummary]

    @property
    def documents_added(self) -> int:
        return sum(f.documents_added for f in self.files)

    @property
    def errors(self) -> int:
        return sum(f.errors for f in self.files)

    def counts(self) -> dict[str, int]:
        reasons: Counter[str] = Counter()
        for f in self.files:
            reasons.update(f.error_reasons)
        return {
            "files": len(self.files),
            "files_ingested": sum(f.status == "ingested" for f in self.files),
            "files_unchanged": sum(f.status == "unchanged" for f in self.files),
            "files_failed": sum(f.status == "failed" for f in self.files),
            "documents_seen": sum(f.documents_seen for f in self.files),
            "documents_added": self.documents_added,
            "already_present": sum(f.already_present for f in self.files),
            "errors": self.errors,
            "mojibake_fixed": sum(f.mojibake_fixed for f in self.files),
            "control_chars_removed": sum(f.control_chars_removed for f in self.files),
            **{f"error:{k}": v for k, v in sorted(reasons.items())},
        }

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "corpus": self.corpus, "counts": self.counts(),
                "files": [asdict(f) for f in self.files]}


STAGING_SCHEMA = pa.schema([
    ("text", pa.large_string()), ("kind", pa.string()), ("record", pa.large_string()),
    ("char_count", pa.int32()), ("language", pa.string()), ("content_hash", pa.string()),
    ("raw_hash", pa.string()), ("source_line", pa.int64()), ("byte_offset", pa.int64()), ("repairs", pa.string()),
])


def expand_sources(sources: Iterable[str], pattern: str = "**/*") -> list[str]:
    """Files (sorted, recursive for folders, globs expanded) and hub specs, in the order given."""
    out: list[str] = []
    for source in sources:
        if source.startswith("hf://"):
            out.append(source)
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.glob(pattern) if p.is_file() and not p.name.startswith("."))
            out.extend(str(p) for p in files)
        elif path.exists():
            out.append(str(path))
        elif any(ch in source for ch in "*?["):
            matches = sorted(glob.glob(source, recursive=True))
            if not matches:
                raise SourceError(f"no file matches {source}")
            out.extend(m for m in matches if Path(m).is_file())
        else:
            raise SourceError(f"no such file or folder: {source}")
    return out


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


class _Batch:
    """Column buffers for processed documents, flushed to Arrow every `batch_size` documents."""

    def __init__(self) -> None:
        self.cols: dict[str, list] = {name: [] for name in STAGING_SCHEMA.names}

    def __len__(self) -> int:
        return len(self.cols["text"])

    def to_arrow(self) -> pa.Table:
        table = pa.table(self.cols, schema=STAGING_SCHEMA)
        self.__init__()
        return table


def _process(records: Iterator[SourceRecord], cfg: IngestConfig, summary: FileSummary,
             errors: list[tuple], batch: _Batch, flush: Callable[[], None]) -> None:
    cols = batch.cols
    text_col, kind_col, record_col = cols["text"], cols["kind"], cols["record"]
    chars_col, lang_col, chash_col, rhash_col = cols["char_count"], cols["language"], cols["content_hash"], \
        cols["raw_hash"]
    line_col, offset_col, repairs_col = cols["source_line"], cols["byte_offset"], cols["repairs"]
    reasons: Counter[str] = Counter()
    for rec in records:
        summary.documents_seen += 1
        if rec.error is None:
            cleaned = clean_text(rec.text or "")
            text = cleaned.text
            if len(text) < cfg.min_chars:
                rec.error = "empty document" if not text else f"shorter than {cfg.min_chars} characters"
                rec.detail = repr((rec.text or "")[:200])
            elif len(text) > cfg.max_chars:
                rec.error = f"oversized document (> {cfg.max_chars:,} characters)"
                rec.detail = f"{len(text):,} characters: {text[:120]!r}…"
        if rec.error is not None:
            reasons[rec.error.split(" (")[0]] += 1
            errors.append((rec.line, rec.error, rec.byte_offset, rec.detail))
            continue
        repairs = []
        if cleaned.mojibake_fixed:
            summary.mojibake_fixed += 1
            repairs.append("mojibake")
        if cleaned.control_chars_removed:
            summary.control_chars_removed += cleaned.control_chars_removed
            repairs.append("control_chars")
        text_col.append(text)
        kind_col.append(rec.kind)
        record_col.append(orjson.dumps(rec.record).decode() if rec.record is not None else None)
        chars_col.append(len(text))
        lang_col.append(detect_language(text))
        chash_col.append(content_hash(text))
        rhash_col.append(raw_hash(text))
        line_col.append(rec.line)
        offset_col.append(rec.byte_offset)
        repairs_col.append(",".join(repairs) or None)
        if len(text_col) >= cfg.batch_size:
            flush()
    summary.errors = sum(reasons.values())
    summary.error_reasons = dict(reasons)


def _ingest_one(ws: Workspace, source: str, cfg: IngestConfig, run_id: str, root: Path | None,
                progress: Progress | None) -> FileSummary:
    is_hub = source.startswith("hf://")
    path = Path(source)
    file_key = source if is_hub else (str(path.relative_to(root)) if root else path.name)
    display = source if is_hub else str(path)
    summary = FileSummary(file=display, status="ingested")
    sha = ""
    if not is_hub:
        sha = file_sha256(path)
        seen = ws.scalar("SELECT count(*) FROM ingested_files WHERE corpus = ? AND file = ? AND sha256 = ?",
                         [cfg.corpus, file_key, sha])
        if seen:
            summary.status, summary.message = "unchanged", "already ingested (same content)"
            return summary
    info = SourceInfo()
    opts = cfg.read_options()
    errors: list[tuple] = []
    con = ws.con
    with ws.transaction():
        con.register("staging_batch", STAGING_SCHEMA.empty_table())
        con.execute("CREATE OR REPLACE TEMP TABLE staging AS SELECT * FROM staging_batch")
        batch = _Batch()

        def flush() -> None:
            con.register("staging_batch", batch.to_arrow())
            con.execute("INSERT INTO staging SELECT * FROM staging_batch")
            if progress:
                progress(-1.0, f"{display}: {summary.documents_seen:,} records read")

        try:
            records = read_hub(source, opts, info) if is_hub else read_source(path, opts, info)
            _process(records, cfg, summary, errors, batch, flush)
        except SourceError as exc:
            errors.append((None, str(exc), None, None))
            summary.status, summary.message = "failed", str(exc)
            summary.errors += 1
            summary.error_reasons = {str(exc).split(":")[0]: 1}
        if len(batch):
            flush()
        summary.encoding, summary.fmt = info.encoding, info.fmt
        if summary.status != "failed":
            # Occurrence numbers keep identical texts in one file apart, and stable across re-ingests.
            summary.documents_added = con.execute(
                """
                INSERT OR IGNORE INTO documents (doc_id, corpus, text, kind, record, char_count, language,
                    content_hash, source_file, source_line, byte_offset, repairs, run_id)
                SELECT substr(md5(concat_ws(chr(31), ?, ?, raw_hash,
                           row_number() OVER (PARTITION BY raw_hash ORDER BY source_line, byte_offset))), 1, 20),
                       ?, text, kind, record, char_count, language, content_hash, ?, source_line, byte_offset,
                       repairs, ?
                FROM staging
                """,
                [cfg.corpus, file_key, cfg.corpus, display, run_id],
            ).fetchone()[0]
            staged = con.execute("SELECT count(*) FROM staging").fetchone()[0]
            summary.already_present = staged - summary.documents_added
        con.execute("DROP TABLE staging")
        con.unregister("staging_batch")
        con.execute("DELETE FROM ingest_errors WHERE corpus = ? AND file = ?", [cfg.corpus, display])
        if errors:
            con.register("err_table", pa.table({
                "line": pa.array([e[0] for e in errors], pa.int64()),
                "reason": [e[1] for e in errors],
                "byte_offset": pa.array([e[2] for e in errors], pa.int64()),
                "detail": pa.array([e[3] for e in errors], pa.string()),
            }))
            con.execute(
                "INSERT INTO ingest_errors (file, line, reason, byte_offset, detail, corpus, run_id) "
                "SELECT ?, line, reason, byte_offset, detail, ?, ? FROM err_table",
                [display, cfg.corpus, run_id],
            )
            con.unregister("err_table")
        if summary.status != "failed" and not is_hub:
            con.execute(
                "INSERT INTO ingested_files (corpus, file, sha256, size_bytes, options, run_id, documents_added, "
                "errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [cfg.corpus, file_key, sha, path.stat().st_size, json.dumps(asdict(cfg), default=str), run_id,
                 summary.documents_added, summary.errors],
            )
    return summary


def ingest(ws: Workspace, cfg: IngestConfig, progress: Progress | None = None) -> IngestResult:
    """Ingest every source of `cfg` into corpus `cfg.corpus`; one transaction per file."""
    if not cfg.sources:
        raise WorkspaceError("nothing to ingest: give at least one file, folder or hf:// source")
    files = expand_sources(cfg.sources, cfg.pattern)
    known = set(FORMAT_BY_SUFFIX)
    fmt_label = cfg.fmt if cfg.fmt != "auto" else ",".join(sorted({split_suffixes(Path(f))[0] or "?" for f in files
                                                                   if not f.startswith("hf://")})) or "hf"
    ws.ensure_corpus(cfg.corpus, cfg.role, source="; ".join(cfg.sources)[:1000], fmt=fmt_label)
    roots = {s: Path(s).expanduser() for s in cfg.sources if Path(s).expanduser().is_dir()}
    summaries: list[FileSummary] = []
    with ws.run("ingest", {**asdict(cfg), "files": len(files)}, supersede=False) as run:
        for index, source in enumerate(files):
            root = next((r for r in roots.values() if Path(source).is_relative_to(r)), None)
            if progress:
                progress(index / max(len(files), 1), f"{Path(source).name} ({index + 1}/{len(files)})")
            fmt, _ = split_suffixes(Path(source))
            if not source.startswith("hf://") and cfg.fmt == "auto" and root is not None and fmt == "" \
                    and Path(source).suffix.lower() not in known:
                # A file in a folder whose type we do not read: say so instead of skipping it silently.
                summary = FileSummary(file=source, status="failed", errors=1,
                                      error_reasons={"unsupported file type": 1},
                                      message=f"unsupported file type: {Path(source).name}")
                ws.con.execute("DELETE FROM ingest_errors WHERE corpus = ? AND file = ?", [cfg.corpus, source])
                ws.con.execute("INSERT INTO ingest_errors (file, reason, detail, corpus, run_id) "
                               "VALUES (?, 'unsupported file type', ?, ?, ?)",
                               [source, summary.message, cfg.corpus, run.run_id])
            else:
                summary = _ingest_one(ws, source, cfg, run.run_id, root, progress)
            summaries.append(summary)
            run.counts = IngestResult(run.run_id, cfg.corpus, summaries).counts()
        if progress:
            progress(1.0, f"done: {len(files)} file(s)")
    return IngestResult(run.run_id, cfg.corpus, summaries)
