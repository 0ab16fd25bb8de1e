"""Terminology density: how much of a document is the domain's own vocabulary, and a filter on it.

A lexicon is a set of terms with weights (1 by default). Every document of the workspace is matched against the
lexicon with one Aho-Corasick automaton (pyahocorasick, C), so matching costs one pass over the text however
many terms there are; a regex alternation of the same terms tries every alternative at every position
(`bench/terms.py` measures both).

Matching rules
- Terms in Latin script match case-insensitively and only as whole words: the characters just before and after
  a match must not be letters or digits ('ear' does not match inside 'hearing'). Regular English plurals of the
  last word (-s, -es, -ies) count as the term, so 'tumors' is a hit for 'tumor'.
- Chinese terms match as plain substrings: Chinese is written without spaces, so there is no word boundary to
  check.
- Overlapping matches are resolved leftmost-longest and never counted twice: 'breast cancer' is one hit, not a
  hit for 'breast cancer' and another for 'cancer'; 糖尿病肾病 is one hit, not also 糖尿病.

Density
- Space-delimited text: density = weighted hits per word (whitespace-separated token).
- Chinese and Japanese text (by `documents.language`): density = weighted hits per character, where a unit is
  one Han character or one run of Latin letters/digits. Chinese has no spaces, so 'words' would have to come
  from a segmenter (jieba), whose idea of a word differs from the lexicon's and costs a second pass; characters
  are a stable, cheap unit. A Chinese word averages about 1.5 characters, so a per-character density is lower
  than the per-word density of the same text: the same 0.02 default is conservative for Chinese.
- With the default weight 1 for every term, weighted hits equal hits and density is plain term occurrences per
  unit.

The filter keeps a domain document when its density is at least `min_density` (default 0.02) and its length is
within 50-2,000 words, as in common continued-pretraining practice. For Chinese the length bounds are in
characters, 75-3,000 (1.5 characters per English word, the usual translation ratio), adjustable on their own.
Densities are stored for every document of every corpus (general ones too), so the page can show the separation
and the threshold can move without matching again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ahocorasick
import pyarrow as pa

from core.config import REPO_ROOT
from core.corpus import document_texts, sampled
from core.flow import scope_sql
from core.progress import Progress, no_progress
from core.steps import ScoredAndFiltered, Step, param, score_then_filter, split_recipe
from core.text import detect_language
from core.workspace import ROLES, Workspace, active_run

LEXICON_DIR = REPO_ROOT / "data" / "lexicons"
DEFAULT_LEXICONS = ("medical_en", "medical_zh")
SCORE_STEP = "terms_score"  # matching: stores term_hits; the `current_term_density` view reads its active run
FILTER_STEP = "terms"  # the filter: writes the drops into `decisions`

# Han characters (as in core.text) or a run of Latin letters/digits: the length unit of Chinese text.
_CHAR_UNIT_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+")
_CJK_SCRIPT_START = "\u2e80"  # CJK radicals onward: never a word character for the boundary check
_CHAR_UNIT_LANGUAGES = frozenset({"zh", "ja"})


# --- lexicons --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lexicon:
    """Terms with weights. Keys are the lower-cased terms; `spelling` keeps the first spelling seen for display."""

    name: str
    weights: dict[str, float]
    spelling: dict[str, str]
    sources: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.weights)

    def fingerprint(self) -> str:
        """Same terms and weights, same fingerprint: lets a scoring run be reused instead of repeated."""
        blob = "\n".join(f"{k}\t{w:g}" for k, w in sorted(self.weights.items()))
        return hashlib.blake2b(blob.encode("utf-8"), digest_size=8).hexdigest()


def bundled_lexicons() -> dict[str, Path]:
    """The lexicons shipped in data/lexicons, by name (file name without extension)."""
    return {p.stem: p for p in sorted(LEXICON_DIR.glob("*")) if p.suffix.lower() in {".txt", ".csv"}}


def _add_term(weights: dict[str, float], spelling: dict[str, str], term: str, weight: float, origin: str) -> None:
    term = " ".join(term.split())  # inner whitespace folded: 'blood  pressure' is 'blood pressure'
    if not term:
        return
    if not weight > 0:
        raise ValueError(f"{origin}: weight of {term!r} must be a positive number, not {weight!r}")
    key = term.lower()
    spelling.setdefault(key, term)
    # A term listed twice (in one lexicon or in two combined ones) keeps its highest weight.
    weights[key] = max(weights.get(key, 0.0), weight)


def parse_lexicon(text: str, name: str, fmt: str = "txt") -> Lexicon:
    """Read a lexicon from text. TXT: one term a line, '#' comments. CSV: `term,weight` rows, optional header
    (any first row whose weight is not a number), '#' comment rows; a missing weight is 1."""
    weights: dict[str, float] = {}
    spelling: dict[str, str] = {}
    fmt = fmt.lower().lstrip(".")
    if fmt == "txt":
        for line in text.splitlines():
            line = line.strip().lstrip("\ufeff")
            if line and not line.startswith("#"):
                _add_term(weights, spelling, line, 1.0, name)
    elif fmt == "csv":
        rows = [r for r in csv.reader(io.StringIO(text.lstrip("\ufeff")))
                if any(c.strip() for c in r) and not r[0].strip().startswith("#")]
        term_col, weight_col = 0, 1
        if rows:
            header = [c.strip().lower() for c in rows[0]]
            if len(header) > 1 and not _is_number(header[1]):
                term_col = header.index("term") if "term" in header else 0
                weight_col = header.index("weight") if "weight" in header else 1
                rows = rows[1:]
        for number, row in enumerate(rows, start=1):
            raw_weight = row[weight_col].strip() if len(row) > weight_col else ""
            if raw_weight and not _is_number(raw_weight):
                raise ValueError(f"{name}: row {number}: weight {raw_weight!r} is not a number")
            term = row[term_col] if len(row) > term_col else ""
            _add_term(weights, spelling, term, float(raw_weight) if raw_weight else 1.0, name)
    else:
        raise ValueError(f"{name}: a lexicon is a .txt (one term a line) or .csv (term,weight) file, not {fmt!r}")
    if not weights:
        raise ValueError(f"lexicon {name} has no terms")
    return Lexicon(name=name, weights=weights, spelling=spelling, sources=(name,))


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def load_lexicon(spec: str | Path) -> Lexicon:
    """A bundled lexicon by name (`medical_en`) or a TXT/CSV file by path."""
    bundled = bundled_lexicons()
    if isinstance(spec, str) and spec in bundled:
        path = bundled[spec]
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no lexicon {spec!r}: not a bundled name ({', '.join(bundled)}) nor a file")
    return parse_lexicon(path.read_text(encoding="utf-8"), path.stem, path.suffix)


def combine_lexicons(lexicons: Sequence[Lexicon]) -> Lexicon:
    """One lexicon holding every term of several; a term in more than one keeps its highest weight."""
    if not lexicons:
        raise ValueError("no lexicon given")
    weights: dict[str, float] = {}
    spelling: dict[str, str] = {}
    for lexicon in lexicons:
        for key, weight in lexicon.weights.items():
            _add_term(weights, spelling, lexicon.spelling[key], weight, lexicon.name)
    return Lexicon(name="+".join(lx.name for lx in lexicons), weights=weights, spelling=spelling,
                   sources=tuple(s for lx in lexicons for s in lx.sources))


def load_lexicons(specs: Iterable[str | Path]) -> Lexicon:
    return combine_lexicons([load_lexicon(s) for s in specs])


# --- matching --------------------------------------------------------------------------------------------------
def is_latin(term: str) -> bool:
    """Whether a term is written without CJK characters (matched by words, not by characters)."""
    return all(c < _CJK_SCRIPT_START for c in term)


def _is_word_char(c: str) -> bool:
    return c.isalnum() and c < _CJK_SCRIPT_START


def english_plurals(term: str) -> list[str]:
    """Regular plurals of a term's last word: tumor -> tumors, abscess -> abscesses, artery -> arteries."""
    if not term[-1:].isalpha() or (term.isupper() and len(term) <= 5):
        return []  # abbreviations (CT, MRI) and terms ending in a digit or symbol take no plural here
    lowered = term.lower()
    if lowered.endswith(("s", "x", "z", "ch", "sh")):
        return [term + "es"]
    if lowered.endswith("y") and len(lowered) > 1 and lowered[-2] not in "aeiou":
        return [term[:-1] + "ies"]
    return [term + "s"]


@dataclass(frozen=True)
class TermMatch:
    start: int
    end: int  # exclusive
    term: str  # the lexicon's spelling


class TermMatcher:
    """An Aho-Corasick automaton over a lexicon's terms and their plurals, matching as the module doc says."""

    def __init__(self, lexicon: Lexicon) -> None:
        self.lexicon = lexicon
        self.automaton = ahocorasick.Automaton()
        # value: (length, lexicon key, needs word boundaries)
        for key in lexicon.weights:
            latin = is_latin(key)
            self.automaton.add_word(key, (len(key), key, latin))
        for key in lexicon.weights:
            if is_latin(key):
                for plural in english_plurals(lexicon.spelling[key]):
                    plural = plural.lower()
                    if plural not in lexicon.weights:  # a plural listed as its own term stays its own term
                        self.automaton.add_word(plural, (len(plural), key, True))
        self.automaton.make_automaton()

    def matches(self, text: str) -> list[TermMatch]:
        """Non-overlapping matches, leftmost-longest, in text order."""
        return [TermMatch(s, e, self.lexicon.spelling[k]) for s, e, k in self._spans(text)]

    def _spans(self, text: str) -> list[tuple[int, int, str]]:
        lowered = text.lower()
        if len(lowered) != len(text):  # a few characters lower-case to two (İ): keep offsets aligned
            lowered = "".join(c.lower()[:1] for c in text)
        found: list[tuple[int, int, str]] = []
        n = len(lowered)
        for last, (length, key, bounded) in self.automaton.iter(lowered):
            start = last - length + 1
            if bounded and ((start > 0 and _is_word_char(lowered[start - 1]))
                            or (last + 1 < n and _is_word_char(lowered[last + 1]))):
                continue
            found.append((start, last + 1, key))
        if len(found) < 2:
            return found
        found.sort(key=lambda m: (m[0], -m[1]))
        chosen: list[tuple[int, int, str]] = []
        reached = 0
        for start, end, key in found:
            if start >= reached:
                chosen.append((start, end, key))
                reached = end
        return chosen

    def count(self, text: str) -> Counter[str]:
        """Hits per lexicon key."""
        return Counter(k for _, _, k in self._spans(text))


def length_units(text: str, language: str | None) -> tuple[int, str]:
    """(units, unit): words for space-delimited text, characters for Chinese and Japanese (module doc)."""
    if language is None:
        language = detect_language(text)
    if language in _CHAR_UNIT_LANGUAGES:
        return len(_CHAR_UNIT_RE.findall(text)), "char"
    return len(text.split()), "word"


@dataclass
class DocumentScores:
    """Per-document values for a batch, column by column (ready for an Arrow table)."""

    unit: list[str] = field(default_factory=list)
    units: list[int] = field(default_factory=list)
    hits: list[int] = field(default_factory=list)
    weighted_hits: list[float] = field(default_factory=list)
    density: list[float] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)  # JSON {term: count}


def score_texts(matcher: TermMatcher, texts: Sequence[str], languages: Sequence[str | None]) -> DocumentScores:
    weights, spelling = matcher.lexicon.weights, matcher.lexicon.spelling
    out = DocumentScores()
    for text, language in zip(texts, languages, strict=True):
        units, unit = length_units(text, language)
        counts = matcher.count(text)
        hits = sum(counts.values())
        weighted = sum(weights[k] * c for k, c in counts.items()) if counts else 0.0
        out.unit.append(unit)
        out.units.append(units)
        out.hits.append(hits)
        out.weighted_hits.append(weighted)
        out.density.append(weighted / units if units else 0.0)
        out.terms.append(json.dumps({spelling[k]: c for k, c in counts.most_common()}, ensure_ascii=False))
    return out


# --- the scoring step ------------------------------------------------------------------------------------------
@dataclass
class TermScoreConfig:
    lexicons: list[str] = param(list(DEFAULT_LEXICONS), flag="--lexicon", repeat=True, metavar="FILE",
                                show_default=False,
                                help="a bundled lexicon name (medical_en, medical_zh) or a .txt/.csv file; repeat to "
                                     f"combine several (default: {' + '.join(DEFAULT_LEXICONS)})")
    batch_size: int = param(5_000, minimum=1, cli=False, help="documents matched per batch")
    rescore: bool = param(False, help="match again even if the same lexicon already scored every document")


@dataclass
class TermScoreResult:
    run_id: str
    lexicon: str
    terms: int
    fingerprint: str
    documents: int
    hits: int
    seconds: float
    reused: bool = False

    @property
    def docs_per_second(self) -> float:
        return self.documents / self.seconds if self.seconds else 0.0


def score_terms(ws: Workspace, cfg: TermScoreConfig | None = None,
                progress: Progress = no_progress) -> TermScoreResult:
    """Match the lexicon against every document and store hits and density per document (`term_hits`)."""
    cfg = cfg or TermScoreConfig()
    lexicon = load_lexicons(cfg.lexicons)
    fingerprint = lexicon.fingerprint()
    total = ws.scalar("SELECT count(*) FROM documents")
    previous = active_run(ws, SCORE_STEP)
    if previous and not cfg.rescore and previous.params.get("fingerprint") == fingerprint:
        unscored = ws.scalar("SELECT count(*) FROM documents d WHERE NOT EXISTS "
                             "(SELECT 1 FROM current_term_hits h WHERE h.doc_id = d.doc_id)")
        if unscored == 0:
            counts = previous.counts
            progress(1.0, f"reusing {previous.run_id}: same lexicon, every document scored")
            return TermScoreResult(previous.run_id, lexicon.name, len(lexicon), fingerprint, total,
                                   counts.get("hits", 0), counts.get("seconds", 0.0), reused=True)
    matcher = TermMatcher(lexicon)
    params = {"lexicons": [str(s) for s in cfg.lexicons], "lexicon": lexicon.name, "terms": len(lexicon),
              "fingerprint": fingerprint}
    started = time.perf_counter()
    done = hits = 0
    with ws.run(SCORE_STEP, params) as run:
        cursor = ws.con.cursor()  # a second cursor streams while the first one inserts
        try:
            reader = cursor.sql("SELECT doc_id, text, language FROM documents").to_arrow_reader(cfg.batch_size)
            for batch in reader:
                ids = batch.column(0).to_pylist()
                scores = score_texts(matcher, batch.column(1).to_pylist(), batch.column(2).to_pylist())
                table = pa.table({
                    "doc_id": ids, "unit": scores.unit, "units": pa.array(scores.units, pa.int32()),
                    "hits": pa.array(scores.hits, pa.int32()), "weighted_hits": scores.weighted_hits,
                    "density": scores.density, "terms": scores.terms})
                ws.con.register("term_batch", table)
                ws.con.execute(
                    "INSERT INTO term_hits (doc_id, run_id, lexicon, unit, units, hits, weighted_hits, density, "
                    "terms) SELECT doc_id, ?, ?, unit, units, hits, weighted_hits, density, terms FROM term_batch",
                    [run.run_id, lexicon.name])
                ws.con.unregister("term_batch")
                done += len(ids)
                hits += sum(scores.hits)
                progress(done / total if total else 1.0, f"{done:,} / {total:,} documents matched")
        finally:
            cursor.close()
        seconds = time.perf_counter() - started
        run.counts = {"documents": done, "hits": hits, "seconds": round(seconds, 3),
                      "docs_per_s": round(done / seconds, 1) if seconds else None}
    # Superseded scorings are history in `runs`; their per-document rows would only grow the file.
    ws.con.execute("DELETE FROM term_hits WHERE run_id <> ? AND run_id IN "
                   "(SELECT run_id FROM runs WHERE step = ? AND NOT active)", [run.run_id, SCORE_STEP])
    return TermScoreResult(run.run_id, lexicon.name, len(lexicon), fingerprint, done, hits, seconds)


# --- the filter ------------------------------------------------------------------------------------------------
@dataclass
class TermFilterConfig:
    min_density: float = param(0.02, minimum=0.0,
                               help="keep documents with at least this many (weighted) term hits per word, per "
                                    "character for Chinese")
    min_words: int = param(50, minimum=0, help="shortest document kept, in words")
    max_words: int = param(2_000, minimum=0, help="longest document kept, in words")
    # Chinese/Japanese documents: length in characters (1.5 per English word)
    min_chars: int = param(75, minimum=0, help="length bound for Chinese/Japanese documents, in characters")
    max_chars: int = param(3_000, minimum=0, help="longest Chinese/Japanese document kept, in characters")
    roles: list[str] = param(["domain"], flag="--role", repeat=True, metavar="ROLE", show_default=False,
                             help="filter the corpora of this role; repeatable (default: domain)")
    corpora: list[str] | None = param(None, flag="--corpus", repeat=True, metavar="NAME",
                                      help="filter exactly these corpora instead of a role; repeatable")

    def validate(self) -> None:
        if self.min_density < 0:
            raise ValueError("--min-density must be >= 0")
        if self.min_words > self.max_words or self.min_chars > self.max_chars:
            raise ValueError("a minimum length is above its maximum")
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown role(s) {sorted(unknown)}; roles are {', '.join(ROLES)}")


RULES = ("too_short", "too_long", "low_term_density")


def _filter_sql(ws: Workspace, cfg: TermFilterConfig) -> tuple[str, list[Any]]:
    """Each scored document in scope (what the steps before this filter in the flow left, `core.flow`) with the
    first rule it fails (NULL when kept), its value and threshold. Length is checked before density: a 10-word
    line with one term has density 0.1 and is still a fragment."""
    scope, scope_params = scope_sql(ws, FILTER_STEP, None if cfg.corpora else cfg.roles, cfg.corpora)
    sql = f"""
        WITH scoped AS (
            SELECT h.doc_id, d.corpus, d.role, h.unit, h.units, h.hits, h.weighted_hits, h.density, h.lexicon,
                   CASE WHEN h.unit = 'char' THEN ? ELSE ? END AS min_len,
                   CASE WHEN h.unit = 'char' THEN ? ELSE ? END AS max_len
            FROM current_term_hits h JOIN ({scope}) d USING (doc_id)
        )
        SELECT *,
            CASE WHEN units < min_len THEN 'too_short' WHEN units > max_len THEN 'too_long'
                 WHEN density < ? THEN 'low_term_density' END AS rule,
            CASE WHEN units < min_len OR units > max_len THEN units::DOUBLE ELSE density END AS value,
            CASE WHEN units < min_len THEN min_len::DOUBLE WHEN units > max_len THEN max_len::DOUBLE
                 ELSE ? END AS threshold
        FROM scoped
    """
    params = [cfg.min_chars, cfg.min_words, cfg.max_chars, cfg.max_words, *scope_params,
              cfg.min_density, cfg.min_density]
    return sql, params


def _per_corpus(ws: Workspace, cfg: TermFilterConfig) -> list[dict[str, Any]]:
    """Kept and dropped counts per corpus under `cfg`, from stored values only."""
    sql, params = _filter_sql(ws, cfg)
    rows = ws.con.execute(
        f"""SELECT corpus, any_value(role), count(*), count(*) FILTER (WHERE rule IS NULL),
                   count(*) FILTER (WHERE rule = 'too_short'), count(*) FILTER (WHERE rule = 'too_long'),
                   count(*) FILTER (WHERE rule = 'low_term_density')
            FROM ({sql}) GROUP BY corpus ORDER BY corpus""", params).fetchall()
    keys = ("corpus", "role", "documents", "kept", "too_short", "too_long", "low_term_density")
    return [dict(zip(keys, r, strict=True)) for r in rows]


@dataclass
class TermFilterResult:
    """A terminology filter's outcome: applied (run_id) or previewed (run_id None)."""

    run_id: str | None
    documents: int
    kept: int
    dropped: int
    dropped_by_rule: dict[str, int]
    per_corpus: list[dict[str, Any]]


def _result(run_id: str | None, per_corpus: list[dict[str, Any]]) -> TermFilterResult:
    documents = sum(c["documents"] for c in per_corpus)
    kept = sum(c["kept"] for c in per_corpus)
    by_rule = {rule: sum(c[rule] for c in per_corpus) for rule in RULES}
    return TermFilterResult(run_id, documents, kept, documents - kept, by_rule, per_corpus)


def filter_preview(ws: Workspace, cfg: TermFilterConfig | None = None) -> TermFilterResult:
    """What applying `cfg` would keep and drop, in total and per corpus, from stored values only (the page's live
    view and `studio terms` without --apply): the applied run's result, with no run_id."""
    cfg = cfg or TermFilterConfig()
    cfg.validate()
    return _result(None, _per_corpus(ws, cfg))


def apply_term_filter(ws: Workspace, cfg: TermFilterConfig | None = None,
                      progress: Progress = no_progress) -> TermFilterResult:
    """Write a `decisions` drop row (rule, value, threshold) for every document in scope that fails the filter.
    Re-applying supersedes the earlier filter run, so changed thresholds re-derive the current corpus."""
    cfg = cfg or TermFilterConfig()
    cfg.validate()
    scoring = active_run(ws, SCORE_STEP)
    if scoring is None:
        raise ValueError("no terminology scores yet: run `studio terms WORKSPACE --lexicon ...` first")
    if cfg.corpora:
        known = {r[0] for r in ws.query("SELECT name FROM corpora")}
        if missing := sorted(set(cfg.corpora) - known):
            raise ValueError(f"unknown corpus {', '.join(missing)}")
    params = {**{k: v for k, v in vars(cfg).items()}, "scoring_run": scoring.run_id,
              "lexicon": scoring.params.get("lexicon")}
    progress(0.1, "applying the terminology filter")
    sql, sql_params = _filter_sql(ws, cfg)
    with ws.run(FILTER_STEP, params) as run:
        drops = ws.con.sql(
            f"""SELECT doc_id, 'drop' AS verdict, rule AS reason, value AS score, threshold,
                       json_object('rule', rule, 'unit', unit, 'units', units, 'hits', hits,
                                   'weighted_hits', weighted_hits, 'density', density,
                                   'min_density', ?, 'length_bounds', [min_len, max_len],
                                   'lexicon', lexicon)::VARCHAR AS details
                FROM ({sql}) WHERE rule IS NOT NULL""", params=[cfg.min_density, *sql_params]).to_arrow_table()
        ws.record_decisions(run, drops)
        result = _result(run.run_id, _per_corpus(ws, cfg))
        run.counts = {"documents": result.documents, "kept": result.kept, "dropped": result.dropped,
                      **result.dropped_by_rule}
    progress(1.0, f"{result.dropped:,} of {result.documents:,} documents dropped")
    return result


# --- reading stored values (the page, the tests) -----------------------------------------------------------------
def density_table(ws: Workspace, corpora: Sequence[str] | None = None,
                  sample_rows: int | None = None):  # -> pandas.DataFrame
    """Stored density and length of every scored document, with its corpus and role; with `sample_rows`, of a
    repeatable reservoir sample of at most that many (the page's histogram: on a million documents the whole
    table would cost the page seconds)."""
    where, params = ("WHERE d.corpus IN (SELECT unnest(?::VARCHAR[]))", [list(corpora)]) if corpora else ("", [])
    rows = f"""SELECT h.doc_id, d.corpus, c.role, h.unit, h.units, h.hits, h.weighted_hits, h.density
               FROM current_term_hits h JOIN documents d USING (doc_id) JOIN corpora c ON c.name = d.corpus {where}"""
    if sample_rows is not None:
        rows = sampled(rows, sample_rows)
    return ws.df(f"SELECT * FROM ({rows}) ORDER BY corpus, doc_id", params)


def corpus_density_summary(ws: Workspace) -> list[dict[str, Any]]:
    """Median and mean density, share of documents with any hit, per corpus."""
    rows = ws.query(
        """SELECT d.corpus, any_value(c.role), count(*), median(h.density), avg(h.density),
                  avg((h.hits > 0)::INTEGER), any_value(h.unit)
           FROM current_term_hits h JOIN documents d USING (doc_id) JOIN corpora c ON c.name = d.corpus
           GROUP BY d.corpus ORDER BY any_value(c.role), d.corpus""")
    keys = ("corpus", "role", "documents", "median_density", "mean_density", "share_with_hits", "unit")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def documents_near_threshold(ws: Workspace, corpus: str, min_density: float, n: int = 3,
                             cfg: TermFilterConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """The `n` documents just below and just above `min_density` in a corpus (length within bounds, so the
    density decides them), with text and stored values."""
    cfg = cfg or TermFilterConfig()
    # the sides are picked without the texts (reading every candidate's text cost four times the pick on a
    # million documents); the picked ones' texts are read after
    base = """SELECT h.doc_id, h.density, h.hits, h.units, h.unit, h.terms
              FROM current_term_hits h JOIN documents d USING (doc_id)
              WHERE d.corpus = ? AND h.units BETWEEN (CASE WHEN h.unit = 'char' THEN ? ELSE ? END)
                                               AND (CASE WHEN h.unit = 'char' THEN ? ELSE ? END)"""
    bounds = [cfg.min_chars, cfg.min_words, cfg.max_chars, cfg.max_words]
    keys = ("doc_id", "density", "hits", "units", "unit", "terms")
    sides = {"below": ws.query(f"{base} AND h.density < ? ORDER BY h.density DESC, h.doc_id LIMIT ?",
                               [corpus, *bounds, min_density, n]),
             "above": ws.query(f"{base} AND h.density >= ? ORDER BY h.density, h.doc_id LIMIT ?",
                               [corpus, *bounds, min_density, n])}
    ids = [row[0] for rows in sides.values() for row in rows]
    texts = document_texts(ws, ids)
    return {side: [{**dict(zip(keys, r, strict=True)), "text": texts[r[0]]} for r in rows]
            for side, rows in sides.items()}


def scored_lexicon_specs(ws: Workspace) -> list[str]:
    """The lexicon specs (bundled names or paths) of the active scoring, to match again for highlighting."""
    scoring = active_run(ws, SCORE_STEP)
    return list(scoring.params.get("lexicons", [])) if scoring else []


# --- the demo --------------------------------------------------------------------------------------------------
@dataclass
class TermsStepConfig:
    """The terminology step as a recipe runs it: score with the lexicons, then filter (one table, both configs'
    fields; `lexicons`, `batch_size`, `rescore` go to scoring, the rest to the filter)."""

    score: TermScoreConfig = field(default_factory=TermScoreConfig)
    filter: TermFilterConfig = field(default_factory=TermFilterConfig)

    def validate(self) -> None:
        self.filter.validate()


def _summary(result: ScoredAndFiltered) -> dict[str, Any]:
    scored, filtered = result.score, result.filter
    return {"score_run_id": scored.run_id, "run_id": filtered.run_id, "documents_scored": scored.documents,
            "hits": scored.hits, "filtered": filtered.documents, "kept": filtered.kept,
            "dropped": filtered.dropped, **filtered.dropped_by_rule}


REGISTERED_STEP = Step("terms", TermsStepConfig, score_then_filter(score_terms, apply_term_filter),
            command="terms", summary=_summary, recipe_configs=lambda table: {None: TermsStepConfig(*split_recipe(
                table, TermScoreConfig, TermFilterConfig, step="terms"))})
