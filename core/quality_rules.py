"""The quality rules: each keeps a document when `value keep_if threshold`, with thresholds per language group,
grouped in presets (Gopher quality and repetition, C4, FineWeb, flagged words, perplexity bands, the composite);
the one keep-if comparison for Python, numpy and SQL alike; and the names the scoring and the filter share."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from core.workspace import Workspace, WorkspaceError

SCORE_STEP = "quality_score"
FILTER_STEP = "quality"
DEFAULT_ROLES = ("domain", "general")
# flagged-word ratio at which a document is wholly unsafe (Data-Juicer's flagged-words default)
SAFETY_SATURATION = 0.045


# --- rules ----------------------------------------------------------------------------------------------------
# The one keep-if comparison, for a value and a threshold alike as Python numbers, numpy/pandas columns and SQL.
KEEP_IF: dict[str, Callable[[Any, Any], Any]] = {">=": operator.ge, ">": operator.gt, "<=": operator.le,
                                                 "<": operator.lt}


def keeps(keep_if: str, value: Any, threshold: Any) -> Any:
    """Whether `value keep_if threshold` keeps a document: a bool for numbers, a boolean column for a numpy
    array or pandas Series."""
    return KEEP_IF[_checked_keep_if(keep_if)](value, threshold)


def _checked_keep_if(keep_if: str) -> str:
    if keep_if not in KEEP_IF:
        raise ValueError(f"keep_if must be one of {', '.join(KEEP_IF)}, not {keep_if!r}")
    return keep_if


def keeps_sql(keep_if: str, value: str, threshold: str) -> str:
    """The same comparison as SQL over two expressions."""
    return f"{value} {_checked_keep_if(keep_if)} {threshold}"


@dataclass(frozen=True)
class Rule:
    """Keep a document when `value keep_if threshold`; thresholds per language group (None: not applied)."""

    preset: str
    signal: str
    keep_if: str  # '>=', '>', '<=' or '<'
    latin: float | None
    zh: float | None
    note: str = ""

    @property
    def name(self) -> str:
        return f"{self.signal}:{'min' if self.keep_if.startswith('>') else 'max'}"

    def threshold(self, group: str) -> float | None:
        return self.zh if group == "zh" else self.latin

    def keeps(self, value: float, group: str) -> bool:
        thr = self.threshold(group)
        if thr is None or value is None or math.isnan(value):
            return True
        return bool(keeps(self.keep_if, value, thr))


_G = "gopher_quality"
_R = "gopher_repetition"
RULES: tuple[Rule, ...] = (
    # Gopher quality: datatrove defaults; Chinese counts jieba words, whose mean length is 1-4 characters.
    Rule(_G, "word_count", ">=", 50, 50),
    Rule(_G, "word_count", "<=", 100_000, 100_000),
    Rule(_G, "mean_word_length", ">=", 3, 1, "Chinese: characters per jieba word"),
    Rule(_G, "mean_word_length", "<=", 10, 4, "Chinese: characters per jieba word"),
    Rule(_G, "symbol_word_ratio", "<=", 0.1, 0.1),
    Rule(_G, "bullet_line_frac", "<=", 0.9, 0.9),
    Rule(_G, "ellipsis_line_frac", "<=", 0.3, 0.3),
    Rule(_G, "alpha_word_frac", ">=", 0.8, 0.8),
    Rule(_G, "stop_word_count", ">=", 2, 2, "Chinese: Chinese function words"),
    # Gopher repetition (Rae et al. 2021, table A1)
    Rule(_R, "dup_para_frac", "<=", 0.3, 0.3),
    Rule(_R, "dup_para_char_frac", "<=", 0.2, 0.2),
    Rule(_R, "dup_line_frac", "<=", 0.3, 0.3),
    Rule(_R, "dup_line_char_frac", "<=", 0.2, 0.2),
    Rule(_R, "top_2gram_char_frac", "<=", 0.20, 0.20),
    Rule(_R, "top_3gram_char_frac", "<=", 0.18, 0.18),
    Rule(_R, "top_4gram_char_frac", "<=", 0.16, 0.16),
    *(Rule(_R, f"dup_{n}gram_char_frac", "<=", thr, thr)
      for n, thr in zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10), strict=True)),
    # C4: a page needs 5 sentences in its kept lines; lorem ipsum and curly brackets drop it
    Rule("c4", "c4_sentence_count", ">=", 5, 5),
    Rule("c4", "c4_lorem_ipsum", "<=", 0, 0),
    Rule("c4", "c4_curly_bracket", "<=", 0, 0),
    # FineWeb (datatrove: drop when ratio <= 0.12, >= 0.67, >= 0.01, > 0.3)
    Rule("fineweb", "line_punct_ratio", ">", 0.12, 0.12),
    Rule("fineweb", "short_line_ratio", "<", 0.67, 0.67),
    Rule("fineweb", "char_dup_ratio", "<", 0.01, 0.01),
    Rule("fineweb", "newline_ratio", "<=", 0.3, 0.3),
    # flagged words (data/flagged_words.txt)
    Rule("safety", "flagged_word_ratio", "<=", SAFETY_SATURATION, SAFETY_SATURATION),
    # perplexity bands: garbage above, boilerplate below; only documents with a stored perplexity are checked.
    # Measured with the bundled SmolLM2 at 128 tokens on the demo corpora: prose medians 16-65 (Chinese 16-25),
    # 90th percentiles under 400; word-shuffled MedQuAD paragraphs median ~960; lone headings 3,000-100,000.
    Rule("perplexity", "perplexity", ">=", 3, 3, "below: boilerplate or memorised text"),
    Rule("perplexity", "perplexity", "<=", 500, 500, "above: garbage, word salad, fragments"),
    # the composite score (off unless chosen)
    Rule("composite", "composite", ">=", 0.3, 0.3, "weighted mean of relevance, fluency, informativeness, safety"),
)
PRESETS: tuple[str, ...] = tuple(dict.fromkeys(r.preset for r in RULES))
# C4's 5-sentence page rule is for whole web pages; most corpora here are already paragraphs, so it is opt-in.
DEFAULT_PRESETS = ("gopher_quality", "gopher_repetition", "fineweb", "safety", "perplexity")
RULE_BY_NAME: dict[str, Rule] = {r.name: r for r in RULES}


def select_rules(names: Iterable[str] | None = None,
                 overrides: dict[str, float] | None = None) -> list[tuple[Rule, str, float]]:
    """(rule, language group, threshold) for every rule chosen by preset or rule name, with thresholds
    overridden by `overrides` ({'word_count:min': 20} for both groups, {'word_count:min@zh': 30} for one)."""
    chosen: list[Rule] = []
    for name in (names or DEFAULT_PRESETS):
        name = name.strip()
        if not name:
            continue
        if name in PRESETS:
            chosen += [r for r in RULES if r.preset == name]
        elif name in RULE_BY_NAME:
            chosen.append(RULE_BY_NAME[name])
        else:
            raise ValueError(f"unknown rule or preset {name!r} (presets: {', '.join(PRESETS)}; "
                             f"rules: {', '.join(RULE_BY_NAME)})")
    chosen = list(dict.fromkeys(chosen))
    overrides = dict(overrides or {})
    for key in overrides:
        base = key.split("@", 1)[0]
        if base not in RULE_BY_NAME:
            raise ValueError(f"cannot set a threshold for unknown rule {base!r}")
        if "@" in key and key.split("@", 1)[1] not in ("latin", "zh"):
            raise ValueError(f"language group of {key!r} must be latin or zh")
        if RULE_BY_NAME[base] not in chosen:  # setting a threshold chooses the rule
            chosen.append(RULE_BY_NAME[base])
    out = []
    for rule in chosen:
        for group in ("latin", "zh"):
            thr = overrides.get(f"{rule.name}@{group}", overrides.get(rule.name, rule.threshold(group)))
            if thr is not None:
                out.append((rule, group, float(thr)))
    return out


def parse_thresholds(items: Sequence[str]) -> dict[str, float]:
    """'RULE=VALUE' strings (as the command line takes them) into overrides."""
    out: dict[str, float] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"threshold {item!r} must look like RULE=VALUE, e.g. word_count:min=20")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = float(value)
        except ValueError as exc:
            raise ValueError(f"threshold {item!r}: {value!r} is not a number") from exc
    return out


# --- scope: every step reads `core.flow.scope_sql(ws, FILTER_STEP, ...)`, what the steps before the filter left
def check_corpora(ws: Workspace, corpora: Sequence[str]) -> None:
    known = {c["name"] for c in ws.corpora()}
    unknown = [c for c in corpora if c not in known]
    if unknown:
        raise WorkspaceError(f"unknown corpus {', '.join(unknown)} (known: {', '.join(sorted(known))})")
