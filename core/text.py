"""Text cleaning, normalisation, hashing and language detection shared by every step.

Everything here is per-document and hot (ingest runs it on every document), so the common cases take fast
paths: ASCII text skips the mojibake check, and the regexes are compiled once.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import ftfy

from core.steps import param

# C0/C1 control characters except tab, newline and carriage return; NUL included.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# UTF-8 bytes decoded as Latin-1/CP1252 leave a lead byte (Â-ô) followed by a continuation-range character.
_MOJIBAKE_RE = re.compile(
    "[\u00c2-\u00f4][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
    "\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122]"
)
_CJK_RE = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# Han and kana, the characters Chinese and Japanese text is tokenised by one at a time.
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# A token: one Han/kana character, or a run of other word characters (so "CT检查" gives "CT", "检", "查").
CJK_TOKEN_RE = re.compile(f"[{CJK_CHARS}]|[^\\W{CJK_CHARS}]+")
# A token that is a single Han/kana character.
CJK_CHAR_TOKEN_RE = re.compile(f"^[{CJK_CHARS}]$")
_KANA_RE = re.compile("[\u3040-\u30ff]")
_HANGUL_RE = re.compile("[\uac00-\ud7af]")
_LATIN_WORD_RE = re.compile(r"[A-Za-z]+")
_NON_WORD_RE = re.compile(r"[\W_]+", re.UNICODE)
_WORD_RUN_RE = re.compile(r"[^\W_]+", re.UNICODE)
_ASCII_NON_LETTER_TO_SPACE = bytes(c if chr(c).isascii() and chr(c).isalpha() else 32 for c in range(256))
_ASCII_NON_ALNUM_TO_SPACE = bytes(c if chr(c).isascii() and chr(c).isalnum() else 32 for c in range(256))

# The most frequent English function words: a Latin-script text in which they are rare is not English.
ENGLISH_STOP_WORDS = frozenset(
    ["the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her", "she", "there", "been", "their", "one", "all", "we", "can", "has", "may", "if", "more", "when", "will", "would", "who", "its", "also"]
)

# Function words of other Latin-script languages (French, German, Spanish, Italian, Dutch, Portuguese) that
# are not English words: text rich in them is 'other'.
OTHER_LATIN_STOP_WORDS = frozenset(
    ["le", "la", "les", "des", "du", "et", "est", "une", "un", "pour", "dans", "qui", "sur", "pas", "avec", "der", "die", "das", "und", "ist", "nicht", "ein", "eine", "mit", "den", "dem", "zu", "von", "auf", "el", "los", "las", "y", "es", "por", "con", "para", "una", "del", "lo", "il", "che", "di", "della", "sono", "het", "een", "van", "zijn", "niet", "op", "voor", "que", "não", "com", "uma", "os"]
)


@dataclass(frozen=True)
class CleanResult:
    text: str
    mojibake_fixed: bool
    control_chars_removed: int


def clean_text(text: str) -> CleanResult:
    """Remove NUL and control characters and repair UTF-8-read-as-Latin-1 mojibake."""
    removed = 0
    if not text.isascii():
        fixed = False
        if _MOJIBAKE_RE.search(text):
            repaired = ftfy.fix_encoding(text)
            fixed = repaired != text
            text = repaired
        cleaned, removed = _CONTROL_RE.subn("", text)
        return CleanResult(cleaned.strip(), fixed, removed)
    cleaned, removed = _CONTROL_RE.subn("", text)
    return CleanResult(cleaned.strip(), False, removed)


@dataclass(frozen=True)
class NormalisationConfig:
    """How text is folded before exact hashing; shown to the curator in the dedup page."""

    unicode_nfkc: bool = param(True, negate="--no-nfkc", group="exact", help="do not apply Unicode NFKC")
    casefold: bool = param(True, negate="--keep-case", group="exact", help="do not fold case")
    fold_whitespace: bool = param(True, negate="--keep-whitespace", group="exact", help="do not collapse whitespace")
    strip_punctuation: bool = param(True, negate="--keep-punctuation", group="exact",
                                    help="do not remove punctuation")

    def describe(self) -> str:
        parts = []
        if self.unicode_nfkc:
            parts.append("Unicode NFKC")
        if self.casefold:
            parts.append("case folded")
        if self.strip_punctuation:
            parts.append("punctuation removed")
        if self.fold_whitespace:
            parts.append("whitespace collapsed")
        return ", ".join(parts) or "raw text"


DEFAULT_NORMALISATION = NormalisationConfig()
_WS_RE = re.compile(r"\s+")


def normalise(text: str, config: NormalisationConfig = DEFAULT_NORMALISATION) -> str:
    if config.unicode_nfkc and not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    if config.casefold:
        text = text.casefold()
    if config.strip_punctuation and config.fold_whitespace:
        if text.isascii():  # the common case, done on bytes: every non-alphanumeric byte becomes a space
            return " ".join(text.encode("ascii").translate(_ASCII_NON_ALNUM_TO_SPACE).decode("ascii").split())
        return " ".join(_WORD_RUN_RE.findall(text))  # one pass instead of two substitutions
    if config.strip_punctuation:
        text = _NON_WORD_RE.sub(" ", text)
    if config.fold_whitespace:
        text = _WS_RE.sub(" ", text).strip()
    return text


def content_hash(text: str, config: NormalisationConfig = DEFAULT_NORMALISATION) -> str:
    """Hex digest (16 bytes) of the normalised text: equal for texts that differ only in folded details."""
    return hashlib.blake2b(normalise(text, config).encode("utf-8"), digest_size=16).hexdigest()


def raw_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def detect_language(text: str, sample_chars: int = 1000) -> str:
    """'zh', 'ja', 'ko', 'en' or 'other', by script counts and English function words.

    Chinese is told by Han characters without kana; Japanese by kana; English by Latin words of which a
    fair share are English function words. This is deliberately simple and fast: the studio only needs to
    route documents to the right tokenisation and rules.
    """
    sample = text[:sample_chars]
    if sample.isascii():
        cjk = kana = hangul = 0
    else:
        cjk = len(_CJK_RE.findall(sample))
        kana = len(_KANA_RE.findall(sample))
        hangul = len(_HANGUL_RE.findall(sample))
    if sample.isascii():  # the common case, on bytes: non-letters become spaces, then a plain split
        words = sample.encode("ascii").translate(_ASCII_NON_LETTER_TO_SPACE).decode("ascii").lower().split()
    else:
        words = _LATIN_WORD_RE.findall(sample.lower())
    latin_chars = sum(map(len, words))
    if kana and kana + cjk >= latin_chars:
        return "ja"
    if hangul and hangul >= latin_chars:
        return "ko"
    if cjk and cjk >= latin_chars * 0.5:
        return "zh"
    if words and latin_chars >= len(sample.strip()) * 0.3:
        english = sum(map(ENGLISH_STOP_WORDS.__contains__, words))
        foreign = sum(map(OTHER_LATIN_STOP_WORDS.__contains__, words))
        # Lists and term-heavy lines have few function words of any language: English is the likely case.
        if english >= foreign:
            return "en"
    return "other"


def is_cjk_text(text: str) -> bool:
    return detect_language(text) in {"zh", "ja"}
