"""Per-document quality signals: the raw numbers behind the Gopher, C4 and FineWeb heuristic rules.

Every function here is pure (text in, numbers out) so that the quality step can store each raw value per
document and thresholds can move later without recomputing anything. The definitions follow datatrove's
`gopher_quality_filter.py`, `gopher_repetition_filter.py`, `c4_filters.py` and `fineweb_quality_filter.py`,
with the deviations listed in `SIGNALS` (each one says why).

Two language groups get their own tokenisation:
- "latin" (English and every non-CJK text): words are runs of letters/digits (with inner ' or -), as a
  regular expression; punctuation is not a word.
- "zh" (Chinese, and Japanese/Korean, which the studio routes the same way): words come from jieba
  (dictionary mode, no HMM: deterministic and ~1.5x faster); a word is a jieba token holding a letter, digit
  or Han character. Line-length and punctuation rules use Chinese punctuation and a shorter "short line",
  since a Han character carries roughly what two or three Latin letters do. English rules are never applied
  to Chinese as they are: the stop words are Chinese function words, and the mean word length range is in
  characters per jieba word.
"""

from __future__ import annotations

import logging
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from core.config import REPO_ROOT

LANGUAGE_GROUPS = ("latin", "zh")
CJK_LANGUAGES = frozenset({"zh", "ja", "ko"})

FLAGGED_WORDS_FILE = REPO_ROOT / "data" / "flagged_words.txt"


def language_group(language: str | None) -> str:
    """The rule group for a `documents.language` value."""
    return "zh" if language in CJK_LANGUAGES else "latin"


@dataclass(frozen=True)
class Signal:
    name: str
    preset: str  # which rule family computes it ("informativeness" and "safety" feed the composite)
    description: str


SIGNALS: tuple[Signal, ...] = (
    # --- Gopher quality (Rae et al. 2021, table A1; datatrove GopherQualityFilter) -------------------------
    Signal("word_count", "gopher_quality", "words (tokens holding a letter or digit; jieba words for Chinese)"),
    Signal("mean_word_length", "gopher_quality", "mean characters per word"),
    Signal("symbol_word_ratio", "gopher_quality",
           "the larger of '#' per word and ellipses ('...', '…') per word"),
    Signal("bullet_line_frac", "gopher_quality",
           "share of non-empty lines starting with a bullet (• ● ▪ ‣ ◦ ⁃ · - *)"),
    Signal("ellipsis_line_frac", "gopher_quality", "share of non-empty lines ending with '...' or '…'"),
    Signal("alpha_word_frac", "gopher_quality",
           "share of words holding a letter (Han characters count as letters). datatrove calls its bound "
           "max_non_alpha_words_ratio=0.8 but keeps a document when this share is >= 0.8; so does the studio"),
    Signal("stop_word_count", "gopher_quality",
           "occurrences of function words (the be to of and that have with; Chinese: 的 了 是 在 和 也 就 都 "
           "而 与 这 有 我 你 他 不 及 或)"),
    # --- Gopher repetition (datatrove GopherRepetitionFilter) ----------------------------------------------
    Signal("dup_para_frac", "gopher_repetition", "share of paragraphs (split at blank lines) seen before"),
    Signal("dup_para_char_frac", "gopher_repetition", "characters in repeated paragraphs / all characters"),
    Signal("dup_line_frac", "gopher_repetition",
           "share of non-empty lines seen before (datatrove counts blank lines too, which drops any text "
           "with many short paragraphs)"),
    Signal("dup_line_char_frac", "gopher_repetition", "characters in repeated lines / all characters"),
    *(Signal(f"top_{n}gram_char_frac", "gopher_repetition",
             f"characters of the most frequent repeated word {n}-gram times its count / characters "
             "(only n-grams occurring at least twice count)") for n in (2, 3, 4)),
    *(Signal(f"dup_{n}gram_char_frac", "gopher_repetition",
             f"characters of words covered by repeated occurrences (after the first) of word {n}-grams / "
             "characters")
      for n in range(5, 11)),
    # --- C4 (Raffel et al. 2020; datatrove C4QualityFilter) -------------------------------------------------
    Signal("c4_sentence_count", "c4",
           "sentences in the lines C4 keeps (lines ending in terminal punctuation, not in an ellipsis, with at "
           "least 3 words, no word over 1,000 characters, not mentioning javascript or cookie/terms policies)"),
    Signal("c4_kept_line_frac", "c4", "share of non-empty lines that C4's line rules keep"),
    Signal("c4_lorem_ipsum", "c4", "1 when the text contains 'lorem ipsum'"),
    Signal("c4_curly_bracket", "c4", "1 when the text contains a curly bracket '{'"),
    # --- FineWeb (datatrove FineWebQualityFilter) ------------------------------------------------------------
    Signal("line_punct_ratio", "fineweb", "share of lines ending in terminal punctuation"),
    Signal("short_line_ratio", "fineweb", "share of lines of at most 30 characters (Chinese: 12)"),
    Signal("char_dup_ratio", "fineweb", "characters in repeated non-empty lines / characters without newlines"),
    Signal("newline_ratio", "fineweb", "newlines per word"),
    # --- informativeness and safety (inputs of the composite score) ---------------------------------------
    Signal("lexical_diversity", "informativeness",
           "moving-average type-token ratio over windows of 50 words (plain type-token ratio when shorter)"),
    Signal("compression_ratio", "informativeness",
           "zlib-compressed size / UTF-8 size: low means repetitive, near 1 means dense (or very short)"),
    Signal("flagged_word_ratio", "safety", "occurrences of data/flagged_words.txt entries per word"),
)
SIGNAL_NAMES: tuple[str, ...] = tuple(s.name for s in SIGNALS)
SIGNAL_BY_NAME: dict[str, Signal] = {s.name: s for s in SIGNALS}
# Bumped whenever a definition above changes: stored values of an older version are recomputed.
SIGNALS_VERSION = 3

# --- tokenisation ---------------------------------------------------------------------------------------------
# words may hold inner apostrophes and hyphens, and decimal points or thousands separators between digits
_LATIN_WORD_RE = re.compile(r"[^\W_]+(?:(?:['’\-]|(?<=\d)[.,](?=\d))[^\W_]+)*")
_PARAGRAPH_RE = re.compile(r"\n{2,}")
_CITATION_RE = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_LATIN_SENTENCE_END_RE = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
_ZH_SENTENCE_END_RE = re.compile(r"[。！？!?]+[”’」』）)]*")

ENGLISH_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
CHINESE_STOP_WORDS = frozenset({"的", "了", "是", "在", "和", "也", "就", "都", "而", "与", "这", "有", "我", "你",
                                "他", "不", "及", "或"})
BULLETS = ("•", "●", "▪", "‣", "◦", "⁃", "·", "- ", "* ")
ELLIPSES = ("...", "…")
POLICY_SUBSTRINGS = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
                     "use cookies")
TERMINAL = {"latin": (".", "?", "!", '"', "'", "”", "’"),
            "zh": (".", "?", "!", '"', "'", "”", "’", "。", "？", "！", "」", "』")}
SHORT_LINE_CHARS = {"latin": 30, "zh": 12}
MATTR_WINDOW = 50


@cache
def _jieba():  # imported lazily: loading its dictionary takes about a second
    import jieba

    jieba.setLogLevel(logging.WARNING)
    jieba.initialize()
    return jieba


def _has_alnum(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


def line_words(line: str, group: str) -> list[str]:
    """The words of one line in a language group (see the module docstring)."""
    if group == "zh":
        return [t for t in _jieba().lcut(line, HMM=False) if _has_alnum(t)]
    return _LATIN_WORD_RE.findall(line)


def words_of(text: str, group: str) -> list[str]:
    return [w for line in text.split("\n") for w in line_words(line, group)]


@dataclass(frozen=True)
class FlaggedWords:
    """The safety list: single words matched as whole (lower-cased) words, phrases and Chinese entries
    matched as substrings."""

    words: frozenset[str]
    phrases: tuple[str, ...]


@cache
def flagged_words(path: Path = FLAGGED_WORDS_FILE) -> FlaggedWords:
    words: set[str] = set()
    phrases: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        entry = raw.split("#", 1)[0].strip().lower()
        if not entry:
            continue
        if entry.isascii() and " " not in entry:
            words.add(entry)
        else:
            phrases.append(entry)
    return FlaggedWords(frozenset(words), tuple(phrases))


# --- the repetition measures ----------------------------------------------------------------------------------
def _duplicates(items: list[str]) -> tuple[int, int]:
    """(repeated items, characters in repeated items): every occurrence after the first counts."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def _top_ngram_chars(ids: list[int], id_lengths: list[int], n: int, joiner: int) -> int:
    """Characters of the most frequent n-gram (first seen among equals) times its count, if it occurs twice
    or more."""
    grams = Counter(zip(*(ids[i:] for i in range(n)), strict=False))
    if not grams:
        return 0
    best, count = grams.most_common(1)[0]
    if count < 2:
        return 0
    return count * (sum(id_lengths[i] for i in best) + joiner * (n - 1))


def _dup_ngram_chars(ids: list[int], lengths: list[int], n: int) -> int:
    """Characters of the words covered by repeated occurrences of n-grams (every occurrence after the first,
    as datatrove counts them), each word counted once however many such n-grams overlap it."""
    grams = list(zip(*(ids[i:] for i in range(n)), strict=False))
    if len(set(grams)) == len(grams):
        return 0
    seen: set[tuple[int, ...]] = set()
    covered = bytearray(len(ids))
    for i, gram in enumerate(grams):
        if gram in seen:
            covered[i:i + n] = b"\x01" * n
        else:
            seen.add(gram)
    return sum(length for length, c in zip(lengths, covered, strict=True) if c)


def _mattr(lowered: list[str], window: int = MATTR_WINDOW) -> float:
    n = len(lowered)
    if n == 0:
        return 0.0
    if n <= window:
        return len(set(lowered)) / n
    counts = Counter(lowered[:window])
    total = distinct = len(counts)
    for i in range(window, n):
        out, into = lowered[i - window], lowered[i]
        counts[out] -= 1
        if counts[out] == 0:
            del counts[out]
        counts[into] += 1
        distinct = len(counts)
        total += distinct
    return total / (n - window + 1) / window


# --- all signals of one document ------------------------------------------------------------------------------
def compute_signals(text: str, group: str = "latin") -> tuple[float, ...]:
    """Every signal of `SIGNAL_NAMES`, in that order, for one document of a language group."""
    is_zh = group == "zh"
    lines = text.split("\n")
    nonempty = [ln.strip() for ln in lines if ln.strip()]
    n_nonempty = max(len(nonempty), 1)
    per_line = [line_words(ln, group) for ln in lines]
    words = [w for ws in per_line for w in ws]
    n_words = len(words)
    denom_words = max(n_words, 1)
    lengths = [len(w) for w in words]
    word_chars = max(sum(lengths), 1)
    text_chars = max(len(text), 1)
    lowered_text = text.lower()

    # Gopher quality
    mean_word_length = word_chars / denom_words if n_words else 0.0
    hashes = text.count("#")
    ellipses = text.count("...") + text.count("…")
    symbol_word_ratio = max(hashes, ellipses) / denom_words
    bullet_line_frac = sum(ln.startswith(BULLETS) for ln in nonempty) / n_nonempty
    ellipsis_line_frac = sum(ln.endswith(ELLIPSES) for ln in nonempty) / n_nonempty
    alpha_word_frac = sum(any(ch.isalpha() for ch in w) for w in words) / denom_words
    if is_zh:
        stop_word_count = sum(w in CHINESE_STOP_WORDS for w in words)
    else:
        stop_word_count = sum(w.lower() in ENGLISH_STOP_WORDS for w in words)

    # Gopher repetition
    paragraphs = _PARAGRAPH_RE.split(text.strip())
    para_dups, para_dup_chars = _duplicates(paragraphs)
    line_dups, line_dup_chars = _duplicates(nonempty)
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(w.lower(), len(vocab)) for w in words]
    id_lengths = [len(w) for w in vocab]
    joiner = 0 if is_zh else 1
    top: list[float] = []
    for n in (2, 3, 4):
        # no repeated n-gram means no repeated longer n-gram either
        chars = _top_ngram_chars(ids, id_lengths, n, joiner) if (not top or top[-1] > 0) else 0
        top.append(min(chars / text_chars, 1.0))
    dup: list[float] = []
    for n in range(5, 11):
        chars = _dup_ngram_chars(ids, lengths, n) if (not dup or dup[-1] > 0) else 0
        dup.append(chars / text_chars)

    # C4: lines kept by its line rules, and the sentences in them
    terminal = TERMINAL[group]
    sentences = kept = 0
    for raw, lw in zip(lines, per_line, strict=True):
        line = raw.strip()
        if not line:
            continue
        if any(len(w) > 1000 for w in line.split()):
            continue
        line = _CITATION_RE.sub("", line)
        if not line.endswith(terminal) or line.endswith(ELLIPSES):
            continue
        if len(lw) < 3:
            continue
        low = line.lower()
        if "javascript" in low or any(p in low for p in POLICY_SUBSTRINGS):
            continue
        kept += 1
        found = len((_ZH_SENTENCE_END_RE if is_zh else _LATIN_SENTENCE_END_RE).findall(line))
        sentences += max(found, 1)
    c4_lorem = 1.0 if "lorem ipsum" in lowered_text else 0.0
    c4_curly = 1.0 if "{" in text else 0.0

    # FineWeb
    n_lines = len(lines)
    line_punct_ratio = sum(ln.rstrip().endswith(terminal) for ln in lines) / n_lines
    short = SHORT_LINE_CHARS[group]
    short_line_ratio = sum(len(ln.strip()) <= short for ln in lines) / n_lines
    chars_no_newline = max(len(text) - text.count("\n"), 1)
    char_dup_ratio = line_dup_chars / chars_no_newline
    newline_ratio = text.count("\n") / denom_words

    # informativeness and safety
    lowered_words = [w.lower() for w in words]
    lexical_diversity = _mattr(lowered_words)
    raw = text.encode("utf-8")
    compression_ratio = len(zlib.compress(raw, 6)) / max(len(raw), 1)
    flagged = flagged_words()
    hits = sum(w in flagged.words for w in lowered_words)
    if flagged.phrases:
        hits += sum(lowered_text.count(p) for p in flagged.phrases)
    flagged_word_ratio = hits / denom_words

    return (
        float(n_words), mean_word_length, symbol_word_ratio, bullet_line_frac, ellipsis_line_frac,
        alpha_word_frac, float(stop_word_count),
        para_dups / max(len(paragraphs), 1), para_dup_chars / text_chars,
        line_dups / n_nonempty, line_dup_chars / text_chars,
        *top, *dup,
        float(sentences), kept / n_nonempty, c4_lorem, c4_curly,
        line_punct_ratio, short_line_ratio, char_dup_ratio, newline_ratio,
        lexical_diversity, compression_ratio, flagged_word_ratio,
    )


def compute_batch(texts: list[str], groups: list[str]) -> list[list[float]]:
    """Signals of many documents, as columns in `SIGNAL_NAMES` order (the shape Arrow wants)."""
    rows = [compute_signals(t, g) for t, g in zip(texts, groups, strict=True)]
    return [list(col) for col in zip(*rows, strict=True)] if rows else [[] for _ in SIGNAL_NAMES]


def signals_dict(text: str, group: str = "latin") -> dict[str, float]:
    """One document's signals by name (for tests, the page and people at a prompt)."""
    return dict(zip(SIGNAL_NAMES, compute_signals(text, group), strict=True))
