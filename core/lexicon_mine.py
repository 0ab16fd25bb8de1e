"""Lexicon mining: the terms that a domain's text uses far more often than general text, as a weighted lexicon.

Candidates
- Space-delimited text: word 1-3-grams of the lower-cased text. Tokens are runs of letters/digits (inner
  hyphens and apostrophes kept: `covid-19`, `crohn's`); an n-gram never crosses punctuation, its first and last
  words are not stop words (scikit-learn's English list) and contain a letter, and the only stop word inside it
  may be 'of': 'quality of life' and 'type 2 diabetes' are candidates, 'of the', '2019', 'tests are used' not.
- Chinese and Japanese text (`documents.language`): character 2-4-grams inside runs of Han characters (not
  beginning or ending with a function character: 的, 了, 是 ...), and jieba words of more than 4 characters and
  compounds of two adjacent jieba words (肌酐 + 清除率), found by segmenting a bounded sample of the domain text
  (`jieba_chars`; segmenting is the slow part). Terms match as substrings (core.terms), so every candidate is
  counted as a substring. A character n-gram is kept only if jieba splits it into words of 2+ characters (a word
  or a compound of words: 降压药物 yes, 个心血管 no).

Score: the log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn 2008, "Fightin' Words:
Lexical Feature Selection and Evaluation for Identifying the Content of Political Conflict", Political Analysis
16(4):372-403, section 3.5). For a term w with count y_d in the domain text and y_g in the general text
(n_d, n_g: all candidate occurrences of the same n-gram order on each side), and prior counts
a_w = a_0 * (y_d + y_g) / (n_d + n_g) (the pooled frequency; a_0 = `prior` * (n_d + n_g)):

    delta_w = log((y_d + a_w) / (n_d + a_0 - y_d - a_w)) - log((y_g + a_w) / (n_g + a_0 - y_g - a_w))
    var(delta_w) ~= 1 / (y_d + a_w) + 1 / (y_g + a_w)
    z_w = delta_w / sqrt(var(delta_w))

`z` is the score candidates are ranked by: large when the term is both much more frequent in the domain and
frequent enough for that to be certain; the prior shrinks rare terms towards no difference. `delta` is the
effect size (about the log of the ratio of the two rates).

Kept: terms in at least `min_df` domain documents and at most `max_general_share` of the general documents (a word
every hundredth general paragraph uses is ordinary language, whatever its ratio), with z >= `min_z` and
delta >= `min_log_odds` (default 2: a rate at least e^2 = 7.4 times the general one); not a fragment of longer kept
terms (90 % or more of its domain occurrences inside one longer kept term, for Chinese inside the longer kept terms
together: 'lymphoblastic' beside 'acute lymphoblastic leukemia', 原体 beside 病原体/衣原体/支原体); not a regular
English plural of a kept term (the matcher counts plurals as the singular); the `top` highest z per language.

Weight: min(1, delta / `full_weight_log_odds`): a term 20 times (e^3) more frequent in the domain counts a full
hit, one 7.4 times more frequent two thirds of one. Weights never exceed 1, so density keeps its meaning
(weighted hits per word, per character in Chinese) and a mined lexicon merges with hand-written ones (weight 1)
under the same thresholds.

Speed: counting is plain Python over `collections.Counter` (about 3,000 English documents of 550 characters per
CPU second), in one worker process per core from `parallel_from` documents on; the scoring is vectorised with NumPy.
`bench/lexicon.py` measures it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core.flow import scope_sql
from core.parallel import default_workers, process_pool
from core.progress import Progress, no_progress
from core.steps import param
from core.terms import FILTER_STEP as TERMS_FILTER_STEP
from core.terms import Lexicon, TermMatcher, english_plurals, score_texts
from core.workspace import Workspace

STEP = "lexicon_mine"
MINED_DIR = "lexicon_mining"  # under artifacts/: the candidates of each run, for the page
LANGUAGES = ("auto", "en", "zh")
HAN_LANGUAGES = frozenset({"zh", "ja"})

_WORD_TOKEN_RE = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*|[^\w\s]")
_HAN_RUN_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
# Function characters that never begin or end a Chinese term (particles, pronouns, copula, conjunctions).
_HAN_EDGE_STOP = frozenset("的了是在和与及或等着过吗呢吧啊呀我你他她它们这那其之也就都而且把被让给对从向很么")
_CONTEXT_CHARS = 70


@cache
def english_stop_words() -> frozenset[str]:
    """scikit-learn's English stop-word list (318 words) plus the studio's function words (read on first use:
    importing scikit-learn costs the Terminology page 0.4 s)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    from core.text import ENGLISH_STOP_WORDS as STUDIO_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | STUDIO_STOP_WORDS



def language_group(language: str | None) -> str:
    """'zh' for Han-script documents (Chinese, Japanese), else 'en' (word n-grams)."""
    return "zh" if language in HAN_LANGUAGES else "en"


# --- candidates of one document ---------------------------------------------------------------------------------
_token_roles: dict[str, tuple[bool, bool]] = {}  # token -> (may begin or end an n-gram, may sit inside one)


def _token_role(token: str) -> tuple[bool, bool]:
    role = _token_roles.get(token)
    if role is None:
        word = token[0].isalnum()
        # Inside an n-gram: any word but a stop word other than 'of' ('quality of life', 'type 2 diabetes'; not
        # 'tests are used'); punctuation ends it.
        stop_words = english_stop_words()
        role = (word and token not in stop_words and not token.isdigit() and any(c.isalpha() for c in token),
                word and (token not in stop_words or token == "of"))
        if len(_token_roles) < 1_000_000:  # the vocabulary of a corpus; bounded for pathological input
            _token_roles[token] = role
    return role


def word_candidates(text: str, max_n: int = 3) -> list[str]:
    """Word 1..max_n-grams of one document, as the module doc says; repeated as often as they occur."""
    tokens = _WORD_TOKEN_RE.findall(text.lower())
    roles = [_token_roles.get(t) or _token_role(t) for t in tokens]
    grams: list[str] = []
    append = grams.append
    length = len(tokens)
    for i in range(length):
        if not roles[i][0]:
            continue
        append(tokens[i])
        for j in range(i + 1, min(i + max_n, length)):
            edge, inner = roles[j]
            if edge:
                append(" ".join(tokens[i:j + 1]))
            if not inner:
                break
    return grams


_jieba_ready = False


def _jieba():  # -> the jieba module, initialised once per process without its log lines
    global _jieba_ready
    import jieba

    if not _jieba_ready:
        jieba.setLogLevel(60)
        jieba.initialize()
        _jieba_ready = True
    return jieba


def han_candidates(text: str) -> list[str]:
    """Character 2-4-grams inside runs of Han characters, not beginning or ending with a function character."""
    grams: list[str] = []
    stop = _HAN_EDGE_STOP
    for run in _HAN_RUN_RE.findall(text):
        size = len(run)
        if size < 2:
            continue
        ok = [c not in stop for c in run]
        starts = [i for i in range(size - 1) if ok[i]]
        for n in (2, 3, 4):
            last = size - n
            grams.extend([run[i:i + n] for i in starts if i <= last and ok[i + n - 1]])
    return grams


def jieba_long_words(texts: Iterable[str], max_chars: int) -> set[str]:
    """Terms of more than 4 Han characters in the first `max_chars` characters of `texts`: jieba words (dictionary,
    no HMM) and pairs of adjacent jieba words of 2+ characters each (肌酐 + 清除率, 糖尿病 + 肾病), as English
    has word bigrams. Segmenting is the slow part of Chinese mining (about 100k characters/s), so it runs on a
    bounded sample; the terms found are then counted as substrings everywhere."""
    jieba = _jieba()
    words: set[str] = set()
    budget = max_chars
    for text in texts:
        for run in _HAN_RUN_RE.findall(text):
            if len(run) > 4:
                pieces = jieba.lcut(run, HMM=False)
                words.update(w for w in pieces if len(w) > 4)
                words.update(a + b for a, b in zip(pieces, pieces[1:], strict=False)
                             if len(a) >= 2 and len(b) >= 2 and len(a) + len(b) > 4)
            budget -= len(run)
        if budget <= 0:
            break
    return words


def whole_words(term: str) -> bool:
    """True when jieba (dictionary, no HMM) splits a Chinese term into words of 2+ characters only: a word or a
    compound of words (降压药物 = 降压 + 药物), not a stretch across word boundaries (个心血管 = 个 + 心血管)."""
    return all(len(piece) >= 2 for piece in _jieba().lcut(term, HMM=False))


def term_order(term: str, group: str) -> int:
    """The n-gram order a term is compared within: words for English, characters (5 = longer) for Chinese."""
    return term.count(" ") + 1 if group == "en" else min(len(term), 5)


# --- counting -----------------------------------------------------------------------------------------------------
@dataclass
class NgramCounts:
    """Occurrences (tf) and document frequency (df) of every candidate on one side, for one language group."""

    tf: Counter[str] = field(default_factory=Counter)
    df: Counter[str] = field(default_factory=Counter)
    documents: int = 0

    def add(self, other: NgramCounts) -> None:
        self.tf.update(other.tf)
        self.df.update(other.df)
        self.documents += other.documents

    def totals(self, group: str) -> Counter[int]:
        out: Counter[int] = Counter()
        for term, count in self.tf.items():
            out[term_order(term, group)] += count
        return out


def count_texts(texts: Sequence[str], group: str, max_n: int = 3) -> NgramCounts:
    """Candidates of every text counted; a pure function (the pool's unit of work)."""
    counts = NgramCounts()
    tf, df = counts.tf, counts.df
    for text in texts:
        grams = han_candidates(text) if group == "zh" else word_candidates(text, max_n)
        tf.update(grams)
        df.update(set(grams))
        counts.documents += 1
    return counts


def count_substrings(texts: Iterable[str], terms: set[str], counts: NgramCounts) -> None:
    """Add every occurrence (overlaps included) of `terms` in `texts` to `counts`: one Aho-Corasick pass."""
    if not terms:
        return
    import ahocorasick

    automaton = ahocorasick.Automaton()
    for term in terms:
        automaton.add_word(term, term)
    automaton.make_automaton()
    for text in texts:
        found = [term for _, term in automaton.iter(text)]
        counts.tf.update(found)
        counts.df.update(set(found))


def count_corpus(texts: Sequence[str], group: str, max_n: int = 3, pool: Any = None,
                 workers: int = 1) -> NgramCounts:
    """Counts over `texts`; with a process pool, in one slice per worker (few, large results: merging many
    per-batch counters costs more than it saves)."""
    if pool is None or workers <= 1:
        return count_texts(texts, group, max_n)
    size = -(-len(texts) // workers)
    futures = [pool.submit(count_texts, texts[start:start + size], group, max_n)
               for start in range(0, len(texts), size)]
    total = NgramCounts()
    for future in futures:
        total.add(future.result())
    return total


# --- scoring ------------------------------------------------------------------------------------------------------
@dataclass
class LexiconMineConfig:
    # corpus names; empty: every corpus of that role
    domain: list[str] = param([], metavar="CORPORA", show_default=False,
                              help="comma-separated domain corpora (default: every corpus of role domain)")
    general: list[str] = param([], metavar="CORPORA", show_default=False,
                               help="comma-separated general corpora (default: every corpus of role general)")
    out: str | None = param(None, metavar="FILE", help="lexicon CSV to write (default: "
                                                       "WORKSPACE/artifacts/lexicons/mined.csv, listed by the "
                                                       "Terminology page)")
    name: str = param("mined", cli=False, help="lexicon name (file stem) when `out` is not given")
    language: str = param("auto", choices=LANGUAGES,
                          help="en: word n-grams; zh: Chinese n-grams; auto: each language present on both sides")
    min_df: int = param(5, help="a term occurs in at least this many domain documents")
    top: int = param(3_000, help="at most this many terms per language")
    # the domain rate at least one standard error above the general one
    min_z: float = param(1.0, help="z-score floor")
    min_log_odds: float = param(2.0, help="log-odds floor: 2 is a rate e^2 = 7.4 times the general one")
    # weight = min(1, delta / this): full weight at a rate 20x the general one
    full_weight_log_odds: float = param(3.0, cli=False, help="log-odds at which a term has full weight")
    # a term in more than this share of general documents is ordinary language
    max_general_share: float = param(0.01, help="drop terms found in more than this share of general documents")
    prior: float = param(0.01, help="strength of the Dirichlet prior, as a share of all occurrences")
    max_n: int = param(3, cli=False, help="longest word n-gram (English)")
    # Chinese words over 4 characters come from jieba on this many characters of domain text
    jieba_chars: int = param(1_000_000, cli=False, help="characters of domain text segmented by jieba")
    workers: int = param(0, show_default=False, help="counting processes (0: one per core)")  # at most 4
    parallel_from: int = param(50_000, cli=False, help="documents from which counting runs in worker processes")

    def validate(self) -> None:
        if self.language not in LANGUAGES:
            raise ValueError(f"--language is one of {', '.join(LANGUAGES)}, not {self.language!r}")
        if self.min_df < 1 or self.top < 1:
            raise ValueError("--min-df and --top must be at least 1")
        if not 0 < self.max_general_share <= 1:
            raise ValueError("--max-general-share must be in (0, 1]")
        if self.prior <= 0 or self.full_weight_log_odds <= 0:
            raise ValueError("--prior and the full-weight z must be positive")
        if not 1 <= self.max_n <= 5:
            raise ValueError("--max-n must be between 1 and 5")


@dataclass
class Candidate:
    term: str
    language: str  # 'en' or 'zh' (the language group)
    z: float  # the score
    delta: float  # log-odds ratio (effect size)
    weight: float
    domain_count: int
    general_count: int
    domain_df: int
    general_df: int
    example: str = ""


def log_odds_z(y_d, y_g, n_d, n_g, prior: float):  # floats or NumPy arrays -> (delta, z)
    """(delta, z) of the log-odds ratio with informative Dirichlet prior (module doc)."""
    a_0 = prior * (n_d + n_g)
    a_w = a_0 * (y_d + y_g) / (n_d + n_g)
    delta = (np.log((y_d + a_w) / (n_d + a_0 - y_d - a_w))
             - np.log((y_g + a_w) / (n_g + a_0 - y_g - a_w)))
    return delta, delta / np.sqrt(1.0 / (y_d + a_w) + 1.0 / (y_g + a_w))


def score_candidates(domain: NgramCounts, general: NgramCounts, group: str,
                     cfg: LexiconMineConfig) -> list[Candidate]:
    """Every candidate that passes the filters, highest z first, at most `cfg.top` (the log-odds computed for all
    terms at once with NumPy)."""
    totals_d, totals_g = domain.totals(group), general.totals(group)
    max_general_df = cfg.max_general_share * max(general.documents, 1)
    terms = [t for t, df_d in domain.df.items()
             if df_d >= cfg.min_df and general.df.get(t, 0) <= max_general_df]
    if not terms:
        return []
    orders = [term_order(t, group) for t in terms]
    y_d = np.array([domain.tf[t] for t in terms], dtype=np.float64)
    y_g = np.array([general.tf.get(t, 0) for t in terms], dtype=np.float64)
    n_d = np.array([totals_d[o] for o in orders], dtype=np.float64)
    n_g = np.maximum(np.array([totals_g[o] for o in orders], dtype=np.float64), 1.0)
    delta, z = log_odds_z(y_d, y_g, n_d, n_g, cfg.prior)
    keep = np.flatnonzero((z >= cfg.min_z) & (delta >= cfg.min_log_odds))
    scored = [Candidate(terms[i], group, round(float(z[i]), 3), round(float(delta[i]), 3),
                        round(min(1.0, float(delta[i]) / cfg.full_weight_log_odds), 3), int(y_d[i]), int(y_g[i]),
                        domain.df[terms[i]], general.df.get(terms[i], 0)) for i in keep]
    if group == "zh":
        scored = [c for c in scored if whole_words(c.term)]
    scored.sort(key=lambda c: (-c.z, c.term))
    dropped = _fragments(scored, group)
    if group == "en":
        kept = {c.term for c in scored} - dropped
        # 'tumors' beside 'tumor': the matcher counts the plural as the singular.
        dropped |= {c.term for c in scored
                    if any(s in kept and c.term in english_plurals_of(s) for s in _singulars(c.term))}
    return [c for c in scored if c.term not in dropped][:cfg.top]


def _fragments(scored: list[Candidate], group: str) -> set[str]:
    """Terms 90 % or more of whose domain occurrences sit inside one longer kept term. Longest first, each kept
    term registers its parts (word sub-sequences, or substrings for Chinese) with its count."""
    inside: dict[str, int] = {}
    inside_sum: Counter[str] = Counter()  # Chinese: the longer kept terms together (原体 in 病原体, 衣原体, 支原体)
    dropped: set[str] = set()
    for cand in sorted(scored, key=lambda c: -len(c.term)):
        covered = inside_sum[cand.term] if group == "zh" else inside.get(cand.term, 0)
        if covered >= 0.9 * cand.domain_count:
            dropped.add(cand.term)
            continue
        if group == "en":
            words = cand.term.split()
            parts = {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)
                     if j - i < len(words)}
        else:
            text = cand.term
            parts = {text[i:j] for i in range(len(text)) for j in range(i + 2, len(text) + 1)
                     if j - i < len(text)}
        for part in parts:
            inside_sum[part] += cand.domain_count
            if inside.get(part, 0) < cand.domain_count:
                inside[part] = cand.domain_count
    return dropped


def english_plurals_of(term: str) -> set[str]:
    return {p.lower() for p in english_plurals(term)}


def _singulars(term: str) -> list[str]:
    """Possible singulars of a term's last word (the inverse of core.terms.english_plurals)."""
    out = []
    if term.endswith("ies"):
        out.append(term[:-3] + "y")
    if term.endswith("es"):
        out.append(term[:-2])
    if term.endswith("s"):
        out.append(term[:-1])
    return out


def find_examples(candidates: list[Candidate], texts: Iterable[str], max_documents: int = 20_000) -> None:
    """Fill each candidate's `example` with a stretch of the first domain document using it (one pass of an
    Aho-Corasick automaton over the candidates)."""
    if not candidates:
        return
    lexicon = Lexicon("candidates", {c.term: 1.0 for c in candidates}, {c.term: c.term for c in candidates})
    matcher = TermMatcher(lexicon)
    missing = {c.term for c in candidates}
    found: dict[str, str] = {}
    for number, text in enumerate(texts):
        if not missing or number >= max_documents:
            break
        for match in matcher.matches(text):
            key = match.term
            if key in missing:
                start, end = max(0, match.start - _CONTEXT_CHARS), min(len(text), match.end + _CONTEXT_CHARS)
                snippet = " ".join(text[start:end].split())
                found[key] = ("…" if start else "") + snippet + ("…" if end < len(text) else "")
                missing.discard(key)
    for cand in candidates:
        cand.example = found.get(cand.term, "")


def mine_texts(domain: Sequence[tuple[str, str | None]], general: Sequence[tuple[str, str | None]],
               cfg: LexiconMineConfig | None = None, progress: Progress = no_progress,
               examples: bool = True) -> list[Candidate]:
    """Mine (text, language) pairs held in memory: the candidates of every language group present on both
    sides (or of `cfg.language`), best first within each group."""
    cfg = cfg or LexiconMineConfig()
    cfg.validate()
    workers = default_workers(cfg.workers) if len(domain) + len(general) >= cfg.parallel_from else 1
    with process_pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        return _mine(domain, general, cfg, progress, examples, pool, workers)


def _mine(domain: Sequence[tuple[str, str | None]], general: Sequence[tuple[str, str | None]],
          cfg: LexiconMineConfig, progress: Progress, examples: bool, pool: Any, workers: int) -> list[Candidate]:
    out: list[Candidate] = []
    groups = ["en", "zh"] if cfg.language == "auto" else [cfg.language]
    for group in groups:
        dom = [t for t, lang in domain if language_group(lang) == group]
        gen = [t for t, lang in general if language_group(lang) == group]
        if not dom or not gen:
            continue
        progress(-1, f"counting {group} candidates in {len(dom):,} domain and {len(gen):,} general documents")
        counts_d = count_corpus(dom, group, cfg.max_n, pool, workers)
        counts_g = count_corpus(gen, group, cfg.max_n, pool, workers)
        if group == "zh":
            progress(-1, "segmenting a sample of the domain text with jieba for words over 4 characters")
            long_words = jieba_long_words(dom, cfg.jieba_chars)
            count_substrings(dom, long_words, counts_d)
            count_substrings(gen, long_words, counts_g)
        candidates = score_candidates(counts_d, counts_g, group, cfg)
        if examples:
            find_examples(candidates, dom)
        out.extend(candidates)
    return out


# --- lexicon files ------------------------------------------------------------------------------------------------
def lexicon_csv(weights: dict[str, float], header: Sequence[str] = ()) -> str:
    """The studio's CSV lexicon format (core.terms.parse_lexicon): '#' comment rows, a header, term,weight."""
    buffer = io.StringIO()
    for line in header:
        buffer.write(f"# {line}\n")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["term", "weight"])
    for term, weight in weights.items():
        writer.writerow([term, f"{weight:g}"])
    return buffer.getvalue()


def write_lexicon(path: str | Path, weights: dict[str, float], header: Sequence[str] = ()) -> Path:
    """Write a `term,weight` CSV (folders created); refuses an empty lexicon."""
    if not weights:
        raise ValueError("no term selected: a lexicon needs at least one term")
    path = Path(path).expanduser()
    if path.suffix.lower() != ".csv":
        raise ValueError(f"{path.name}: a mined lexicon is written as .csv (term,weight)")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(lexicon_csv(weights, header), encoding="utf-8")
    return path


def workspace_lexicon_dir(ws_path: Path) -> Path:
    """Where a workspace's own lexicons live (the Terminology page lists them beside the bundled ones)."""
    return ws_path / "artifacts" / "lexicons"


# --- the step -----------------------------------------------------------------------------------------------------
@dataclass
class LexiconMineResult:
    run_id: str
    lexicon_path: str
    candidates_path: str
    terms: int
    terms_by_language: dict[str, int]
    domain_documents: int
    general_documents: int
    seconds: float
    top_terms: list[str]

    @property
    def docs_per_second(self) -> float:
        return (self.domain_documents + self.general_documents) / self.seconds if self.seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_s": round(self.docs_per_second, 1)}


def _resolve_corpora(ws: Workspace, names: list[str], role: str) -> list[str]:
    known = {r[0]: r[1] for r in ws.query("SELECT name, role FROM corpora")}
    if names:
        if missing := sorted(set(names) - set(known)):
            raise ValueError(f"unknown corpus {', '.join(missing)} (corpora: {', '.join(sorted(known))})")
        return list(dict.fromkeys(names))
    chosen = sorted(n for n, r in known.items() if r == role)
    if not chosen:
        raise ValueError(f"no corpus of role {role!r}: name the {role} corpora with --{role}")
    return chosen


def mining_scope(ws: Workspace, corpora: Sequence[str]) -> tuple[str, list[Any]]:
    """The current documents of `corpora` as `core.flow.scope_sql` gives them, except that the terminology
    filter's own drops do not count (a lexicon mined from what an earlier lexicon kept would inherit that
    lexicon's blind spots)."""
    return scope_sql(ws, None, corpora=list(corpora) or [""], ignoring=(TERMS_FILTER_STEP,))


def read_texts(ws: Workspace, corpora: Sequence[str]) -> list[tuple[str, str | None]]:
    """(text, language) of the current documents of `corpora`, ignoring the terminology filter's own drops (a
    lexicon mined from what an earlier lexicon kept would inherit that lexicon's blind spots)."""
    scope, params = mining_scope(ws, corpora)
    return ws.query(f"SELECT text, language FROM ({scope}) ORDER BY doc_id", params)


def run(ws: Workspace, cfg: LexiconMineConfig | None = None, progress: Progress = no_progress) -> LexiconMineResult:
    """Mine the workspace's domain corpora against its general corpora; write the lexicon CSV and the scored
    candidates (artifacts/lexicon_mining/<run_id>.parquet, for the Terminology page); record a run."""
    cfg = cfg or LexiconMineConfig()
    cfg.validate()
    domain_corpora = _resolve_corpora(ws, cfg.domain, "domain")
    general_corpora = _resolve_corpora(ws, cfg.general, "general")
    if overlap := sorted(set(domain_corpora) & set(general_corpora)):
        raise ValueError(f"corpus {', '.join(overlap)} is both domain and general")
    out = Path(cfg.out).expanduser() if cfg.out else workspace_lexicon_dir(ws.path) / f"{cfg.name}.csv"
    if out.suffix.lower() != ".csv":
        raise ValueError(f"--out {out.name}: a mined lexicon is written as .csv (term,weight)")
    params = {**asdict(cfg), "domain": domain_corpora, "general": general_corpora, "out": str(out)}
    started = time.perf_counter()
    with ws.run(STEP, params, supersede=False) as run_:
        progress(-1, "reading documents")
        domain = read_texts(ws, domain_corpora)
        general = read_texts(ws, general_corpora)
        candidates = mine_texts(domain, general, cfg, progress)
        if not candidates:
            raise ValueError("no term passes the filters: lower --min-df or --min-z, or add documents")
        frame = candidates_frame(candidates)
        mined_dir = ws.artifacts / MINED_DIR
        mined_dir.mkdir(parents=True, exist_ok=True)
        candidates_path = mined_dir / f"{run_.run_id}.parquet"
        frame.to_parquet(candidates_path, index=False)
        header = [f"mined by `studio lexicon-mine` (run {run_.run_id}): log-odds ratio with informative "
                  f"Dirichlet prior, weight = min(1, log-odds / {cfg.full_weight_log_odds:g})",
                  f"domain: {', '.join(domain_corpora)}; general: {', '.join(general_corpora)}"]
        write_lexicon(out, {c.term: c.weight for c in candidates}, header)
        seconds = time.perf_counter() - started
        by_language = dict(Counter(c.language for c in candidates))
        run_.counts = {"terms": len(candidates), "terms_by_language": by_language,
                       "domain_documents": len(domain), "general_documents": len(general),
                       "seconds": round(seconds, 3), "lexicon": str(out), "candidates": str(candidates_path)}
    progress(1.0, f"{len(candidates):,} terms written to {out}")
    return LexiconMineResult(run_.run_id, str(out), str(candidates_path), len(candidates), by_language,
                             len(domain), len(general), seconds, [c.term for c in candidates[:20]])


def candidates_frame(candidates: Sequence[Candidate]) -> pd.DataFrame:
    return pd.DataFrame([asdict(c) for c in candidates],
                        columns=[f for f in Candidate.__dataclass_fields__])


# --- reading results (the page, the tests) --------------------------------------------------------------------------
def mining_runs(ws: Workspace) -> list[dict[str, Any]]:
    """Successful mining runs, newest first, with their params and counts."""
    rows = ws.query("SELECT run_id, started_at, params, counts FROM runs WHERE step = ? AND status = 'ok' "
                    "ORDER BY started_at DESC", [STEP])
    return [{"run_id": r[0], "started_at": r[1], "params": json.loads(r[2] or "{}"),
             "counts": json.loads(r[3] or "{}")} for r in rows]


def load_candidates(ws_path: Path, run_id: str) -> pd.DataFrame:
    """The scored candidates a mining run stored."""
    path = Path(ws_path) / "artifacts" / MINED_DIR / f"{run_id}.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"no candidates stored for run {run_id}")
    return pd.read_parquet(path)


def sample_documents(ws: Workspace, corpora: Sequence[str], per_corpus: int = 500,
                     seed: int = 0) -> pd.DataFrame:
    """A seeded sample of current documents per corpus (corpus, role, text, language): the page measures a
    lexicon being edited on it, live, without scoring the whole workspace."""
    scope, params = mining_scope(ws, corpora)
    return ws.df(
        f"""SELECT corpus, role, text, language FROM (
               SELECT corpus, role, text, language,
                      row_number() OVER (PARTITION BY corpus ORDER BY hash(doc_id || ?)) AS rank
               FROM ({scope}))
           WHERE rank <= ? ORDER BY corpus, rank""", [str(seed), *params, per_corpus])


def selection_lexicon(candidates: pd.DataFrame, name: str = "selection") -> Lexicon:
    """The lexicon of the candidates rows given (term and weight columns)."""
    weights = {str(t).lower(): float(w) for t, w in zip(candidates["term"], candidates["weight"], strict=True)}
    return Lexicon(name, weights, {k: k for k in weights}, (name,))


def sample_densities(lexicon: Lexicon, sample: pd.DataFrame, min_density: float = 0.02,
                     domain: Sequence[str] = ()) -> pd.DataFrame:
    """The sample (from `sample_documents`) with each document's density under `lexicon`, whether the
    terminology filter's density rule would keep it, and its side in the mining (`domain` corpora, else
    'general', whatever the corpus role: general Chinese text is often instruction data)."""
    out = sample[["corpus", "role"]].copy()
    out["side"] = ["domain" if c in set(domain) else "general" for c in out["corpus"]]
    if len(lexicon) == 0 or sample.empty:
        out["density"] = 0.0
    else:
        scores = score_texts(TermMatcher(lexicon), sample["text"].tolist(), sample["language"].tolist())
        out["density"] = scores.density
    out["kept"] = out["density"] >= min_density
    return out
