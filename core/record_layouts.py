"""Record layouts: how a structured record (text, alpaca, sharegpt, multiple-choice) is recognised, checked and
rendered as text. Shared by the readers (`core.readers`, a record into a document), the mix's instruction export
(`core.mix_formats`) and the benchmarks (`core.benchmarks`)."""

from __future__ import annotations

import string
from typing import Any

LAYOUTS = ("auto", "text", "alpaca", "sharegpt", "mcq", "qa")
DEFAULT_TEXT_FIELDS = ("text", "content")


def dotted_get(record: Any, path: str) -> Any:
    value = record
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise KeyError(path)
    return value


def render_alpaca(rec: dict[str, Any]) -> str:
    parts = [str(rec.get("system") or "").strip(), str(rec.get("instruction") or "").strip(),
             str(rec.get("input") or "").strip()]
    prompt = "\n".join(p for p in parts if p)
    return f"{prompt}\n\n{str(rec.get('output') or '').strip()}".strip()


def sharegpt_turns(rec: dict[str, Any]) -> list[dict[str, str]]:
    """Normalise sharegpt (`conversations` of from/value) and OpenAI-style (`messages` of role/content)."""
    turns = rec.get("conversations") if "conversations" in rec else rec.get("messages")
    if not isinstance(turns, list):
        raise ValueError("conversations is not a list")
    out = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise ValueError("a turn is not an object")
        speaker = turn.get("from", turn.get("role"))
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str) or speaker is None:
            raise ValueError("a turn lacks from/value")
        out.append({"from": str(speaker), "value": value})
    return out


def render_turns(turns: list[dict[str, str]]) -> str:
    return "\n\n".join(t["value"].strip() for t in turns if t["value"].strip())


def gold_index(value: Any, n_choices: int) -> int | None:
    """The 0-based gold answer of a multiple-choice item, or None where it has none (missing or null).

    Only an integer (or an integral number, or a string of digits, as CSV and some exports write it) within
    the choices counts: 2.5, true or 7 of 4 choices raise ValueError rather than being coerced to an answer."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):  # a bool is an int to Python, never an answer index
        raise ValueError(f"answer_index {value!r} is not an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"answer_index {value!r} is not an integer")
        value = int(value)
    elif isinstance(value, str):
        if not value.strip().isdigit():
            raise ValueError(f"answer_index {value!r} is not an integer")
        value = int(value.strip())
    elif not isinstance(value, int):
        raise ValueError(f"answer_index {value!r} is not an integer")
    if not 0 <= value < n_choices:
        raise ValueError(f"answer_index {value} is outside the {n_choices} choices")
    return value


def mcq_problem(rec: dict[str, Any]) -> str | None:
    """Why a multiple-choice record cannot be a benchmark item (None when it can)."""
    question, choices = rec.get("question"), rec.get("choices")
    if not isinstance(question, str):
        return "benchmark item lacks a question" if question is None else "benchmark question is not a string"
    if not question.strip():
        return "benchmark item has an empty question"
    if not isinstance(choices, list):
        return "benchmark item has no choices list" if choices is None else "benchmark choices are not a list"
    if not choices:
        return "benchmark item has no choices"
    if any(c is None or isinstance(c, dict | list) or not str(c).strip() for c in choices):
        return "benchmark item has an empty or non-text choice"
    try:
        gold_index(rec.get("answer_index"), len(choices))
    except ValueError:
        return "benchmark item has an invalid answer_index"
    return None


def render_mcq(rec: dict[str, Any]) -> str:
    letters = string.ascii_uppercase
    options = "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(rec["choices"]))
    return f"{str(rec['question']).strip()}\n{options}"


def guess_layout(rec: dict[str, Any]) -> str:
    """The layout a record looks like (`auto`'s choice)."""
    if "instruction" in rec and "output" in rec:
        return "alpaca"
    if isinstance(rec.get("conversations"), list) or isinstance(rec.get("messages"), list):
        return "sharegpt"
    if "question" in rec and "choices" in rec:  # a null or empty choices list is a bad item, not a text record
        return "mcq"
    return "text"
