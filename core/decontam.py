"""Lexical decontamination: n-gram overlap between training text and benchmark items (question and gold answer).

The unit is the word n-gram for space-delimited text and the character n-gram for Chinese and Japanese (each Han
or kana character is a token), default n = 13 as in GPT-3 and the lm-evaluation-harness janitor. Tokens are
Unicode word runs, NFKC-folded and case-folded, so case, punctuation and re-flowed line breaks do not hide a
copy (re-wrapping is a known way to defeat line-based checks, marin #6852). Items shorter than n tokens are
matched as a whole when they have at least `min_item_tokens` tokens; shorter ones cannot be checked and are
counted.

Speed: token ids come from the benchmark vocabulary only, so any window holding a token no item has can never
match and is skipped; the remaining windows are hashed with a random polynomial hash in NumPy, a batch of
documents at a time, and looked up in the sorted item hashes. Only documents with a hash hit are tokenised
again with character offsets and verified token by token (no false hit from a hash collision).

`ContaminationIndex.find` gives the overlapping spans; `cut` applies the configured mode: drop the text, or cut
each span with a margin (GPT-3: 200 characters each side) and drop a text cut into more than `max_pieces`.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from core.benchmarks import arrow_query, benchmark_names, ensure_registered
from core.flow import scope_sql
from core.progress import Progress, no_progress
from core.steps import Step, param
from core.text import CJK_CHAR_TOKEN_RE, CJK_TOKEN_RE
from core.workspace import Workspace, WorkspaceError

# One Han/kana character, or a run of other word characters (`core.text`, shared with dedup's shingles).
_TOKEN_RE = CJK_TOKEN_RE
_CJK_TOKEN_RE = CJK_CHAR_TOKEN_RE
STEP = "decontam"  # as recorded in `runs.step`
DECONTAM_MODES = ("drop", "cut")
_FILTER_BITS = 24
_SCAN_BATCH = 4096


@dataclass
class DecontamConfig:
    n: int = param(13, flag="-n", aliases=("--n",), minimum=2, show_default=False,
                   help="n-gram length in words, characters for Chinese")
    benchmarks: list[str] | None = param(None, help="comma-separated benchmark names (default: all)")
    mode: str = param("drop", choices=DECONTAM_MODES, show_default=False,
                      help="drop contaminated documents, or cut the overlaps with a margin")
    margin_chars: int = param(200, flag="--margin", minimum=0, show_default=False,
                              help="cut mode: characters removed each side")
    max_pieces: int = param(10, minimum=1, show_default=False, help="cut mode: drop a document cut into more pieces")
    min_piece_chars: int = param(200, minimum=0, cli=False,
                                 help="cut mode: shorter pieces are discarded (NeMo's min_document_length)")
    min_item_tokens: int = param(8, minimum=1, show_default=False,
                                 help="items shorter than n are matched whole when at least this long")
    corpora: list[str] | None = param(None, help="comma-separated corpora to check (default: all but benchmarks)")
    batch_size: int = param(2_000, minimum=1, cli=False, help="documents read per batch")

    def validate(self) -> None:
        if self.mode not in DECONTAM_MODES:
            raise ValueError(f"mode must be one of {', '.join(DECONTAM_MODES)}, not {self.mode!r}")
        if self.n < 2:
            raise ValueError("n must be at least 2")
        if not 1 <= self.min_item_tokens <= self.n:
            raise ValueError(f"min_item_tokens must be between 1 and n ({self.n})")
        if self.margin_chars < 0 or self.max_pieces < 1 or self.min_piece_chars < 0:
            raise ValueError("margin_chars and min_piece_chars must be >= 0 and max_pieces >= 1")


@dataclass(frozen=True)
class Overlap:
    item_doc_id: str
    start: int  # character offsets of the overlapping span in the checked text
    end: int
    ngram: str  # the normalised tokens of the span


@dataclass(frozen=True)
class BenchmarkItemRef:
    doc_id: str
    corpus: str
    item_id: str
    subject: str
    text: str  # what is checked: question and gold answer


def _fold(token: str) -> str:
    if not token.isascii():
        token = unicodedata.normalize("NFKC", token)
    return token.casefold()


def tokenize(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Normalised tokens of `text` with their character spans in `text`."""
    tokens, spans = [], []
    for m in _TOKEN_RE.finditer(text):
        tokens.append(_fold(m.group()))
        spans.append(m.span())
    return tokens, spans


def fast_tokens(text: str) -> list[str]:
    # The same tokens as `tokenize`, without offsets (folding the whole text at once is much faster).
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return _TOKEN_RE.findall(text.casefold())


def join_tokens(tokens: list[str]) -> str:
    out: list[str] = []
    for i, tok in enumerate(tokens):
        if i and not (_CJK_TOKEN_RE.match(tok) and _CJK_TOKEN_RE.match(tokens[i - 1])):
            out.append(" ")
        out.append(tok)
    return "".join(out)


class ContaminationIndex:
    """The n-grams of a set of benchmark items, ready to check any text against them."""

    def __init__(self, items: list[BenchmarkItemRef], cfg: DecontamConfig | None = None, seed: int = 13) -> None:
        self.cfg = cfg = cfg or DecontamConfig()
        cfg.validate()
        self.items = items
        self.by_doc_id = {it.doc_id: it for it in items}
        self.vocab: dict[str, int] = {}
        self.item_tokens: list[np.ndarray] = []
        self.too_short: list[str] = []
        for it in items:
            ids = [self.vocab.setdefault(tok, len(self.vocab)) for tok in fast_tokens(it.text)]
            self.item_tokens.append(np.asarray(ids, dtype=np.int64))
        rng = np.random.default_rng(seed)
        self._token_hash = rng.integers(1, 2**63, size=max(len(self.vocab), 1), dtype=np.uint64) | np.uint64(1)
        # Window hash = sum_j v[i+j] * B**j (mod 2**64), B odd so that B**i is invertible: a text's prefix sums
        # then give every window of every length in two gathers and a multiply.
        self._base = int(rng.integers(1, 2**63)) | 1
        self._inv_base = pow(self._base, -1, 2**64)
        self._powers = self._power_table(self._base, cfg.n)
        # window length -> (sorted unique hashes, hash -> [(item index, token offset)])
        self.tables: dict[int, tuple[np.ndarray, dict[int, list[tuple[int, int]]]]] = {}
        by_length: dict[int, tuple[list[np.ndarray], list[tuple[int, int]]]] = defaultdict(lambda: ([], []))
        for index, ids in enumerate(self.item_tokens):
            if len(ids) >= cfg.n:
                length = cfg.n
            elif len(ids) >= cfg.min_item_tokens:
                length = len(ids)
            else:
                self.too_short.append(items[index].doc_id)
                continue
            hashes = self._window_hashes(ids, length)
            bucket = by_length[length]
            bucket[0].append(hashes)
            bucket[1].extend((index, offset) for offset in range(len(hashes)))
        for length, (hash_lists, owners) in by_length.items():
            all_hashes = np.concatenate(hash_lists)
            lookup: dict[int, list[tuple[int, int]]] = defaultdict(list)
            for h, owner in zip(all_hashes.tolist(), owners, strict=True):
                lookup[h].append(owner)
            self.tables[length] = (np.unique(all_hashes), dict(lookup))
        self.ngrams = sum(len(t[0]) for t in self.tables.values())
        # A 16-million-slot prefilter on the hashes' top bits: nearly every window is rejected by one lookup.
        self._filter = np.zeros(1 << _FILTER_BITS, dtype=bool)
        for hashes, _ in self.tables.values():
            self._filter[hashes >> np.uint64(64 - _FILTER_BITS)] = True

    # --- hashing -----------------------------------------------------------------------------------------
    @staticmethod
    def _power_table(base: int, size: int) -> np.ndarray:
        """base**0 .. base**(size-1) mod 2**64."""
        powers = np.full(max(size, 1), base, dtype=np.uint64)
        powers[0] = 1
        return np.cumprod(powers, dtype=np.uint64)

    def _all_window_hashes(self, arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prefix sums, inverse powers) from which the hash of window (i, L) is
        (prefix[i + L] - prefix[i]) * inverse[i]."""
        values = self._token_hash[np.where(arr < 0, 0, arr)]
        prefix = np.zeros(len(arr) + 1, dtype=np.uint64)
        np.cumsum(values * self._power_table(self._base, len(arr)), dtype=np.uint64, out=prefix[1:])
        return prefix, self._power_table(self._inv_base, len(arr))

    def _matching_starts(self, arr: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per window length: (start positions, hashes) of the windows of `arr` whose hash is an item hash."""
        out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if not len(arr) or not self.tables:
            return out
        bad = np.concatenate([[0], np.cumsum(arr < 0)])
        prefix, inverse = self._all_window_hashes(arr)
        shift = np.uint64(64 - _FILTER_BITS)
        for length, (hashes, _lookup) in self.tables.items():
            if len(arr) < length:
                continue
            starts = np.flatnonzero(bad[length:] - bad[:-length] == 0)
            if not len(starts):
                continue
            window = (prefix[starts + length] - prefix[starts]) * inverse[starts]
            keep = self._filter[window >> shift]
            starts, window = starts[keep], window[keep]
            if not len(starts):
                continue
            pos = np.searchsorted(hashes, window)
            pos[pos == len(hashes)] = 0
            exact = hashes[pos] == window
            if exact.any():
                out[length] = (starts[exact], window[exact])
        return out

    def _window_hashes(self, ids: np.ndarray, length: int, starts: np.ndarray | None = None) -> np.ndarray:
        """Polynomial hashes (mod 2**64) of the windows of `length` tokens starting at `starts`."""
        if starts is None:
            starts = np.arange(max(len(ids) - length + 1, 0))
        values = self._token_hash[ids]
        h = np.zeros(len(starts), dtype=np.uint64)
        for j in range(length):
            h += values[starts + j] * self._powers[j]
        return h

    def _candidate_texts(self, token_lists: list[list[str]]) -> set[int]:
        """Indexes of the texts with at least one window whose hash is an item hash."""
        get = self.vocab.get
        ids: list[int] = []
        bounds = [0]
        for toks in token_lists:
            ids.extend([get(t, -1) for t in toks])
            ids.append(-1)  # a separator: no window spans two texts
            bounds.append(len(ids))
        hits: set[int] = set()
        for found, _ in self._matching_starts(np.asarray(ids, dtype=np.int64)).values():
            hits.update(np.searchsorted(np.asarray(bounds), found, side="right") - 1)
        return {int(i) for i in hits}

    # --- public API --------------------------------------------------------------------------------------
    def find(self, text: str) -> list[Overlap]:
        """Overlapping spans of `text` with any item, merged per item (character offsets in `text`)."""
        if not self._candidate_texts([fast_tokens(text)]):
            return []
        return self._verify(text)

    def find_many(self, texts: list[str]) -> list[list[Overlap]]:
        """`find` for many texts at once (one vectorised pass; much faster than calling `find` in a loop)."""
        out: list[list[Overlap]] = []
        for start in range(0, len(texts), _SCAN_BATCH):  # bounded memory: a batch's tokens at a time
            part = texts[start:start + _SCAN_BATCH]
            found = self._candidate_texts([fast_tokens(t) for t in part])
            out.extend(self._verify(t) if i in found else [] for i, t in enumerate(part))
        return out

    def cut(self, text: str) -> tuple[str | None, list[Overlap]]:
        """`text` with overlaps handled per the configured mode, or None when it must be dropped."""
        overlaps = self.find(text)
        return self.apply(text, overlaps), overlaps

    def apply(self, text: str, overlaps: list[Overlap]) -> str | None:
        """The mode applied to already found `overlaps` (see `cut`)."""
        if not overlaps:
            return text
        if self.cfg.mode == "drop":
            return None
        pieces = cut_pieces(text, overlaps, self.cfg.margin_chars)
        if len(pieces) > self.cfg.max_pieces:
            return None
        kept = [p for p in pieces if len(p) >= self.cfg.min_piece_chars]
        return "\n\n".join(kept) if kept else None

    def item(self, doc_id: str) -> BenchmarkItemRef:
        return self.by_doc_id[doc_id]

    def _verify(self, text: str) -> list[Overlap]:
        tokens, spans = tokenize(text)
        ids = np.asarray([self.vocab.get(t, -1) for t in tokens], dtype=np.int64)
        matches: dict[int, list[tuple[int, int]]] = defaultdict(list)  # item index -> [(first, last) token]
        for length, (starts, window) in self._matching_starts(ids).items():
            lookup = self.tables[length][1]
            for start, h in zip(starts.tolist(), window.tolist(), strict=True):
                for item_index, offset in lookup.get(h, ()):
                    item_ids = self.item_tokens[item_index]
                    if np.array_equal(item_ids[offset:offset + length], ids[start:start + length]):
                        matches[item_index].append((start, start + length - 1))
        overlaps = []
        for item_index, windows in matches.items():
            windows.sort()
            first, last = windows[0]
            for a, b in windows[1:] + [(None, None)]:
                if a is not None and a <= last + 1:
                    last = max(last, b)
                    continue
                overlaps.append(Overlap(self.items[item_index].doc_id, spans[first][0], spans[last][1],
                                        join_tokens(tokens[first:last + 1])))
                if a is not None:
                    first, last = a, b
        overlaps.sort(key=lambda o: (o.start, o.item_doc_id))
        return overlaps


def cut_pieces(text: str, overlaps: list[Overlap], margin: int) -> list[str]:
    """The parts of `text` left after removing every overlap widened by `margin` characters each side."""
    intervals = sorted((max(o.start - margin, 0), min(o.end + margin, len(text))) for o in overlaps)
    pieces, cursor = [], 0
    for start, end in intervals:
        if start > cursor:
            pieces.append(text[cursor:start])
        cursor = max(cursor, end)
    pieces.append(text[cursor:])
    return [p.strip() for p in pieces if p.strip()]


# --- the index of a workspace's benchmarks ------------------------------------------------------------------
def load_items(ws: Workspace, names: list[str] | None = None) -> list[BenchmarkItemRef]:
    """Benchmark items (question and gold answer) of the named benchmark corpora, or of all of them."""
    names = benchmark_names(ws, names)
    ensure_registered(ws, names)
    if not names:
        return []
    rows = ws.query(
        "SELECT i.doc_id, d.corpus, coalesce(i.item_id, i.doc_id), coalesce(i.subject, '(none)'), i.question, "
        "i.answer FROM documents d LEFT JOIN benchmark_items i USING (doc_id) "
        f"WHERE d.corpus IN ({', '.join('?' * len(names))}) ORDER BY d.corpus, d.doc_id", names)
    missing = [r for r in rows if r[0] is None]
    if missing:
        raise WorkspaceError("some benchmark documents are not registered; run `studio bench-import` for "
                             f"{sorted({r[1] for r in missing})}")
    return [BenchmarkItemRef(doc_id, corpus, item_id, subject, f"{question}\n{answer}".strip())
            for doc_id, corpus, item_id, subject, question, answer in rows]


def contamination_index(ws: Workspace, cfg: DecontamConfig | None = None) -> ContaminationIndex:
    """The index of the workspace's benchmark items (those named in `cfg.benchmarks`, or all)."""
    cfg = cfg or DecontamConfig()
    cfg.validate()
    return ContaminationIndex(load_items(ws, cfg.benchmarks), cfg)


# --- the step over the workspace ----------------------------------------------------------------------------
@dataclass
class DecontamResult:
    run_id: str
    documents_checked: int
    documents_contaminated: int
    documents_dropped: int
    documents_cut: int
    overlaps: int
    items_checked: int
    items_too_short: int
    items_flagged: int
    by_benchmark: dict[str, dict[str, int]] = field(default_factory=dict)
    by_corpus: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pool_corpora(ws: Workspace, corpora: list[str] | None) -> list[str]:
    """The corpora to check or recall from: those named, or every corpus that is not a benchmark."""
    known = dict(ws.query("SELECT name, role FROM corpora"))
    if corpora is None:
        return sorted(n for n, r in known.items() if r != "benchmark")
    unknown = [c for c in corpora if c not in known]
    if unknown:
        raise WorkspaceError(f"no corpus named {', '.join(unknown)} (corpora: {', '.join(sorted(known))})")
    return list(corpora)


def run_decontam(ws: Workspace, cfg: DecontamConfig | None = None,
                 progress: Progress = no_progress) -> DecontamResult:
    """Check every current document of the chosen corpora against the benchmark items and record the evidence.

    mode 'drop': every contaminated document gets a drop decision naming the item and the span.
    mode 'cut': documents are kept and their spans stored (exports cut them); a document that cutting would
    break into more than `max_pieces` pieces, or leave empty, is dropped.
    Items found in any checked document are flagged 'lexical' (the mirror image, for clean-subset scores).
    """
    cfg = cfg or DecontamConfig()
    cfg.validate()
    corpora = pool_corpora(ws, cfg.corpora)
    progress(0.0, "indexing benchmark items")
    index = contamination_index(ws, cfg)
    if not index.items:
        raise WorkspaceError("the workspace has no benchmark to check against (ingest one with bench-import)")
    # What the steps before decontamination in the flow left of these corpora (`core.flow`).
    pool, pool_params = scope_sql(ws, STEP, corpora=corpora)
    total = ws.scalar(f"SELECT count(*) FROM ({pool})", pool_params) if corpora else 0
    params = {**asdict(cfg), "corpora": corpora}
    rows: dict[str, list] = defaultdict(list)
    decision_rows: dict[str, list] = defaultdict(list)
    checked = contaminated = dropped = cut = 0
    by_corpus: Counter[str] = Counter()
    with ws.run(STEP, params) as run:
        if total:
            # All documents to check first, then the writes: no open result set while the run writes.
            todo = arrow_query(ws, f"SELECT doc_id, corpus, text FROM ({pool}) ORDER BY doc_id", pool_params)
            for batch in todo.to_batches(cfg.batch_size):
                doc_ids = batch.column(0).to_pylist()
                corpus_names = batch.column(1).to_pylist()
                texts = batch.column(2).to_pylist()
                for doc_id, corpus, text, overlaps in zip(doc_ids, corpus_names, texts, index.find_many(texts),
                                                          strict=True):
                    if not overlaps:
                        continue
                    contaminated += 1
                    by_corpus[corpus] += 1
                    for o in overlaps:
                        rows["doc_id"].append(doc_id)
                        rows["item_doc_id"].append(o.item_doc_id)
                        rows["benchmark"].append(index.item(o.item_doc_id).corpus)
                        rows["span_start"].append(o.start)
                        rows["span_end"].append(o.end)
                        rows["ngram"].append(o.ngram)
                        rows["span_text"].append(text[o.start:o.end])
                    first = overlaps[0]
                    item = index.item(first.item_doc_id)
                    evidence = {"item": first.item_doc_id, "benchmark": item.corpus, "item_id": item.item_id,
                                "subject": item.subject, "span": [first.start, first.end],
                                "text": text[first.start:first.end][:500], "overlaps": len(overlaps),
                                "items": sorted({o.item_doc_id for o in overlaps})[:20], "n": cfg.n}
                    kept = index.apply(text, overlaps)
                    if kept is None:
                        dropped += 1
                        why = "contaminated" if cfg.mode == "drop" else "cut into too many or too short pieces"
                        decision_rows["verdict"].append("drop")
                        decision_rows["reason"].append(
                            f"benchmark overlap ({why}): {cfg.n}-gram shared with {item.corpus} item "
                            f"{item.item_id}")
                    else:
                        cut += 1
                        pieces = len(cut_pieces(text, overlaps, cfg.margin_chars))
                        evidence["pieces"] = pieces
                        evidence["chars_kept"] = len(kept)
                        decision_rows["verdict"].append("keep")
                        decision_rows["reason"].append(
                            f"benchmark overlap cut at export ({pieces} piece(s) kept): {item.corpus} item "
                            f"{item.item_id}")
                    decision_rows["doc_id"].append(doc_id)
                    decision_rows["score"].append(float(sum(o.end - o.start for o in overlaps)))
                    decision_rows["threshold"].append(float(cfg.n))
                    decision_rows["details"].append(json.dumps(evidence, ensure_ascii=False))
                checked += len(doc_ids)
                progress(checked / total, f"{checked:,} / {total:,} documents checked, {contaminated:,} contaminated")
        if rows:
            table = pa.table({**rows, "span_start": pa.array(rows["span_start"], pa.int32()),
                              "span_end": pa.array(rows["span_end"], pa.int32())})
            ws.con.register("new_contamination", table)
            ws.con.execute("INSERT INTO contamination SELECT ?, doc_id, item_doc_id, benchmark, span_start, "
                           "span_end, ngram, span_text FROM new_contamination", [run.run_id])
            ws.con.unregister("new_contamination")
            # The mirror image: each item found in training text, with its first piece of evidence.
            ws.con.execute(
                "INSERT INTO benchmark_item_flags SELECT ?, item_doc_id, 'lexical', arg_min(doc_id, span_start), "
                "max(span_end - span_start), arg_max(span_text, span_end - span_start) FROM contamination "
                "WHERE run_id = ? GROUP BY item_doc_id", [run.run_id, run.run_id])
        if decision_rows:
            ws.record_decisions(run, pa.table(dict(decision_rows)))
        by_benchmark: dict[str, dict[str, int]] = {}
        for bench, n_docs, n_items in ws.query(
                "SELECT benchmark, count(DISTINCT doc_id), count(DISTINCT item_doc_id) FROM contamination "
                "WHERE run_id = ? GROUP BY 1 ORDER BY 1", [run.run_id]):
            by_benchmark[bench] = {"documents": n_docs, "items": n_items}
        for bench in sorted({it.corpus for it in index.items}):
            by_benchmark.setdefault(bench, {"documents": 0, "items": 0})
            by_benchmark[bench]["items_checked"] = sum(1 for it in index.items if it.corpus == bench)
        flagged = ws.scalar("SELECT count(DISTINCT item_doc_id) FROM benchmark_item_flags WHERE run_id = ?",
                            [run.run_id])
        result = DecontamResult(
            run_id=run.run_id, documents_checked=checked, documents_contaminated=contaminated,
            documents_dropped=dropped, documents_cut=cut, overlaps=len(rows["doc_id"]),
            items_checked=len(index.items), items_too_short=len(index.too_short), items_flagged=flagged,
            by_benchmark=by_benchmark, by_corpus=dict(by_corpus))
        run.counts = {k: v for k, v in result.to_dict().items() if isinstance(v, int)}
    progress(1.0, f"{contaminated:,} of {checked:,} documents share a {cfg.n}-gram with a benchmark item")
    return result


def contamination_evidence(ws: Workspace, run_id: str):  # -> pandas.DataFrame
    """Every n-gram overlap a contamination check found: the document, its corpus, the benchmark item it shares
    the span with, and the span (characters and text), in corpus and document order."""
    return ws.df(
        """
        SELECT c.doc_id, d.corpus, c.benchmark, i.item_id, i.subject, c.span_end - c.span_start AS chars,
               c.span_text, c.span_start, c.span_end, c.item_doc_id
        FROM contamination c JOIN documents d USING (doc_id) JOIN benchmark_items i ON i.doc_id = c.item_doc_id
        WHERE c.run_id = ? ORDER BY d.corpus, c.doc_id, c.span_start""", [run_id])


def check_texts(index: ContaminationIndex, texts: list[str]) -> list[dict[str, Any]]:
    """Per-text findings for texts outside the workspace (a finished mix file): overlaps and the mode's verdict."""
    out = []
    for i, (text, overlaps) in enumerate(zip(texts, index.find_many(texts), strict=True)):
        if overlaps:
            kept = index.apply(text, overlaps)
            out.append({"index": i, "verdict": "drop" if kept is None else "cut",
                        "overlaps": [{**asdict(o), "benchmark": index.item(o.item_doc_id).corpus,
                                      "item_id": index.item(o.item_doc_id).item_id} for o in overlaps]})
    return out


def _summary(result: DecontamResult) -> dict[str, Any]:
    return {"run_id": result.run_id, "documents_checked": result.documents_checked,
            "documents_contaminated": result.documents_contaminated, "documents_dropped": result.documents_dropped,
            "items_flagged": result.items_flagged}


REGISTERED_STEP = Step("decontam", DecontamConfig, run_decontam, command="decontam", summary=_summary)
