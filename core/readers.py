"""Streaming readers for every corpus format the studio ingests.

A reader turns one source (a file, or a `hf://` dataset) into `SourceRecord`s: either a document (text plus,
for instruction and benchmark data, the structured record) or an error with the line where it happened.
Readers never raise on bad content: a malformed line is a record with `error` set, so the caller can store it
and move on. They stream: memory stays bounded by one line or one batch, whatever the file size, and a line
past `ReadOptions.max_record_bytes` is rejected as it streams by, never held whole (JSON arrays, which have no
line structure, are the one exception and are read whole). A damaged compressed file raises
`CorruptSourceError`, naming how far its data was good.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import gzip
import io
import itertools
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson

from core.record_layouts import (  # noqa: F401  (re-exported: `from core.readers import ...` keeps working)
    DEFAULT_TEXT_FIELDS,
    LAYOUTS,
    dotted_get,
    gold_index,
    guess_layout,
    mcq_problem,
    render_alpaca,
    render_mcq,
    render_turns,
    sharegpt_turns,
)

COMPRESSION_SUFFIXES = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
FORMAT_BY_SUFFIX = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet", ".csv": "csv",
    ".tsv": "tsv", ".txt": "txt", ".md": "md", ".markdown": "md",
}
FORMATS = ("auto", "jsonl", "json", "parquet", "csv", "tsv", "txt", "md")
SNIPPET_CHARS = 200
PREVIEW_LINE_BYTES = 16 << 20  # a preview shows longer lines by their size only


class SourceError(ValueError):
    """A source that cannot be read at all (missing, unsupported, unreachable)."""


class CorruptSourceError(SourceError):
    """A compressed file whose data breaks off (truncated) or does not decompress (corrupt)."""

    def __init__(self, message: str, reason: str, byte_offset: int) -> None:
        super().__init__(message)
        self.reason = reason  # e.g. 'truncated gzip file'
        self.byte_offset = byte_offset  # decompressed bytes read before the break


@dataclass
class ReadOptions:
    fmt: str = "auto"  # one of FORMATS
    layout: str = "auto"  # one of LAYOUTS: how a record becomes a document
    text_field: str | None = None  # field name or dotted path; None guesses text/content or the layout
    template: str | None = None  # e.g. "{title}\n{ask}": builds the text from several fields
    txt_unit: str = "paragraph"  # 'paragraph' or 'file', for TXT and Markdown
    encoding: str | None = None  # None detects
    csv_delimiter: str | None = None
    # A line (or TXT paragraph, or whole-file text) longer than this many bytes is rejected as it streams by,
    # without being held whole; None: no limit.
    max_record_bytes: int | None = None


@dataclass
class SourceRecord:
    line: int | None  # 1-based line for line formats, 0-based row for JSON arrays and Parquet
    byte_offset: int | None
    text: str | None = None
    kind: str = "text"  # text | alpaca | sharegpt | mcq
    record: dict[str, Any] | None = None
    error: str | None = None
    detail: str | None = None


@dataclass
class SourceInfo:
    """What was learned about a source while reading it (shown in summaries)."""

    fmt: str = ""
    encoding: str = ""
    compression: str = ""
    notes: list[str] = field(default_factory=list)


# --- format detection and opening ---------------------------------------------------------------------------
def split_suffixes(path: Path) -> tuple[str, str]:
    """(format, compression) from a file name such as `x.jsonl.zst`."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = ""
    if suffixes and suffixes[-1] in COMPRESSION_SUFFIXES:
        compression = COMPRESSION_SUFFIXES[suffixes.pop()]
    fmt = FORMAT_BY_SUFFIX.get(suffixes[-1], "") if suffixes else ""
    return fmt, compression


class _ZstdRaw(io.RawIOBase):
    """Zstandard frames decompressed a small input chunk at a time (output stays bounded even for highly
    compressible data), noticing a file that ends inside a frame: zstandard's own stream reader returns a
    silent end of data there, and stops after the first frame of a multi-frame file."""

    INPUT_CHUNK = 1 << 13  # a zstd block expands at most ~32k:1, so one chunk's output stays in the MB range

    def __init__(self, raw: IO[bytes]) -> None:
        import zstandard

        self.raw, self.zstd = raw, zstandard.ZstdDecompressor()
        self.frame = self.zstd.decompressobj()
        self.frame_started = False
        self.pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self.pending:
            chunk = self.raw.read(self.INPUT_CHUNK)
            if not chunk:
                if self.frame_started:
                    raise EOFError("the file ends inside a zstd frame")
                return 0
            out = []
            while chunk:
                self.frame_started = True
                out.append(self.frame.decompress(chunk))
                chunk = b""
                if self.frame.eof:  # a frame ended: the rest of the input starts the next one
                    chunk = self.frame.unused_data
                    self.frame, self.frame_started = self.zstd.decompressobj(), False
            self.pending = memoryview(b"".join(out))
        n = min(len(buffer), len(self.pending))
        buffer[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class _CheckedRaw(io.RawIOBase):
    """A decompressing stream whose failures (a truncated or corrupt file) become a `CorruptSourceError`
    naming how far the data was good, instead of an EOFError or zlib error that names nothing."""

    def __init__(self, inner: IO[bytes], raw: IO[bytes], compression: str, path: Path) -> None:
        self.inner, self.raw, self.compression, self.path = inner, raw, compression, path
        self.delivered = 0
        self.failures: tuple[type[BaseException], ...] = (EOFError, OSError, zlib.error)  # gzip's, BadGzipFile
        if compression == "zstd":
            import zstandard

            self.failures += (zstandard.ZstdError,)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.inner.read(len(buffer))
        except self.failures as exc:
            truncated = isinstance(exc, EOFError)
            reason = f"{'truncated' if truncated else 'corrupt'} {self.compression} file"
            where = f"after {self.delivered:,} good decompressed bytes"
            with contextlib.suppress(OSError, ValueError):
                where += f" (compressed byte ~{self.raw.tell():,} of {self.path.stat().st_size:,})"
            raise CorruptSourceError(f"{self.path.name}: {reason} {where}: {exc}", reason,
                                     self.delivered) from exc
        n = len(data)
        buffer[:n] = data
        self.delivered += n
        return n

    def close(self) -> None:
        self.inner.close()
        self.raw.close()
        super().close()


def open_binary(path: Path, compression: str) -> IO[bytes]:
    if not compression:
        return open(path, "rb", buffering=1 << 20)
    raw = open(path, "rb")  # noqa: SIM115 (closed by the returned stream)
    inner: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compression == "gzip" else _ZstdRaw(raw)
    return io.BufferedReader(_CheckedRaw(inner, raw, compression, path), buffer_size=1 << 20)


def unicode_encoding(sample: bytes) -> str | None:
    """UTF-8 with BOM or UTF-16 (by its BOM or its zero bytes) where the sample shows one, else None."""
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    # Latin text in UTF-16 has a zero in every other byte and few in the rest; a run of zeros is no text.
    odd_zeros, even_zeros = sample[1::2].count(0), sample[0::2].count(0)
    if len(sample) >= 4 and odd_zeros > len(sample) // 4 and even_zeros < len(sample) // 8:
        return "utf-16-le"
    if len(sample) >= 4 and even_zeros > len(sample) // 4 and odd_zeros < len(sample) // 8:
        return "utf-16-be"
    return None


def binary_problem(sample: bytes) -> str | None:
    """Why a file is not text, where its sample shows it: a NUL byte outside UTF-16 (no text encoding the
    studio reads has one), e.g. an image, an archive or a database named .jsonl."""
    if unicode_encoding(sample) in {"utf-16", "utf-16-le", "utf-16-be"}:
        return None
    at = sample.find(0)
    return None if at < 0 else f"binary data, not text (a NUL byte at byte {at:,})"


def json_encoding(sample: bytes) -> str:
    """JSON text is Unicode, UTF-8 unless a BOM or zero bytes say UTF-16 (RFC 8259 §8.1; RFC 7159 allowed
    UTF-16): invalid bytes are an error of their line, never a reason to guess a legacy code page."""
    return unicode_encoding(sample) or "utf-8"


def detect_encoding(sample: bytes) -> str:
    """UTF-8 (with or without BOM), UTF-16 (BOM or by its zero bytes), or what charset-normalizer finds
    (GB18030 for the GBK family, since it is their superset)."""
    if found := unicode_encoding(sample):
        return found
    if _is_utf8(sample):
        return "utf-8"
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    if best is None:
        return "utf-8"
    enc = best.encoding.lower().replace("_", "-")
    if enc in {"gb2312", "gbk", "cp936", "hz", "gb18030"}:
        return "gb18030"
    return enc


def _sample(path: Path, compression: str, size: int = 1 << 16) -> bytes:
    with open_binary(path, compression) as fh:
        return fh.read(size)


def _text_sample(path: Path, compression: str, opts: ReadOptions) -> bytes:
    """The file's first bytes; SourceError for a binary file unless an encoding is given."""
    sample = _sample(path, compression)
    if not opts.encoding and (problem := binary_problem(sample)):
        raise SourceError(f"{path.name}: {problem}; nothing read (give an encoding to read it anyway)")
    return sample


# --- turning a parsed record into a document (its layout: core.record_layouts) ----------------------------
def record_to_document(rec: Any, opts: ReadOptions, line: int | None, offset: int | None) -> SourceRecord:
    out = SourceRecord(line=line, byte_offset=offset)
    if not isinstance(rec, dict):
        out.error, out.detail = "record is not an object", _snippet(repr(rec))
        return out
    try:
        if opts.template:
            out.text = opts.template.format_map(rec)
            return out
        if opts.text_field:
            value = dotted_get(rec, opts.text_field)
            if not isinstance(value, str):
                out.error, out.detail = f"text field {opts.text_field!r} is not a string", _snippet(repr(value))
            else:
                out.text = value
            return out
        layout = opts.layout if opts.layout != "auto" else guess_layout(rec)
        if layout == "text":
            for name in DEFAULT_TEXT_FIELDS:
                if isinstance(rec.get(name), str):
                    out.text = rec[name]
                    return out
            out.error = "missing text field"
            out.detail = f"no string field among {list(DEFAULT_TEXT_FIELDS)}; keys: {sorted(rec)[:12]}"
        elif layout == "alpaca":
            kept = {k: rec.get(k) for k in ("instruction", "input", "output", "system", "history") if k in rec}
            if not isinstance(kept.get("instruction"), str) or not isinstance(kept.get("output"), str):
                out.error, out.detail = "alpaca record lacks instruction/output strings", _snippet(repr(rec))
            else:
                out.kind, out.record, out.text = "alpaca", kept, render_alpaca(kept)
        elif layout == "sharegpt":
            turns = sharegpt_turns(rec)
            out.kind, out.record, out.text = "sharegpt", {"conversations": turns}, render_turns(turns)
            if "system" in rec:
                out.record["system"] = rec["system"]
        elif layout == "mcq":
            if problem := mcq_problem(rec):
                out.error, out.detail = problem, _snippet(repr(rec))
            else:
                choices = rec["choices"]
                kept = {"question": rec["question"], "choices": [str(c) for c in choices],
                        "answer_index": gold_index(rec.get("answer_index"), len(choices)),
                        "subject": rec.get("subject"), "item_id": rec.get("id")}
                out.kind, out.record, out.text = "mcq", kept, render_mcq(kept)
        elif layout == "qa":  # free-text evaluation items: a question and its reference answer
            question, answer = rec.get("question"), rec.get("answer")
            if not isinstance(question, str) or isinstance(answer, bool) \
                    or not isinstance(answer, str | int | float):
                out.error, out.detail = "evaluation item lacks question/answer", _snippet(repr(rec))
            elif not question.strip():
                out.error, out.detail = "evaluation item has an empty question", _snippet(repr(rec))
            else:
                kept = {"question": rec["question"], "answer": str(rec["answer"]), "subject": rec.get("subject"),
                        "item_id": rec.get("id")}
                out.kind, out.record = "qa", kept
                out.text = f"{kept['question'].strip()}\n{kept['answer'].strip()}"
    except KeyError as exc:
        out.error = f"missing field {exc.args[0]!r}"
        out.detail = f"keys: {sorted(rec)[:12]}"
    except ValueError as exc:
        out.error, out.detail = f"malformed {opts.layout if opts.layout != 'auto' else 'record'}: {exc}", \
            _snippet(repr(rec))
    return out


def _snippet(text: str) -> str:
    return text if len(text) <= SNIPPET_CHARS else text[:SNIPPET_CHARS] + "…"


# --- the readers --------------------------------------------------------------------------------------------
def read_source(path: Path, opts: ReadOptions, info: SourceInfo) -> Iterator[SourceRecord]:
    fmt, compression = split_suffixes(path)
    if opts.fmt != "auto":
        fmt = opts.fmt
    if not fmt:
        raise SourceError(f"unsupported file type: {path.name} (known: {', '.join(sorted(FORMAT_BY_SUFFIX))}, "
                          "optionally .gz or .zst)")
    info.fmt, info.compression = fmt, compression
    if fmt == "parquet":
        if compression:
            raise SourceError("compressed Parquet files are not supported (Parquet compresses internally)")
        yield from _read_parquet(path, opts)
        return
    sample = _text_sample(path, compression, opts)
    encoding = opts.encoding or source_encoding(fmt, sample)
    info.encoding = encoding
    if fmt in {"json", "jsonl"} and not opts.encoding and encoding == "utf-8" and not _is_utf8(sample):
        legacy = detect_encoding(sample)  # a hint for the user, never used to decode JSON
        info.notes.append(f"bytes that are not UTF-8 in the first {len(sample):,} bytes: lines holding them are "
                          f"recorded as errors; if the whole file is {legacy}, ingest it again with that encoding")
    if fmt == "jsonl":
        yield from _read_jsonl(path, compression, encoding, opts)
    elif fmt == "json":
        yield from _read_json_array(path, compression, encoding, opts)
    elif fmt in {"csv", "tsv"}:
        yield from _read_csv(path, compression, encoding, opts, "\t" if fmt == "tsv" else ",")
    else:
        yield from _read_text(path, compression, encoding, opts)


def _is_utf8(sample: bytes) -> bool:
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def source_encoding(fmt: str, sample: bytes) -> str:
    """The encoding to read a file of format `fmt` with when none is given: JSON's is fixed by its RFC, other
    text formats are detected (legacy encodings such as GB18030 CSV included)."""
    return json_encoding(sample) if fmt in {"json", "jsonl"} else detect_encoding(sample)


def invalid_utf8_detail(raw: bytes) -> str:
    """Where a line's UTF-8 breaks, for the error record (orjson's message names no position)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start:exc.end].hex(" ")
        shown = raw[max(exc.start - 40, 0):exc.start].decode("utf-8", "replace")
        return (f"byte(s) {bad} at byte {exc.start} of the line, after {shown!r}: JSON is UTF-8 (RFC 8259); "
                "if the whole file is in another encoding, give it as the encoding option")
    return ""


@dataclass
class LongLine:
    """A line longer than the reader's limit, skipped as it streamed by: never held whole."""

    size: int  # bytes (of the decompressed file)
    head: str  # its first characters, for the error record


def _bounded_lines(fh: IO[Any], limit: int | None, size_of: Any = len) -> Iterator[Any]:
    """The lines of a binary or text stream, each one whole when at most `limit` long, else a `LongLine`
    (read past in 1 MB pieces, so memory stays bounded by `limit` whatever the line's length)."""
    if limit is None:
        yield from fh
        return
    ends = ("\n", "\r") if isinstance(fh, io.TextIOBase) else (b"\n",)
    while line := fh.readline(limit + 1):
        if len(line) <= limit or line.endswith(ends):
            yield line
            continue
        size, head = size_of(line), line[:SNIPPET_CHARS]
        while more := fh.readline(1 << 20):
            size += size_of(more)
            if more.endswith(ends):
                break
        yield LongLine(size, head if isinstance(head, str) else head.decode("utf-8", "replace"))


def _oversized(line: LongLine, limit: int | None) -> tuple[str, str]:
    """(reason, detail) of an error record for a line over the limit."""
    return (f"oversized document (line of {line.size:,} bytes > {limit or 0:,})",
            f"skipped unread beyond its first characters: {line.head!r}…")


def _lines_with_offsets(path: Path, compression: str, encoding: str,
                        limit: int | None = None) -> Iterator[tuple[int, int, bytes | str | LongLine]]:
    """(line number, byte offset, line) for each line; bytes for UTF-8 (parsed without decoding twice); a
    `LongLine` for a line over `limit` bytes."""
    with open_binary(path, compression) as fh:
        if encoding in {"utf-8", "utf-8-sig"}:
            offset = 0
            for number, raw in enumerate(_bounded_lines(fh, limit), start=1):
                if isinstance(raw, LongLine):
                    yield number, offset, raw
                    offset += raw.size
                    continue
                line = raw[3:] if number == 1 and encoding == "utf-8-sig" and raw.startswith(codecs.BOM_UTF8) \
                    else raw
                yield number, offset, line
                offset += len(raw)
            return
        text = io.TextIOWrapper(fh, encoding=encoding, errors="replace", newline="")
        offset = 0
        width = codecs.lookup(encoding).name
        width = width if width != "utf-16" else "utf-16-le"

        def size_of(piece: str) -> int:
            return len(piece.encode(width, errors="replace"))

        # The limit is in bytes; a character takes at least one byte (two in UTF-16), so counting characters
        # against it never rejects a line within it.
        for number, line in enumerate(_bounded_lines(text, limit, size_of), start=1):
            yield number, offset, line
            offset += line.size if isinstance(line, LongLine) else size_of(line)


@dataclass
class ParsedRecord:
    """A record as a format's parser gives it, before it becomes a document (`record_to_document`): what the
    Ingest page's preview shows, from the same parser the ingest reads with."""

    line: int | None
    offset: int | None
    record: Any


def _documents(items: Iterator[SourceRecord | ParsedRecord], opts: ReadOptions) -> Iterator[SourceRecord]:
    """A parser's records as documents (its error records as they are)."""
    for item in items:
        yield item if isinstance(item, SourceRecord) else record_to_document(item.record, opts, item.line,
                                                                             item.offset)


def _read_jsonl(path: Path, compression: str, encoding: str, opts: ReadOptions) -> Iterator[SourceRecord]:
    yield from _documents(_jsonl_records(path, compression, encoding, opts.max_record_bytes), opts)


def _jsonl_records(path: Path, compression: str, encoding: str,
                   limit: int | None) -> Iterator[SourceRecord | ParsedRecord]:
    loads = orjson.loads
    for number, offset, line in _lines_with_offsets(path, compression, encoding, limit):
        if isinstance(line, LongLine):
            reason, detail = _oversized(line, limit)
            yield SourceRecord(number, offset, error=reason, detail=detail)
            continue
        if not line.strip():
            continue
        try:
            rec = loads(line)
        except orjson.JSONDecodeError as exc:
            if isinstance(line, bytes) and "UTF-8" in str(exc):
                yield SourceRecord(number, offset, error="invalid UTF-8", detail=invalid_utf8_detail(line))
                continue
            raw = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            yield SourceRecord(number, offset, error="malformed JSON", detail=_snippet(f"{exc}: {raw.strip()}"))
            continue
        yield ParsedRecord(number, offset, rec)


def _read_json_array(path: Path, compression: str, encoding: str, opts: ReadOptions) -> Iterator[SourceRecord]:
    yield from _documents(_json_array_records(path, compression, encoding, opts.max_record_bytes), opts)


def _json_array_records(path: Path, compression: str, encoding: str,
                        limit: int | None) -> Iterator[SourceRecord | ParsedRecord]:
    with open_binary(path, compression) as fh:
        data = fh.read()
    try:
        text = data.decode(encoding)
        parsed = orjson.loads(text.lstrip("\ufeff"))
    except (UnicodeDecodeError, orjson.JSONDecodeError) as exc:
        # A JSON array that does not parse may still be JSON Lines with a .json name.
        if data.lstrip()[:1] == b"{":
            yield from _jsonl_records(path, compression, encoding, limit)
            return
        if isinstance(exc, UnicodeDecodeError):
            yield SourceRecord(None, exc.start, error="invalid UTF-8" if encoding.startswith("utf-8")
                               else f"invalid {encoding}",
                               detail=_snippet(f"{exc}; JSON is UTF-8 (RFC 8259): if the file is in another "
                                               "encoding, give it as the encoding option"))
            return
        yield SourceRecord(None, None, error="malformed JSON", detail=_snippet(str(exc)))
        return
    if isinstance(parsed, dict):
        lists = [v for v in parsed.values() if isinstance(v, list)]
        is_record = guess_layout(parsed) != "text" or any(k in parsed for k in DEFAULT_TEXT_FIELDS)
        parsed = lists[0] if len(lists) == 1 and not is_record else [parsed]
    for index, rec in enumerate(parsed):
        yield ParsedRecord(index, None, rec)


class _CsvLines:
    """The lines fed to `csv.reader`, numbered, keeping the lines of the row being parsed: a row that an
    unterminated quote ran on into the next lines is re-read from its second line. Lines over the size limit
    are not fed at all; they wait in `long_lines` to be reported."""

    def __init__(self, lines: Iterator[str | LongLine]) -> None:
        self.source = lines
        self.replayed: deque[tuple[int, str]] = deque()
        self.row: list[tuple[int, str]] = []  # (line number, line) of the row being parsed
        self.long_lines: list[tuple[int, LongLine]] = []
        self.read = 0  # lines taken from the source so far

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        while not self.replayed:
            line = next(self.source)
            self.read += 1
            if isinstance(line, LongLine):
                self.long_lines.append((self.read, line))
                continue
            self.replayed.append((self.read, line))
        number, line = self.replayed.popleft()
        self.row.append((number, line))
        return line

    def start_row(self) -> None:
        self.row = []

    def replay(self, lines: list[tuple[int, str]]) -> None:
        self.replayed.extendleft(reversed(lines))


def _read_csv(path: Path, compression: str, encoding: str, opts: ReadOptions,
              delimiter: str) -> Iterator[SourceRecord]:
    yield from _documents(_csv_records(path, compression, encoding, opts, delimiter, opts.max_record_bytes), opts)


def _csv_records(path: Path, compression: str, encoding: str, opts: ReadOptions, delimiter: str,
                 limit: int | None, need_text: bool = True) -> Iterator[SourceRecord | ParsedRecord]:
    """The rows of a CSV/TSV file as records; with `need_text` (reading, not previewing) a header without a text
    column, when the options name none, is one error instead of a row of errors."""
    # Characters, counted against a limit in bytes: never stricter than the limit (a character is >= 1 byte).
    csv.field_size_limit(limit if limit is not None else 1 << 30)
    delimiter = opts.csv_delimiter or delimiter
    with open_binary(path, compression) as fh:
        text = io.TextIOWrapper(fh, encoding=encoding, errors="replace", newline="")
        feed = _CsvLines(_bounded_lines(text, limit))
        header = next(csv.reader(feed, delimiter=delimiter), None)
        if header is None:
            return
        header = [h.strip().lstrip("\ufeff") for h in header]
        if need_text and not opts.text_field and not opts.template and not (set(header) & set(DEFAULT_TEXT_FIELDS)) \
                and guess_layout(dict.fromkeys(header)) == "text" and "question" not in {h.lower() for h in header}:
            yield SourceRecord(1, None, error="missing text field",
                               detail=f"choose a text field or template; columns: {header[:20]}")
            return
        # Strict parsing notices a quote that is never closed (the data ends inside it, or it "closes" at the
        # next row's opening quote): without it the following rows would silently become one field.
        reader = csv.reader(feed, delimiter=delimiter, strict=True)
        while True:
            feed.start_row()
            try:
                row = next(reader)
                error = None
            except StopIteration:
                row, error = None, None
            except csv.Error as exc:
                row, error = [], exc
            for number, long_line in feed.long_lines:
                reason, detail = _oversized(long_line, limit)
                yield SourceRecord(number, None, error=reason, detail=detail)
            feed.long_lines = []
            if row is None:
                break
            lines = feed.row
            start = lines[0][0] if lines else feed.read
            if error is not None:
                reader = csv.reader(feed, delimiter=delimiter, strict=True)
                if len(lines) > 1 or "end of data" in str(error) or "field limit" in str(error):
                    end = lines[-1][0] if lines else start
                    yield SourceRecord(start, None, error="unterminated quote", detail=_snippet(
                        f"a quote opened on line {start} is not closed by line {end} ({error}); that line is "
                        f"skipped and reading goes on from the next: {lines[0][1].rstrip() if lines else ''}"))
                    feed.replay(lines[1:])
                    continue
                # Sloppy quoting within one line ('"abc" def') is read as before, leniently.
                row = next(csv.reader([line for _, line in lines], delimiter=delimiter), [])
            if not row or not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                yield SourceRecord(start, None, error="wrong number of columns",
                                   detail=_snippet(f"expected {len(header)}, got {len(row)}: {row}"))
                continue
            rec: dict[str, Any] = dict(zip(header, row, strict=True))
            if "choices" not in rec and "question" in {k.lower() for k in rec} and _choice_columns(rec):
                rec = _mmlu_row(rec)
            yield ParsedRecord(start, None, rec)


def _choice_columns(rec: dict[str, Any]) -> list[str]:
    """The option columns of an MMLU-style CSV row: A-D (and E), or choice0.. / option0.. in order."""
    if {"A", "B", "C", "D"} <= rec.keys():
        return [c for c in "ABCDE" if c in rec]
    for prefix in ("choice", "option"):
        numbered = sorted((k for k in rec if k.lower().startswith(prefix) and k[len(prefix):].isdigit()),
                          key=lambda k: int(k[len(prefix):]))
        if len(numbered) >= 2:
            return numbered
    return []


def _mmlu_row(rec: dict[str, Any]) -> dict[str, Any]:
    """MMLU/CMMLU CSV rows (question, options A-D or choice0.., answer letter or 0-based index) as an item."""
    question = next(v for k, v in rec.items() if k.lower() == "question")
    answer = next((v for k, v in rec.items() if k.lower() == "answer"), "")
    answer = answer.strip()
    columns = _choice_columns(rec)
    letters = "ABCDE"[: len(columns)]
    # A letter becomes its index; anything else is passed on for `gold_index` to accept or reject.
    index = letters.index(answer) if len(answer) == 1 and answer in letters else answer
    return {"question": question, "choices": [rec[c] for c in columns], "answer_index": index,
            "subject": rec.get("subject")}


def _read_text(path: Path, compression: str, encoding: str, opts: ReadOptions) -> Iterator[SourceRecord]:
    limit = opts.max_record_bytes
    if opts.txt_unit == "file":
        with open_binary(path, compression) as fh:
            data = fh.read() if limit is None else fh.read(limit + 1)
            if limit is not None and len(data) > limit:
                size = len(data) + sum(len(piece) for piece in iter(lambda: fh.read(1 << 20), b""))
                head = data[:SNIPPET_CHARS].decode(encoding, errors="replace")
                yield SourceRecord(1, 0, error=f"oversized document (file of {size:,} bytes > {limit:,})",
                                   detail=f"skipped unread beyond its first characters: {head!r}…")
                return
        yield SourceRecord(1, 0, text=data.decode(encoding, errors="replace").lstrip("\ufeff"))
        return
    # A paragraph is buffered until it ends; past `limit` only its size is counted, and it is rejected.
    start_line: int | None = None
    start_offset, buffer, size, head = None, [], 0, ""

    def paragraph() -> SourceRecord:
        if limit is not None and size > limit:
            return SourceRecord(start_line, start_offset, error=f"oversized document (paragraph of {size:,} "
                                f"bytes > {limit:,})", detail=f"skipped beyond its first characters: {head!r}…")
        return SourceRecord(start_line, start_offset, text="\n".join(buffer))

    for number, offset, line in _lines_with_offsets(path, compression, encoding, limit):
        if isinstance(line, LongLine):
            text, length = line.head, line.size
        else:
            text, length = (line.decode("utf-8", "replace") if isinstance(line, bytes) else line), len(line)
        if text.strip():
            if start_line is None:
                start_line, start_offset, head = number, offset, text[:SNIPPET_CHARS]
            size += length
            if limit is not None and size > limit:
                buffer = []
            else:
                buffer.append(text.rstrip("\r\n"))
        elif start_line is not None:
            yield paragraph()
            start_line, buffer, size = None, [], 0
    if start_line is not None:
        yield paragraph()


def _read_parquet(path: Path, opts: ReadOptions) -> Iterator[SourceRecord]:
    yield from _documents(_parquet_records(path), opts)


def _parquet_records(path: Path, batch_size: int = 8192) -> Iterator[ParsedRecord]:
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for rec in batch.to_pylist():
            yield ParsedRecord(row, None, rec)
            row += 1


def read_hub(spec: str, opts: ReadOptions, info: SourceInfo) -> Iterator[SourceRecord]:
    """`hf://owner/name[:config][/split]` through `datasets`, streamed."""
    body = spec.removeprefix("hf://")
    parts = body.split("/")
    if len(parts) < 2:
        raise SourceError(f"{spec}: expected hf://owner/name[:config][/split]")
    name, split = "/".join(parts[:2]), (parts[2] if len(parts) > 2 else "train")
    config = None
    if ":" in name:
        name, config = name.split(":", 1)
    try:
        import datasets
    except ImportError as exc:
        raise SourceError("reading hf:// sources needs the `datasets` package") from exc
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
        iterator = iter(stream)
        first = next(iterator, None)
    except Exception as exc:  # datasets raises many types for an unreachable hub
        raise SourceError(f"cannot read {spec}: no hub reachable or no such dataset ({type(exc).__name__}: "
                          f"{str(exc)[:300]})") from exc
    info.fmt = "hf"
    if first is None:
        return
    yield record_to_document(first, opts, 0, None)
    for row, rec in enumerate(iterator, start=1):
        yield record_to_document(rec, opts, row, None)


# --- previews (the Ingest page shows the first rows before anything is written) -----------------------------
@dataclass
class Preview:
    fmt: str
    encoding: str
    rows: list[dict[str, Any]]  # raw records (text formats: {"text": paragraph})
    fields: list[str]  # dotted paths of string fields, best text candidates first
    guessed_layout: str


def _string_paths(value: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, int]]:
    """(dotted path, length) of the string leaves of a record, a few levels deep."""
    if isinstance(value, str):
        return [(prefix, len(value))]
    out: list[tuple[str, int]] = []
    if depth < 3 and isinstance(value, dict):
        for key, item in value.items():
            out += _string_paths(item, f"{prefix}.{key}" if prefix else str(key), depth + 1)
    elif depth < 3 and isinstance(value, list) and value:
        out += _string_paths(value[0], f"{prefix}.0" if prefix else "0", depth + 1)
    return out


def preview_source(path: Path, opts: ReadOptions | None = None, limit: int = 10) -> Preview:
    """The first `limit` raw records of a file and the string fields a text could come from."""
    opts = opts or ReadOptions()
    fmt, compression = split_suffixes(path)
    fmt = opts.fmt if opts.fmt != "auto" else fmt
    if not fmt:
        raise SourceError(f"unsupported file type: {path.name}")
    encoding = "" if fmt == "parquet" else (opts.encoding or source_encoding(fmt, _text_sample(path, compression,
                                                                                              opts)))
    # The reader's own parsers, so the preview shows the records exactly as the ingest will read them.
    if fmt == "parquet":
        items: Iterator[SourceRecord | ParsedRecord] = _parquet_records(path, batch_size=limit)
    elif fmt == "jsonl":
        items = _jsonl_records(path, compression, encoding, opts.max_record_bytes or PREVIEW_LINE_BYTES)
    elif fmt == "json":
        items = _json_array_records(path, compression, encoding, opts.max_record_bytes or PREVIEW_LINE_BYTES)
    elif fmt in {"csv", "tsv"}:
        items = _csv_records(path, compression, encoding, opts, "\t" if fmt == "tsv" else ",",
                             opts.max_record_bytes or PREVIEW_LINE_BYTES, need_text=False)
    else:
        items = _read_text(path, compression, encoding, opts)
    rows = [_preview_row(item) for item in itertools.islice(items, limit)]
    lengths: dict[str, int] = {}
    for row in rows:
        for key, n in _string_paths(row):
            lengths[key] = lengths.get(key, 0) + n
    preferred = [f for f in DEFAULT_TEXT_FIELDS if f in lengths]
    fields = preferred + sorted((f for f in lengths if f not in preferred), key=lambda f: -lengths[f])
    layout = guess_layout(rows[0]) if rows and isinstance(rows[0], dict) else "text"
    return Preview(fmt=fmt, encoding=encoding, rows=rows, fields=fields, guessed_layout=layout)


def _preview_row(item: SourceRecord | ParsedRecord) -> dict[str, Any]:
    """One previewed row: the raw record (a value that is not an object under "(value)"), a text paragraph as
    {"text": ...}, a line the reader rejects by its reason."""
    if isinstance(item, ParsedRecord):
        return item.record if isinstance(item.record, dict) else {"(value)": item.record}
    if item.error is None:
        return {"text": item.text}
    if item.error.startswith("oversized"):
        return {"(oversized line)": item.detail}
    return {"(malformed line)": f"{item.error}: {item.detail}"}
