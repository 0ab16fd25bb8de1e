"""Ingest: corpora from files, folders and hubs into the workspace's `documents`.

A file's documents go into `documents` batch by batch (bounded memory); the file counts as ingested once its
errors and its `ingested_files` row are committed. A process killed mid-file leaves nothing of that file
behind: the next `Workspace.open` removes the documents of files whose run died before finishing them.
Document ids are derived from (corpus, file, text, occurrence of that text in the file), so re-ingesting a file adds nothing and a changed file adds only its new documents, while natural
duplicates inside a file stay separate documents for the dedup step to find.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa

from core.parallel import default_workers, process_pool
from core.progress import Progress, no_progress
from core.readers import (
    FORMATS,
    LAYOUTS,
    CorruptSourceError,
    ReadOptions,
    SourceError,
    SourceInfo,
    SourceRecord,
    read_hub,
    read_source,
    split_suffixes,
)
from core.steps import param
from core.text import clean_text, content_hash, detect_language
from core.workspace import ROLES, Workspace, WorkspaceError


@dataclass
class IngestConfig:
    sources: list[str] = param(positional=True, required=True,
                               help="files, folders (recursive), globs, or hf://owner/name[:config][/split]")
    corpus: str = param(required=True, help="corpus name (created on first ingest)")
    role: str = param(required=True, choices=ROLES, help="the corpus's role")
    fmt: str = param("auto", flag="--format", choices=FORMATS, show_default=False, help="default: from the file name")
    layout: str = param("auto", choices=LAYOUTS, show_default=False,
                        help="how a record becomes a document (default: guessed per record)")
    text_field: str | None = param(None, help="field name or dotted path of the text (default: text, then content)")
    template: str | None = param(None, help="build the text from fields, e.g. '{title}\\n{answer}'")
    txt_unit: str = param("paragraph", choices=("paragraph", "file"), show_default=False,
                          help="TXT/Markdown: one document per paragraph or per file")
    encoding: str | None = param(None, help="force an encoding (default: detected)")
    pattern: str = param("**/*", show_default=False, help="glob for files inside folders")  # files from a folder
    min_chars: int = param(1, show_default=False, help="shorter documents are recorded as errors")
    max_chars: int = param(1_000_000, show_default=False, help="longer documents are recorded as errors")
    batch_size: int = param(20_000, cli=False, help="documents written per batch")

    def read_options(self) -> ReadOptions:
        return ReadOptions(fmt=self.fmt, layout=self.layout, text_field=self.text_field, template=self.template,
                           txt_unit=self.txt_unit, encoding=self.encoding,
                           max_record_bytes=record_byte_limit(self.max_chars))


def record_byte_limit(max_chars: int) -> int:
    """The most bytes one line (a JSONL record, a CSV row, a TXT paragraph) may take before it is rejected as
    oversized while it streams by, unread: room for `max_chars` characters even as JSON escapes (`\\uXXXX`, 6
    bytes, 12 for a character outside the BMP) plus the record's other fields. Texts that pass go on to the
    exact character check after cleaning."""
    return 8 * max_chars + (1 << 20)


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


# DuckDB's buffer pool while ingest appends: small, so that peak memory stays flat on huge files, but room for the
# primary-key index on documents.doc_id, which DuckDB keeps in memory (an ART index does not spill): 192 MB ran out
# at ~1M documents (bench/scale.py).
INGEST_MEMORY_LIMIT = "1GB"
ANALYSIS_CHUNK = 2_000
PARALLEL_FROM_BYTES = 32 << 20  # smaller files are done before a worker pool would have started

STAGING_SCHEMA = pa.schema([
    ("text", pa.large_string()), ("kind", pa.string()), ("record", pa.large_string()),
    ("char_count", pa.int32()), ("language", pa.string()), ("content_hash", pa.string()),
    ("doc_id", pa.string()), ("source_line", pa.int64()), ("byte_offset", pa.int64()), ("repairs", pa.string()),
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
        for column in self.cols.values():  # cleared in place: the hot loop holds references to these lists
            column.clear()
        return table


Analysis = tuple[str | None, bool, int, str, str, bytes]  # (cleaned text if changed, mojibake, controls, ...)


def analyse_texts(texts: list[str | None]) -> list[Analysis | None]:
    """The per-document work of ingest (cleaning, language, normalised and raw hashes) for a chunk of texts.

    Runs in worker processes on large files; returns the cleaned text only where cleaning changed it, to keep
    what crosses the process boundary small."""
    out: list[Analysis | None] = []
    for raw in texts:
        if raw is None:
            out.append(None)
            continue
        cleaned = clean_text(raw)
        text = cleaned.text
        out.append((text if text != raw else None, cleaned.mojibake_fixed, cleaned.control_chars_removed,
                    detect_language(text), content_hash(text),
                    hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()))
    return out


def _chunks(records: Iterator[SourceRecord], size: int) -> Iterator[list[SourceRecord]]:
    chunk: list[SourceRecord] = []
    for rec in records:
        chunk.append(rec)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _process(records: Iterator[SourceRecord], cfg: IngestConfig, summary: FileSummary,
             errors: list[tuple], batch: _Batch, flush: Callable[[], None], id_prefix: str,
             pool: Executor | None = None) -> None:
    cols = batch.cols
    text_col, kind_col, record_col = cols["text"], cols["kind"], cols["record"]
    chars_col, lang_col, chash_col, id_col = cols["char_count"], cols["language"], cols["content_hash"], \
        cols["doc_id"]
    line_col, offset_col, repairs_col = cols["source_line"], cols["byte_offset"], cols["repairs"]
    # Occurrence numbers keep identical texts of one file apart, and stable across re-ingests.
    occurrences: Counter[bytes] = Counter()
    reasons: Counter[str] = Counter()

    def absorb(chunk: list[SourceRecord], analyses: list[Analysis | None]) -> None:
        for rec, analysis in zip(chunk, analyses, strict=True):
            summary.documents_seen += 1
            if analysis is not None:
                changed, mojibake, controls, language, chash, digest = analysis
                text = rec.text if changed is None else changed
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
            if mojibake:
                summary.mojibake_fixed += 1
                repairs.append("mojibake")
            if controls:
                summary.control_chars_removed += controls
                repairs.append("control_chars")
            text_col.append(text)
            kind_col.append(rec.kind)
            record_col.append(orjson.dumps(rec.record).decode() if rec.record is not None else None)
            chars_col.append(len(text))
            lang_col.append(language)
            chash_col.append(chash)
            occurrences[digest] += 1
            id_col.append(hashlib.md5(f"{id_prefix}{digest.hex()}\x1f{occurrences[digest]}".encode())
                          .hexdigest()[:20])
            line_col.append(rec.line)
            offset_col.append(rec.byte_offset)
            repairs_col.append(",".join(repairs) or None)
            if len(text_col) >= cfg.batch_size:
                flush()

    # With a pool, a few chunks are analysed ahead while this process parses and writes (bounded in flight).
    pending: deque[tuple[list[SourceRecord], Future]] = deque()
    for chunk in _chunks(records, ANALYSIS_CHUNK):
        for rec in chunk:  # far too long already: rejected before cleaning and hashing (they can shrink ~3x)
            if rec.error is None and rec.text is not None and len(rec.text) > 4 * cfg.max_chars:
                rec.error = f"oversized document (> {cfg.max_chars:,} characters)"
                rec.detail = f"{len(rec.text):,} characters before cleaning: {rec.text[:120]!r}…"
                rec.text = None
        texts = [rec.text or "" if rec.error is None else None for rec in chunk]
        if pool is None:
            absorb(chunk, analyse_texts(texts))
            continue
        pending.append((chunk, pool.submit(analyse_texts, texts)))
        if len(pending) > 4:  # a few chunks in flight: workers stay busy, memory stays bounded
            done_chunk, future = pending.popleft()
            absorb(done_chunk, future.result())
    while pending:
        done_chunk, future = pending.popleft()
        absorb(done_chunk, future.result())
    summary.errors = sum(reasons.values())
    summary.error_reasons = dict(reasons)


def _ingest_one(ws: Workspace, source: str, cfg: IngestConfig, run_id: str, root: Path | None,
                progress: Progress | None, pool: Executor | None = None) -> FileSummary:
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
    batch = _Batch()
    size = 0 if is_hub else path.stat().st_size
    last_offset: list[int | None] = [None]

    def flush() -> None:
        # Each batch is committed straight into `documents`: DuckDB keeps an open transaction's rows in
        # memory, so one transaction per file would grow with the file. A file counts as ingested only once
        # its `ingested_files` row exists; the partial documents of a file whose ingest died are removed
        # (here on errors, by `Workspace.open` after a kill).
        last_offset[0] = next((o for o in reversed(batch.cols["byte_offset"]) if o is not None), None)
        con.register("staging_batch", batch.to_arrow())
        summary.documents_added += con.execute(
            """
            INSERT OR IGNORE INTO documents (doc_id, corpus, text, kind, record, char_count, language,
                content_hash, source_file, source_line, byte_offset, repairs, run_id)
            SELECT doc_id, ?, text, kind, record, char_count, language, content_hash, ?, source_line,
                   byte_offset, repairs, ?
            FROM staging_batch
            """,
            [cfg.corpus, display, run_id],
        ).fetchall()[0][0]
        con.unregister("staging_batch")
        if progress:
            # Within a file, the share of its bytes read so far (line formats know their byte offsets).
            fraction = min(offset / size, 1.0) if size and (offset := last_offset[0]) else -1.0
            progress(fraction, f"{display}: {summary.documents_seen:,} records read")

    try:
        try:
            records = read_hub(source, opts, info) if is_hub else read_source(path, opts, info)
            _process(records, cfg, summary, errors, batch, flush, f"{cfg.corpus}\x1f{file_key}\x1f",
                     pool if is_hub or path.stat().st_size >= PARALLEL_FROM_BYTES else None)
        except CorruptSourceError as exc:  # a damaged compressed file: recorded, and the next files go on
            errors.append((None, exc.reason, exc.byte_offset, str(exc)))
            summary.status, summary.message = "failed", str(exc)
            summary.errors = len(errors)
            summary.error_reasons = dict(Counter(e[1].split(" (")[0] for e in errors))
        except SourceError as exc:
            errors.append((None, str(exc), None, None))
            summary.status, summary.message = "failed", str(exc)
            summary.errors += 1
            summary.error_reasons = {"source unreadable": 1}
        if len(batch) and summary.status != "failed":
            flush()
    except BaseException:
        remove_partial_file(ws, run_id, display)
        raise
    summary.encoding, summary.fmt = info.encoding, info.fmt
    if info.notes and not summary.message:
        summary.message = "; ".join(info.notes)
    if summary.status != "failed" and not summary.documents_seen and not summary.message:
        summary.message = "empty file: nothing to ingest" if size == 0 and not is_hub else "no records found"
    with ws.transaction():
        if summary.status == "failed":  # a source that broke off mid-way adds nothing
            remove_partial_file(ws, run_id, display)
            summary.documents_added = 0
        else:
            summary.already_present = summary.documents_seen - summary.errors - summary.documents_added
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
        if summary.status != "failed":
            con.execute(
                "INSERT INTO ingested_files (corpus, file, sha256, size_bytes, options, run_id, documents_added, "
                "errors, source_file) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [cfg.corpus, file_key, sha, None if is_hub else path.stat().st_size,
                 json.dumps(asdict(cfg), default=str), run_id, summary.documents_added, summary.errors, display],
            )
    return summary


def remove_partial_file(ws: Workspace, run_id: str, source_file: str) -> None:
    """Remove what an unfinished ingest of `source_file` by `run_id` wrote."""
    ws.con.execute("DELETE FROM documents WHERE run_id = ? AND source_file = ?", [run_id, source_file])


def ingest(ws: Workspace, cfg: IngestConfig, progress: Progress = no_progress) -> IngestResult:
    """Ingest every source of `cfg` into corpus `cfg.corpus`; a file counts once it is wholly in."""
    if not cfg.sources:
        raise WorkspaceError("nothing to ingest: give at least one file, folder or hf:// source")
    files = expand_sources(cfg.sources, cfg.pattern)
    fmt_label = cfg.fmt if cfg.fmt != "auto" else ",".join(sorted({split_suffixes(Path(f))[0] or "?" for f in files
                                                                   if not f.startswith("hf://")})) or "hf"
    ws.ensure_corpus(cfg.corpus, cfg.role, source="; ".join(cfg.sources)[:1000], fmt=fmt_label)
    # Ingest only appends batches: a small buffer pool is enough and keeps peak memory flat on huge files.
    previous_limit = ws.scalar("SELECT current_setting('memory_limit')")
    ws.con.execute(f"SET memory_limit = '{INGEST_MEMORY_LIMIT}'")
    try:
        return _ingest_files(ws, cfg, files, progress)
    finally:
        ws.con.execute(f"SET memory_limit = '{previous_limit}'")


def _ingest_files(ws: Workspace, cfg: IngestConfig, files: list[str], progress: Progress | None) -> IngestResult:
    summaries: list[FileSummary] = []
    roots = [Path(s).expanduser() for s in cfg.sources if Path(s).expanduser().is_dir()]
    workers = default_workers()
    parallel = workers > 1 and any(f.startswith("hf://") or Path(f).stat().st_size >= PARALLEL_FROM_BYTES
                                   for f in files)
    # Worker processes do the per-document analysis of large sources.
    with process_pool(workers) if parallel else contextlib.nullcontext() as pool, \
            ws.run("ingest", {**asdict(cfg), "files": len(files)}, supersede=False) as run:
        for index, source in enumerate(files):
            root = next((r for r in roots if Path(source).is_relative_to(r)), None)
            if progress:
                progress(index / max(len(files), 1), f"{Path(source).name} ({index + 1}/{len(files)})")
            fmt, _ = split_suffixes(Path(source))
            if not source.startswith("hf://") and cfg.fmt == "auto" and root is not None and fmt == "":
                # A file in a folder whose type we do not read: say so instead of skipping it silently.
                summary = FileSummary(file=source, status="failed", errors=1,
                                      error_reasons={"unsupported file type": 1},
                                      message=f"unsupported file type: {Path(source).name}")
                ws.con.execute("DELETE FROM ingest_errors WHERE corpus = ? AND file = ?", [cfg.corpus, source])
                ws.con.execute("INSERT INTO ingest_errors (file, reason, detail, corpus, run_id) "
                               "VALUES (?, 'unsupported file type', ?, ?, ?)",
                               [source, summary.message, cfg.corpus, run.run_id])
            else:
                def file_progress(fraction: float, message: str, index: int = index) -> None:
                    if progress:
                        progress((index + max(fraction, 0.0)) / len(files), message)

                summary = _ingest_one(ws, source, cfg, run.run_id, root, file_progress, pool)
            summaries.append(summary)
            run.counts = IngestResult(run.run_id, cfg.corpus, summaries).counts()
        if progress:
            progress(1.0, f"done: {len(files)} file(s)")
    return IngestResult(run.run_id, cfg.corpus, summaries)


# --- reading what ingest recorded (the Ingest page) ---------------------------------------------------------------
def ingest_errors(ws: Workspace, limit: int = 5_000):  # -> pandas.DataFrame
    """The skipped records, newest first: corpus, file, line, reason, detail, byte offset and when."""
    return ws.df("SELECT corpus, file, line, reason, detail, byte_offset, recorded_at FROM ingest_errors "
                 "ORDER BY recorded_at DESC, file, line LIMIT ?", [limit])


def ingest_error_counts(ws: Workspace):  # -> pandas.DataFrame
    """Skipped records per corpus and reason, the most frequent first."""
    return ws.df("SELECT corpus, reason, count(*) AS records FROM ingest_errors GROUP BY ALL ORDER BY records DESC")


def ingested_files(ws: Workspace):  # -> pandas.DataFrame
    """Every wholly ingested file, newest first, with the documents and errors it gave and its size."""
    return ws.df("SELECT corpus, file, documents_added, errors, size_bytes, completed_at FROM ingested_files "
                 "ORDER BY completed_at DESC")
