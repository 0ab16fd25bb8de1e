"""lm-evaluation-harness tasks generated from the workspace's benchmark tables.

Each (benchmark, subject, formulation) becomes one local `dataset_path: json` task YAML, exactly as lm-eval's own
MMLU tasks are laid out (one task per subject, a per-subject description, the subject's dev exemplars as the
few-shot split, sampler `first_n`), so the prompts and the scores equal what lm-eval gives for MMLU:

- letter: `_default_template_yaml` of lm-eval's `mmlu/default` (question, lettered choices, "Answer:", scored on
  " A".." D"; acc);
- cloze: `_continuation_template_yaml` of `mmlu/continuation` ("Question: {q}\\nAnswer:" scored on " {choice}";
  acc and acc_norm).

Items carry their `item_doc_id` (the workspace document) and `item_id` (the benchmark's own id), so every logged
sample can be traced back.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from core.benchmarks import ensure_registered
from core.config import data_root
from core.workspace import Workspace, WorkspaceError

FORMULATIONS = ("letter", "cloze")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Bumped whenever a prompt or a task field changes, so cached scores of older prompts are never reused.
TEMPLATE_VERSION = 1
DEFAULT_FEWSHOT_FILE = "mmlu/mcq_mmlu_dev_5shot.jsonl"

# lm-eval's MMLU templates (lm_eval/tasks/mmlu/default and mmlu/continuation), with the choices of any count.
LETTER_TEXT = ("{{question.strip()}}\n{% for choice in choices %}{{letters[loop.index0]}}. {{choice}}\n{% endfor %}"
               "Answer:")
CLOZE_TEXT = "Question: {{question.strip()}}\nAnswer:"
DESCRIPTIONS = {"letter": "The following are multiple choice questions (with answers) about {subject}.\n\n",
                "cloze": "The following are questions (with answers) about {subject}.\n\n"}


@dataclass
class BenchmarkItem:
    item_doc_id: str
    item_id: str
    benchmark: str
    subject: str
    question: str
    choices: list[str]
    answer: int

    def doc(self) -> dict[str, Any]:
        """The record lm-eval reads (one JSON line)."""
        return {"item_doc_id": self.item_doc_id, "item_id": self.item_id, "benchmark": self.benchmark,
                "subject": self.subject, "question": self.question, "choices": self.choices,
                "letters": list(LETTERS[:len(self.choices)]), "answer": self.answer}


@dataclass
class TaskSpec:
    """One generated task: which benchmark, subject and formulation it scores."""

    name: str
    benchmark: str
    subject: str
    formulation: str
    items: int


@dataclass
class TaskSet:
    folder: Path
    tasks: list[TaskSpec] = field(default_factory=list)

    def by_name(self) -> dict[str, TaskSpec]:
        return {t.name: t for t in self.tasks}


def benchmark_items(ws: Workspace, benchmark: str, limit: int | None = None, seed: int = 0) -> list[BenchmarkItem]:
    """The multiple-choice items of a benchmark with a gold answer, in a fixed order; with `limit`, a seeded
    sample of that many items (the same items for every model)."""
    ensure_registered(ws, [benchmark])
    rows = ws.query("SELECT doc_id, item_id, subject, question, choices, answer_index FROM benchmark_items "
                    "WHERE corpus = ? AND format = 'mcq' AND answer_index IS NOT NULL ORDER BY doc_id", [benchmark])
    if limit and limit < len(rows):
        # Keyed by the benchmark's own item id, so the same sample is drawn in any workspace.
        picked = sorted(rows, key=lambda r: sample_key(seed, str(r[1] or r[0])))[:limit]
        rows = sorted(picked, key=lambda r: r[0])
    return [BenchmarkItem(doc_id, str(item_id or doc_id), benchmark, subject or "(none)", question,
                          json.loads(choices), int(answer))
            for doc_id, item_id, subject, question, choices, answer in rows]


def sample_key(seed: int, item_id: str) -> str:
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()


def read_fewshot(source: str | Path) -> dict[str, list[dict[str, Any]]]:
    """Few-shot exemplars per subject from a normalised MCQ JSONL file (question, choices, answer_index,
    subject), in file order, as lm-eval's `first_n` sampler takes them from the dev split."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"few-shot file {path} does not exist")
    out: dict[str, list[dict[str, Any]]] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            choices = [str(c) for c in rec["choices"]]
            item = BenchmarkItem(str(rec.get("id", "")), str(rec.get("id", "")), "fewshot",
                                 str(rec.get("subject") or "(none)"), rec["question"], choices,
                                 int(rec["answer_index"]))
            out.setdefault(item.subject, []).append(item.doc())
    return out


def default_fewshot_file() -> Path:
    return data_root() / DEFAULT_FEWSHOT_FILE


def subject_title(subject: str) -> str:
    return subject.replace("_", " ")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "x"


def content_hash(items: list[BenchmarkItem], fewshot: dict[str, list[dict[str, Any]]], shots: int) -> str:
    """Hash of everything a score depends on besides the model: items, exemplars used and the prompt version."""
    h = hashlib.sha256(f"template-v{TEMPLATE_VERSION}:shots={shots}\n".encode())
    for item in items:
        h.update(json.dumps(item.doc(), sort_keys=True, ensure_ascii=False).encode() + b"\n")
    if shots:
        for subject in sorted({i.subject for i in items}):
            for ex in fewshot.get(subject, [])[:shots]:
                h.update(json.dumps(ex, sort_keys=True, ensure_ascii=False).encode() + b"\n")
    return h.hexdigest()


def task_config(name: str, formulation: str, subject: str, test_file: Path, dev_file: Path | None) -> dict[str, Any]:
    """One lm-eval task YAML as a dict."""
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {', '.join(FORMULATIONS)}, not {formulation!r}")
    files = {"test": str(test_file)}
    if dev_file is not None:
        files["dev"] = str(dev_file)
    config: dict[str, Any] = {
        "task": name, "task_alias": subject,
        "dataset_path": "json", "dataset_kwargs": {"data_files": files},
        "test_split": "test", "output_type": "multiple_choice",
        "description": DESCRIPTIONS[formulation].format(subject=subject_title(subject)),
        "doc_to_text": LETTER_TEXT if formulation == "letter" else CLOZE_TEXT,
        "doc_to_choice": "letters" if formulation == "letter" else "choices",
        "doc_to_target": "answer",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}] + (
            [{"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}]
            if formulation == "cloze" else []),
        "num_fewshot": 0,
        "metadata": {"version": 1.0},
    }
    if dev_file is not None:
        config["fewshot_split"] = "dev"
        config["fewshot_config"] = {"sampler": "first_n"}
        config["num_fewshot"] = sum(1 for line in dev_file.read_text(encoding="utf-8").splitlines() if line)
    return config


def write_tasks(folder: Path, items: list[BenchmarkItem], formulations: list[str], shots: int,
                fewshot: dict[str, list[dict[str, Any]]], prefix: str) -> TaskSet:
    """Write the data files and task YAMLs of one benchmark into `folder` (one task per subject and
    formulation). With `shots`, every subject needs that many exemplars."""
    folder.mkdir(parents=True, exist_ok=True)
    by_subject: dict[str, list[BenchmarkItem]] = {}
    for item in items:
        by_subject.setdefault(item.subject, []).append(item)
    if shots:
        short = sorted(s for s in by_subject if len(fewshot.get(s, [])) < shots)
        if short:
            raise WorkspaceError(f"{shots}-shot needs {shots} exemplars per subject; the few-shot set has fewer for "
                                 f"{', '.join(short[:8])}{' ...' if len(short) > 8 else ''}")
    taskset = TaskSet(folder)
    for k, (subject, subject_items) in enumerate(sorted(by_subject.items())):
        stem = f"{prefix}_{k:03d}_{_slug(subject)}"
        test_file = folder / f"{stem}.test.jsonl"
        test_file.write_text("".join(json.dumps(i.doc(), ensure_ascii=False) + "\n" for i in subject_items),
                             encoding="utf-8")
        dev_file = None
        if shots:
            dev_file = folder / f"{stem}.dev.jsonl"
            dev_file.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n"
                                        for d in fewshot[subject][:shots]), encoding="utf-8")
        for formulation in formulations:
            name = f"{stem}_{formulation}"
            config = task_config(name, formulation, subject, test_file, dev_file)
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True, sort_keys=False),
                                                 encoding="utf-8")
            taskset.tasks.append(TaskSpec(name, items[0].benchmark, subject, formulation, len(subject_items)))
    return taskset
