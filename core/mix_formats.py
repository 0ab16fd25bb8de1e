"""What a mix is exported as: `{"text": ...}` JSONL and Parquet, instruction records as LLaMA-Factory's alpaca
or sharegpt, and the dataset_info.json entries that name the files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from core.record_layouts import sharegpt_turns


@dataclass
class ExportedFile:
    path: str
    rows: int
    bytes: int
    sha256: str



class TextSink:
    """Writes `{"text": ...}` JSONL and/or a Parquet `text` column, batch by batch."""

    def __init__(self, folder: Path, stem: str, formats: list[str]) -> None:
        self.paths: dict[str, Path] = {}
        self.rows = 0
        self._jsonl = None
        self._parquet: pq.ParquetWriter | None = None
        if "jsonl" in formats:
            self.paths["jsonl"] = folder / f"{stem}.jsonl"
            self._jsonl = open(self.paths["jsonl"], "wb", buffering=1 << 20)  # noqa: SIM115
        if "parquet" in formats:
            self.paths["parquet"] = folder / f"{stem}.parquet"
            self._parquet = pq.ParquetWriter(self.paths["parquet"], pa.schema([("text", pa.string())]),
                                             compression="zstd")

    def write(self, texts: list[str]) -> None:
        if not texts:
            return
        if self._jsonl is not None:
            self._jsonl.write(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))
        if self._parquet is not None:
            self._parquet.write_table(pa.table({"text": pa.array(texts, pa.string())}))
        self.rows += len(texts)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._parquet is not None:
            self._parquet.close()


# Speaker names as LLaMA-Factory's sharegpt tags expect them.
HUMAN_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "bot", "chatgpt", "model"}


def instruction_turns(kind: str, record: dict[str, Any]) -> tuple[str, list[tuple[str, str]]] | None:
    """(system, [(human, gpt), ...]) from an alpaca or sharegpt record; None when turns do not alternate."""
    if kind == "alpaca":
        pairs = []
        for item in record.get("history") or []:
            if isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((str(item[0]), str(item[1])))
        prompt = "\n".join(p for p in (str(record.get("instruction") or "").strip(),
                                       str(record.get("input") or "").strip()) if p)
        pairs.append((prompt, str(record.get("output") or "")))
        return str(record.get("system") or ""), pairs
    turns = sharegpt_turns(record)
    system = str(record.get("system") or "")
    if turns and turns[0]["from"].lower() == "system":
        system, turns = turns[0]["value"], turns[1:]
    pairs = []
    for k in range(0, len(turns) - 1, 2):
        who, answer = turns[k]["from"].lower(), turns[k + 1]["from"].lower()
        if who not in HUMAN_ROLES or answer not in ASSISTANT_ROLES:
            return None
        pairs.append((turns[k]["value"], turns[k + 1]["value"]))
    if not pairs or len(turns) % 2:
        return None
    return system, pairs


def instruction_row(kind: str, record: dict[str, Any], fmt: str) -> dict[str, Any] | None:
    """An exported instruction example (LLaMA-Factory alpaca or sharegpt), every column always present."""
    parsed = instruction_turns(kind, record)
    if parsed is None:
        return None
    system, pairs = parsed
    if fmt == "alpaca":
        if kind == "alpaca":
            return {"instruction": str(record.get("instruction") or ""), "input": str(record.get("input") or ""),
                    "output": str(record.get("output") or ""), "system": system,
                    "history": [list(p) for p in pairs[:-1]]}
        last = pairs[-1]
        return {"instruction": last[0], "input": "", "output": last[1], "system": system,
                "history": [list(p) for p in pairs[:-1]]}
    conversations = []
    for human, gpt in pairs:
        conversations += [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]
    return {"conversations": conversations, "system": system}


def dataset_info(name: str, files: dict[str, ExportedFile], instruction_format: str) -> dict[str, Any]:
    """Entries for LLaMA-Factory's data/dataset_info.json (with this folder as its dataset_dir)."""
    info: dict[str, Any] = {}
    for key, exported in files.items():
        file_name = Path(exported.path).name
        if key.startswith(("train.", "validation_")):
            stem, fmt = key.rsplit(".", 1)
            entry = f"{name}_{stem}" + ("" if fmt == "jsonl" else f"_{fmt}")
            info[entry] = {"file_name": file_name, "columns": {"prompt": "text"}}
        elif key.startswith("sft."):
            if instruction_format == "alpaca":
                info[f"{name}_sft"] = {"file_name": file_name, "formatting": "alpaca", "columns": {
                    "prompt": "instruction", "query": "input", "response": "output", "system": "system",
                    "history": "history"}}
            else:
                info[f"{name}_sft"] = {"file_name": file_name, "formatting": "sharegpt",
                                       "columns": {"messages": "conversations", "system": "system"},
                                       "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                                                "assistant_tag": "gpt"}}
    return info
