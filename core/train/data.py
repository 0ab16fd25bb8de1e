"""What training reads: a mix export folder (`core.mix`), instruction files and preference files.

An export holds `train.jsonl` (`{"text"}` per document, in mix order), `validation_domain.jsonl` and
`validation_general.jsonl`, the instruction records as `sft_alpaca.jsonl` or `sft_sharegpt.jsonl`, and
`manifest.json` with every file's hash. CPT packs the training text into fixed blocks, each document followed by
the end-of-text token and the short tail dropped (as LLaMA-Factory's pre-training processor does).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from core.mix import instruction_turns
from core.train.config import ConfigError

VALIDATION_SETS = ("domain", "general")


def resolve_export(mix: str, workspace: Any = None) -> Path:
    """The export folder of `mix`: a folder holding manifest.json, or the newest export of that mix name in
    `workspace` (an open Workspace, or its folder)."""
    candidate = Path(mix).expanduser()
    if (candidate / "manifest.json").exists():
        return candidate.resolve()
    if workspace is not None:
        from core.mix import latest_mix
        from core.workspace import Workspace, WorkspaceError

        found = None
        if isinstance(workspace, Workspace):
            found = latest_mix(workspace, mix)
        else:
            try:
                with Workspace.open(workspace, create=False, read_only=True) as ws:
                    found = latest_mix(ws, mix)
            except WorkspaceError:
                found = None
        if found and found.get("export_dir") and (Path(found["export_dir"]) / "manifest.json").exists():
            return Path(found["export_dir"]).resolve()
    raise ConfigError(f"mix {mix!r} is neither an export folder (with manifest.json) nor a mix of this workspace")


def manifest_of(export: Path) -> dict[str, Any]:
    return json.loads((export / "manifest.json").read_text(encoding="utf-8"))


def manifest_sha256(export: Path) -> str:
    return hashlib.sha256((export / "manifest.json").read_bytes()).hexdigest()


def mix_content_sha256(export: Path) -> str:
    """What the export holds, apart from when and by which run it was written: a hash over the manifest's file
    hashes (train, validation, instruction files, members, recipe). The manifest's own hash changes with each
    rebuild (it names the run and its filtering runs), so a re-built identical mix is recognised by this one."""
    files = manifest_of(export).get("files", {})
    pairs = sorted((key, entry.get("sha256")) for key, entry in files.items() if key != "manifest.json")
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()


def validation_file(export: Path, role: str) -> Path:
    return export / f"validation_{role}.jsonl"


def check_export(export: Path, stage: str) -> None:
    """Refuse an export the stage cannot use, naming what is missing."""
    if stage == "cpt" and not (export / "train.jsonl").exists():
        raise ConfigError(f"export {export} has no train.jsonl (export the mix with the jsonl format)")
    missing = [role for role in VALIDATION_SETS if not _has_rows(validation_file(export, role))]
    if missing:
        raise ConfigError(f"mix export {export} has no {' or '.join(missing)} validation set: rebuild the mix with "
                          "validation sets domain and general (they are scored every eval_steps)")


def _has_rows(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path, "rb") as fh:
        return any(line.strip() for line in fh)


def read_texts(path: Path, max_chars: int | None = None) -> Iterator[str]:
    """Texts of a `{"text": ...}` JSONL file, in order (up to about `max_chars` characters)."""
    seen = 0
    with open(path, "rb") as fh:
        for line in fh:
            if not line.strip():
                continue
            text = orjson.loads(line).get("text") or ""
            if text:
                yield text
                seen += len(text)
                if max_chars is not None and seen >= max_chars:
                    return


def pack_blocks(tokenizer: Any, texts: Iterator[str], block_size: int, max_blocks: int | None = None,
                batch: int = 256) -> list[list[int]]:
    """Each text tokenised, followed by the end-of-text token, concatenated and cut into `block_size` blocks; the
    tail shorter than a block is dropped."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no end-of-text token to separate documents")
    blocks: list[list[int]] = []
    buffer: list[int] = []
    pending: list[str] = []

    def flush() -> None:
        encoded = tokenizer(pending, add_special_tokens=False)["input_ids"]
        for ids in encoded:
            buffer.extend(ids)
            buffer.append(eos)
        pending.clear()

    for text in texts:
        pending.append(text)
        if len(pending) >= batch:
            flush()
            while len(buffer) >= block_size:
                blocks.append(buffer[:block_size])
                del buffer[:block_size]
            if max_blocks is not None and len(blocks) >= max_blocks:
                return blocks[:max_blocks]
    if pending:
        flush()
    while len(buffer) >= block_size:
        blocks.append(buffer[:block_size])
        del buffer[:block_size]
    return blocks[:max_blocks] if max_blocks is not None else blocks


def read_records(path: Path) -> list[dict[str, Any]]:
    """Records of a JSON array or a JSON-lines file."""
    raw = path.read_bytes()
    stripped = raw.lstrip()
    if stripped.startswith(b"["):
        data = orjson.loads(raw)
        if not isinstance(data, list):
            raise ConfigError(f"{path} is not a list of records")
        return data
    records = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if line.strip():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise ConfigError(f"{path} line {number} is not JSON: {exc}") from exc
    return records


def sft_file(export: Path | None, data: str) -> Path:
    """The instruction file to fine-tune on: `data` if given, else the export's sft file."""
    if data:
        path = Path(data).expanduser()
        if not path.exists():
            raise ConfigError(f"instruction file {data} does not exist")
        return path.resolve()
    if export is not None:
        for name in ("sft_alpaca.jsonl", "sft_sharegpt.jsonl"):
            if (export / name).exists():
                return export / name
    raise ConfigError("the mix export has no instruction file (sft_alpaca.jsonl or sft_sharegpt.jsonl): "
                      "name one with `data`")


def _kind(record: dict[str, Any]) -> str:
    if "conversations" in record or "messages" in record:
        return "sharegpt"
    if "instruction" in record or "output" in record:
        return "alpaca"
    raise ConfigError("an instruction record is neither alpaca (instruction/output) nor sharegpt (conversations)")


def _messages(system: str, pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    for human, gpt in pairs:
        messages += [{"role": "user", "content": human}, {"role": "assistant", "content": gpt}]
    return messages


def sft_examples(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Prompt-completion chat examples (the loss falls on the completion, the final response, only)."""
    examples = []
    for record in read_records(path):
        parsed = instruction_turns(_kind(record), record)
        if parsed is None:
            continue
        system, pairs = parsed
        if not pairs or not pairs[-1][1].strip():
            continue
        messages = _messages(system, pairs)
        examples.append({"prompt": messages[:-1], "completion": messages[-1:]})
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ConfigError(f"{path} holds no usable instruction record")
    return examples


def _answer(value: Any, path: Path, number: int, key: str) -> str:
    if isinstance(value, dict):
        value = value.get("value", value.get("content"))
    elif isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("value", value[-1].get("content"))
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path} record {number}: `{key}` is not a response text")
    return value


def preference_examples(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Preference pairs (sharegpt-style `conversations` + `chosen` + `rejected`, as LLaMA-Factory's ranking data)
    as chat prompts with a chosen and a rejected response."""
    if not path.exists():
        raise ConfigError(f"preference file {path} does not exist")
    examples = []
    for number, record in enumerate(read_records(path), start=1):
        for key in ("conversations", "chosen", "rejected"):
            if key not in record:
                raise ConfigError(f"{path} record {number} has no `{key}`: a preference file needs "
                                  "conversations, chosen and rejected")
        turns = record["conversations"]
        system = str(record.get("system") or "")
        prompt = [{"role": "system", "content": system}] if system else []
        for turn in turns:
            who = str(turn.get("from", turn.get("role", ""))).lower()
            role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                    "system": "system"}.get(who)
            if role is None:
                raise ConfigError(f"{path} record {number}: unknown speaker {who!r}")
            prompt.append({"role": role, "content": str(turn.get("value", turn.get("content", "")))})
        if not prompt or prompt[-1]["role"] != "user":
            raise ConfigError(f"{path} record {number}: the conversation must end with the user's turn")
        examples.append({"prompt": prompt,
                         "chosen": [{"role": "assistant", "content": _answer(record["chosen"], path, number, "chosen")}],
                         "rejected": [{"role": "assistant",
                                       "content": _answer(record["rejected"], path, number, "rejected")}]})
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ConfigError(f"{path} holds no preference pair")
    return examples
