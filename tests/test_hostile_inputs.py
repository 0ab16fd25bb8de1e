"""A directory of hostile inputs (issue 14), each handed to the command a curator would use on it: every one gets
a clear one-line message, none a traceback, and nothing already in the workspace is lost.

The deeper checks of some of these (where the error is recorded, bounded memory, line numbers) live in
test_hardening_ingest.py; this table adds the command-line view of each and the workspace-intact check.
The "2 GB single-line file" is built at 64 MB here to stay quick in CI: a line is rejected as it streams by,
so only its size matters, and 64 MB is 64 times the default --max-chars.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import tomli_w
from conftest import run_page
from test_hardening_ingest import MEDQUAD, MMLU_MED, _lines

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.ingest import IngestConfig, ingest
from core.jobs import list_jobs
from core.train.config import config_to_dict, preset_config
from core.workspace import Workspace
from studio.cli import main as cli_main
from studio.widgets import current_job

LONG_LINE_BYTES = 64 << 20


def build_hostile_inputs(folder: Path, data_dir: Path) -> None:
    """Write every hostile input into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    medquad = _lines(data_dir / MEDQUAD)
    (folder / "empty.jsonl").write_bytes(b"")
    png_like = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 40  # an image named .jsonl
    (folder / "image.jsonl").write_bytes(png_like)
    with open(folder / "long_line.jsonl", "wb") as fh:  # one line, no newline at its end
        fh.write(b'{"text": "')
        chunk = b"fever and chills " * 4096
        for _ in range(LONG_LINE_BYTES // len(chunk)):
            fh.write(chunk)
        fh.write(b'"}')
    (folder / "nested.jsonl").write_text('{"text": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
                                         + '{"text": "x", "a": ' + '{"b": ' * 5000 + "1" + "}" * 5001 + "\n")
    (folder / "nested.json").write_text("[" * 200_000 + "]" * 200_000)
    (folder / "latin1.jsonl").write_bytes(
        b"".join(json.dumps({"text": json.loads(x)["text"] + " caf\u00e9"}, ensure_ascii=False).encode("latin-1",
                                                                                                  "replace") + b"\n"
                 for x in medquad[:5]))
    (folder / "ragged.csv").write_text("id,text,source\n1,fever and cough in a child,nih\n2,headache\n"
                                       "3,chest pain,nih,extra,columns\n4\n5,\"a quoted, fine row\",nih\n",
                                       encoding="utf-8")
    packed = gzip.compress(b"".join(medquad[:400]))
    (folder / "truncated.jsonl.gz").write_bytes(packed[: len(packed) // 2])
    # Regex metacharacters that, as patterns, would match most documents; the lexicon matches literally.
    (folder / "regex_lexicon.txt").write_text("fev.r\nhyper.*tension\n(pain|fever)\n[a-z]+\n^the\n\\w+ mg\nC++\n",
                                              encoding="utf-8")
    (folder / "bench_no_answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Which drug lowers a fever?", "choices": ["Paracetamol", "Insulin", "Heparin", "Warfarin"]},
        {"question": "Which organ makes insulin?", "choices": ["Liver", "Pancreas", "Kidney", "Heart"],
         "answer_index": None},
    ]), encoding="utf-8")
    (folder / "preferences.jsonl").write_text(json.dumps({
        "conversations": [{"from": "human", "value": "What lowers a fever?"}],
        "chosen": {"from": "gpt", "value": "Paracetamol, at the dose on the label."}}) + "\n", encoding="utf-8")
    (folder / "dpo.toml").write_text(tomli_w.dumps(config_to_dict(
        preset_config("DPO", data=str(folder / "preferences.jsonl")))), encoding="utf-8")
    (folder / "missing_model.toml").write_text(tomli_w.dumps(config_to_dict(
        preset_config("SFT", model=str(folder / "no_such_model"), data=str(folder / "preferences.jsonl")))),
        encoding="utf-8")


@dataclass(frozen=True)
class Hostile:
    name: str  # the test id
    what: str  # the input, for the table
    argv: Callable[[Path, Path], list[str]]  # (workspace, hostile folder) -> the CLI command; [] for the app
    message: str  # what the one-line message says
    exit_codes: tuple[int, ...]  # 0: handled and reported; 2: refused; 3: a file could not be read
    app_file: str = ""  # for the app rows: the file typed into the Ingest page
    app_roots_hostile: bool = False  # the app row's STUDIO_ROOTS: the hostile folder, else only the shared data


def _ingest(file: str, corpus: str) -> Callable[[Path, Path], list[str]]:
    return lambda ws, d: ["ingest", str(ws), str(d / file), "--corpus", corpus, "--role", "domain"]


CASES = [
    Hostile("empty-file", "empty .jsonl (0 bytes)", _ingest("empty.jsonl", "h_empty"),
            "empty file: nothing to ingest", (0,)),
    Hostile("binary-named-jsonl", "binary data (PNG bytes) named .jsonl", _ingest("image.jsonl", "h_binary"),
            "binary data, not text", (3,)),
    Hostile("single-line-64mb", "a 64 MB single-line .jsonl (stands in for 2 GB)",
            _ingest("long_line.jsonl", "h_long"), "1 × oversized document", (0,)),
    Hostile("deeply-nested-jsonl", "JSONL nested 100,000 deep", _ingest("nested.jsonl", "h_nested"),
            "2 × malformed JSON", (0,)),
    Hostile("deeply-nested-json", "a JSON array nested 200,000 deep", _ingest("nested.json", "h_nested_array"),
            "1 × malformed JSON", (0,)),
    Hostile("invalid-utf8", "Latin-1 bytes in a .jsonl", _ingest("latin1.jsonl", "h_latin1"),
            "5 × invalid UTF-8", (0,)),
    Hostile("ragged-csv", "CSV rows with 1, 2, 3 and 5 columns", _ingest("ragged.csv", "h_ragged"),
            "3 × wrong number of columns", (0,)),
    Hostile("truncated-gz", "a .jsonl.gz cut in half", _ingest("truncated.jsonl.gz", "h_gz"),
            "truncated gzip file", (3,)),
    Hostile("path-outside-roots", "a path outside STUDIO_ROOTS (Ingest page)", lambda ws, d: [],
            "outside the folders this studio may read", (), app_file="ragged.csv"),
    Hostile("binary-named-jsonl-in-app", "binary data named .jsonl (Ingest page preview)", lambda ws, d: [],
            "binary data, not text", (), app_file="image.jsonl", app_roots_hostile=True),
    Hostile("lexicon-regex-metacharacters", "a lexicon of regex metacharacters",
            lambda ws, d: ["terms", str(ws), "--lexicon", str(d / "regex_lexicon.txt")],
            "(7 terms): 340 documents scored, 0 hits", (0,)),  # as regexes they would hit most of them
    Hostile("model-path-missing", "a training config whose model folder does not exist",
            lambda ws, d: ["train", str(ws), "--config", str(d / "missing_model.toml")],
            "no_such_model' cannot be loaded: no such file or folder", (2,)),
    Hostile("benchmark-missing-answers", "a benchmark whose items have no answer",
            lambda ws, d: ["bench-import", str(ws), str(d / "bench_no_answers.jsonl"), "--name", "h_bench",
                           "--kind", "domain"], "2 item(s) have no gold answer", (0,)),
    Hostile("preference-without-rejected", "a DPO preference file without `rejected`",
            lambda ws, d: ["train", str(ws), "--config", str(d / "dpo.toml")],
            "record 1 has no `rejected`", (2,)),
]
RESULTS: list[tuple[str, str, str, bool]] = []


@pytest.fixture(scope="module")
def hostile_dir(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    build_hostile_inputs(folder, data_dir)
    return folder


@pytest.fixture(scope="module")
def base_ws_path(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """What a curator already has: 300 MedQuAD documents and 40 MMLU medical items."""
    folder = tmp_path_factory.mktemp("hostile_ws")
    (folder / "medquad.jsonl").write_bytes(b"".join(_lines(data_dir / MEDQUAD)[:300]))
    (folder / "mmlu.jsonl").write_bytes(b"".join(_lines(data_dir / MMLU_MED)[:40]))
    with Workspace.open(folder / "ws") as ws:
        ingest(ws, IngestConfig([str(folder / "medquad.jsonl")], "medquad", "domain"))
        import_benchmark(ws, BenchmarkImportConfig([str(folder / "mmlu.jsonl")], "mmlu", "domain"))
    return folder / "ws"


@pytest.fixture(scope="module", autouse=True)
def results_table() -> Iterator[None]:
    yield
    if RESULTS:
        width = max(len(r[0]) for r in RESULTS)
        print("\n\ninput | command | message | workspace intact")
        for what, command, message, intact in RESULTS:
            print(f"{what:{width}} | {command} | {message} | {'yes' if intact else 'NO'}")


def snapshot(ws_path: Path) -> dict[str, tuple]:
    """Each corpus's documents (count and a hash of their ids), current documents, and benchmark items."""
    with Workspace.open(ws_path, create=False, read_only=True) as ws:
        docs = {corpus: (n, h) for corpus, n, h in ws.query(
            "SELECT corpus, count(*), bit_xor(hash(doc_id)) FROM documents GROUP BY corpus")}
        current = dict(ws.query("SELECT corpus, count(*) FROM current_documents GROUP BY corpus"))
        items = dict(ws.query("SELECT corpus, count(*) FROM benchmark_items GROUP BY corpus"))
    return {corpus: (docs[corpus], current.get(corpus), items.get(corpus)) for corpus in docs}


def run_in_app(case: Hostile, ws: Path, hostile: Path, monkeypatch: pytest.MonkeyPatch,
               data_dir: Path) -> str:
    """The Ingest page with a path typed in: its error messages."""
    monkeypatch.setenv("STUDIO_ROOTS", str(hostile if case.app_roots_hostile else data_dir))
    at = run_page("ingest.py", ws)
    at.text_input(key="ingest_path").set_value(str(hostile / case.app_file)).run()
    assert not at.exception
    assert current_job(ws) is None
    return "\n".join(e.value for e in at.error)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_gets_a_clear_message_and_loses_nothing(case: Hostile, hostile_dir: Path, base_ws_path: Path,
                                                              data_dir: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(base_ws_path, ws)
    before = snapshot(ws)
    argv = case.argv(ws, hostile_dir)
    if argv:
        code = cli_main(argv)
        captured = capsys.readouterr()
        output = captured.out + captured.err
        assert code in case.exit_codes, (code, output)
        command = "studio " + " ".join(a.replace(str(ws), "WS").replace(str(hostile_dir) + "/", "")
                                       for a in argv)
    else:
        output = run_in_app(case, ws, hostile_dir, monkeypatch, data_dir)
        command = "app: Ingest page, path typed"
    assert "Traceback" not in output and "failed: " not in output, output  # no unexpected exception
    lines = [line.strip() for line in output.splitlines() if case.message in line]
    assert lines, output
    after = snapshot(ws)
    intact = all(after.get(corpus) == state for corpus, state in before.items())
    RESULTS.append((case.what, command, lines[0][:160], intact))
    assert intact, (before, after)
    assert list_jobs(ws) == []  # a refused training config starts nothing
