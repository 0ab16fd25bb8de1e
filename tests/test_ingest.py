"""Ingestion on the real shared files: every format, encodings, bad input, idempotence, a killed ingest."""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from conftest import kill_ingest_midway, replicated_jsonl

from core.ingest import IngestConfig, ingest
from core.text import detect_language
from core.workspace import Workspace, WorkspaceError

MEDQUAD = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"
GB18030_CSV = "chinese_medical_dialogue/raw/sample_IM_5000-6000_gb18030.csv"


def jsonl_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def doc_count(ws: Workspace, corpus: str) -> int:
    return ws.scalar("SELECT count(*) FROM documents WHERE corpus = ?", [corpus])


# --- formats ---------------------------------------------------------------------------------------------------
def test_jsonl_every_line_becomes_a_document_with_provenance(empty_ws: Workspace, data_dir: Path) -> None:
    source = data_dir / MEDQUAD
    res = ingest(empty_ws, IngestConfig([str(source)], "medquad", "domain"))
    lines = jsonl_lines(source)
    assert res.documents_added == len(lines) == 4896
    assert res.errors == 0
    # Provenance: line 1000's byte offset points at that line in the file, and the text matches it.
    line, offset, text = empty_ws.query(
        "SELECT source_line, byte_offset, text FROM documents WHERE source_line = 1000")[0]
    assert offset == sum(len(x) for x in lines[:999])
    assert orjson.loads(lines[999])["text"].strip() == text
    langs = dict(empty_ws.query("SELECT language, count(*) FROM documents GROUP BY 1"))
    assert langs["en"] > 0.95 * 4896


def test_json_array_alpaca_is_kept_structured(empty_ws: Workspace, data_dir: Path) -> None:
    source = data_dir / "llamafactory/sft_en_general_alpaca_en_demo.json"
    res = ingest(empty_ws, IngestConfig([str(source)], "alpaca", "instruction"))
    assert res.documents_added == len(json.loads(source.read_text())) == 999
    kind, record, text = empty_ws.query("SELECT kind, record, text FROM documents ORDER BY source_line LIMIT 1")[0]
    first = json.loads(source.read_text())[0]
    assert kind == "alpaca"
    assert json.loads(record)["instruction"] == first["instruction"]
    assert first["output"].strip() in text


def test_sharegpt_conversations_are_kept_structured(empty_ws: Workspace, data_dir: Path) -> None:
    source = data_dir / "medicalgpt/sft_zh_medical_sharegpt_1k.jsonl"
    res = ingest(empty_ws, IngestConfig([str(source)], "sft", "instruction"))
    assert res.documents_added == 1000
    record = json.loads(empty_ws.scalar("SELECT record FROM documents WHERE source_line = 1"))
    original = orjson.loads(jsonl_lines(source)[0])
    assert [t["from"] for t in record["conversations"]] == [t["from"] for t in original["conversations"]]
    assert empty_ws.scalar("SELECT count(*) FROM documents WHERE language = 'zh'") > 950


def test_benchmark_items_keep_choices_and_answer(empty_ws: Workspace, data_dir: Path) -> None:
    source = data_dir / "mmlu/mcq_mmlu_medical_test.jsonl"
    ingest(empty_ws, IngestConfig([str(source)], "mmlu_med", "benchmark"))
    record = json.loads(empty_ws.scalar("SELECT record FROM documents WHERE source_line = 1"))
    original = orjson.loads(jsonl_lines(source)[0])
    assert record["choices"] == original["choices"] and record["answer_index"] == original["answer_index"]


def test_gb18030_csv_reads_as_chinese(empty_ws: Workspace, data_dir: Path) -> None:
    res = ingest(empty_ws, IngestConfig([str(data_dir / GB18030_CSV)], "cmdd", "domain",
                                        template="{title}\n{answer}"))
    assert res.files[0].encoding == "gb18030"
    assert res.documents_added == 7644 and res.errors == 0
    text = empty_ws.scalar("SELECT text FROM documents WHERE source_line = 2")
    assert text.startswith("高血压患者能吃党参吗？")
    assert empty_ws.scalar("SELECT count(*) FROM documents WHERE language = 'zh'") == 7644


def test_csv_without_text_field_asks_for_one(empty_ws: Workspace, data_dir: Path) -> None:
    res = ingest(empty_ws, IngestConfig([str(data_dir / GB18030_CSV)], "cmdd", "domain"))
    assert res.documents_added == 0
    reason, detail = empty_ws.query("SELECT reason, detail FROM ingest_errors")[0]
    assert reason == "missing text field" and "answer" in detail


def test_parquet_tsv_txt_markdown_and_compression(empty_ws: Workspace, data_dir: Path, tmp_path: Path) -> None:
    rows = [orjson.loads(x) for x in jsonl_lines(data_dir / "llamafactory/corpus_en_wikipedia_paragraphs.jsonl")]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "wiki.parquet")
    with open(tmp_path / "wiki.tsv", "w", encoding="utf-8") as fh:
        fh.write("id\ttext\n")
        for r in rows[:300]:
            fh.write(f"{r['id']}\t{r['text'].replace(chr(9), ' ').replace(chr(10), ' ')}\n")
    raw = (data_dir / "medicalgpt/raw/pretrain/fever.txt").read_bytes()
    (tmp_path / "fever.txt.gz").write_bytes(gzip.compress(raw))
    jsonl = (data_dir / MEDQUAD).read_bytes()
    (tmp_path / "medquad.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    readme = data_dir / "chinese_medical_dialogue/raw/README.md"

    def added(source: Path | str, **kw: object) -> int:
        return ingest(empty_ws, IngestConfig([str(source)], kw.pop("corpus", Path(source).name), "general",
                                             **kw)).documents_added

    assert added(tmp_path / "wiki.parquet") == len(rows)
    assert added(tmp_path / "wiki.tsv") == 300
    paragraphs = [p for p in raw.decode("utf-8").replace("\r\n", "\n").split("\n\n") if p.strip()]
    assert added(tmp_path / "fever.txt.gz") == len(paragraphs)
    assert added(tmp_path / "medquad.jsonl.zst") == 4896
    assert added(readme, txt_unit="file") == 1
    assert added(readme, corpus="readme_paragraphs") > 3


def test_folder_is_read_recursively_with_a_glob(empty_ws: Workspace, data_dir: Path) -> None:
    res = ingest(empty_ws, IngestConfig([str(data_dir / "mmlu")], "mmlu_all", "benchmark", pattern="**/mcq_*.jsonl"))
    assert len(res.files) == 4
    assert res.documents_added == 12258 + 1089 + 695 + 285


def test_utf16_and_bom_files_are_detected(empty_ws: Workspace, data_dir: Path, tmp_path: Path) -> None:
    text = (data_dir / "medicalgpt/corpus_zh_medical_rag_qa.jsonl").read_text(encoding="utf-8")
    (tmp_path / "rag16.jsonl").write_bytes(codecs.BOM_UTF16_LE + text.encode("utf-16-le"))
    (tmp_path / "ragbom.jsonl").write_bytes(codecs.BOM_UTF8 + text.encode("utf-8"))
    for name in ("rag16.jsonl", "ragbom.jsonl"):
        res = ingest(empty_ws, IngestConfig([str(tmp_path / name)], name, "domain"))
        assert res.documents_added == 87 and res.errors == 0, res.files[0]
        assert empty_ws.scalar("SELECT count(*) FROM documents WHERE corpus = ? AND text LIKE '问：%'", [name]) == 87


# --- bad input ---------------------------------------------------------------------------------------------------
def test_planted_bad_lines_are_recorded_and_cleaned(empty_ws: Workspace, data_dir: Path, tmp_path: Path) -> None:
    lines = jsonl_lines(data_dir / MEDQUAD)[:200]
    good = orjson.loads(lines[10])["text"]
    planted = {
        20: b'{"text": "unterminated\n',
        40: b'{"id": 1, "body": "no text field here"}\n',
        60: b'{"text": "   "}\n',
        80: orjson.dumps({"text": "x" * 200_000}) + b"\n",
        100: b"[1, 2, 3]\n",
        120: b'{"text": "bad \xff\xfe bytes"}\n',
    }
    out = list(lines)
    for index in sorted(planted, reverse=True):
        out.insert(index, planted[index])
    out.insert(5, orjson.dumps({"text": "Caf\u00c3\u00a9 au lait: \u00e2\u20ac\u0153quoted\u00e2\u20ac\x9d"}) + b"\n")
    out.insert(6, orjson.dumps({"text": "NUL\x00 and bell\x07 removed " + good[:50]}) + b"\n")
    path = tmp_path / "planted.jsonl"
    path.write_bytes(b"".join(out))
    res = ingest(empty_ws, IngestConfig([str(path)], "planted", "domain", max_chars=100_000))
    errors = empty_ws.query("SELECT line, reason FROM ingest_errors ORDER BY line")
    reasons = {reason.split(" (")[0] for _, reason in errors}
    assert len(errors) == 6 == res.errors
    assert reasons == {"malformed JSON", "missing text field", "empty document", "oversized document",
                       "record is not an object", "invalid UTF-8"}
    assert res.documents_added == 200 + 2
    # Every planted line is reported at its real line number.
    texts_at = {line for line, _ in errors}
    assert all(out[n - 1] in planted.values() for n in texts_at)
    repaired = empty_ws.scalar("SELECT text FROM documents WHERE text LIKE 'Caf%'")
    assert repaired.startswith("Café au lait: “quoted”")
    assert res.counts()["mojibake_fixed"] == 1
    assert empty_ws.scalar("SELECT count(*) FROM documents WHERE contains(text, chr(0)) OR contains(text, chr(7))") == 0
    assert res.counts()["control_chars_removed"] == 2


def test_unknown_role_and_missing_file_are_clear_errors(empty_ws: Workspace, data_dir: Path) -> None:
    with pytest.raises(WorkspaceError, match="role must be one of"):
        ingest(empty_ws, IngestConfig([str(data_dir / MEDQUAD)], "x", "medical"))
    with pytest.raises(ValueError, match="no such file"):
        ingest(empty_ws, IngestConfig([str(data_dir / "nope.jsonl")], "x", "domain"))
    assert empty_ws.scalar("SELECT count(*) FROM documents") == 0


# --- idempotence and transactions --------------------------------------------------------------------------------
def test_reingest_adds_nothing_and_a_changed_file_adds_only_new(empty_ws: Workspace, data_dir: Path,
                                                                tmp_path: Path) -> None:
    lines = jsonl_lines(data_dir / MEDQUAD)
    path = tmp_path / "growing.jsonl"
    path.write_bytes(b"".join(lines[:3000]))
    first = ingest(empty_ws, IngestConfig([str(path)], "m", "domain"))
    assert first.documents_added == 3000
    again = ingest(empty_ws, IngestConfig([str(path)], "m", "domain"))
    assert again.documents_added == 0 and again.files[0].status == "unchanged"
    path.write_bytes(b"".join(lines))  # the file grows: only the new lines are added
    grown = ingest(empty_ws, IngestConfig([str(path)], "m", "domain"))
    assert grown.documents_added == len(lines) - 3000
    assert grown.files[0].already_present == 3000
    # Natural duplicates inside the file stay separate documents (the dedup step decides about them).
    distinct = len({orjson.loads(x)["text"].strip() for x in lines})
    assert doc_count(empty_ws, "m") == len(lines) > distinct


def test_killed_ingest_leaves_nothing_half_written(tmp_path: Path, data_dir: Path) -> None:
    big = replicated_jsonl(data_dir / MEDQUAD, tmp_path / "big.jsonl", copies=60)  # ~290k lines
    ws_path = tmp_path / "ws"
    Workspace.open(ws_path).close()
    progress = tmp_path / "progress.jsonl"
    # Kill once the big file is half read (its progress lines say how many records were read).
    kill_ingest_midway(ws_path, [data_dir / MEDQUAD, big], progress,
                       lambda line: "big.jsonl" in line and "100,000 records" in line)
    with Workspace.open(ws_path) as ws:
        per_file = dict(ws.query("SELECT source_file, count(*) FROM documents GROUP BY 1"))
        assert per_file == {str(data_dir / MEDQUAD): 4896}  # the first file committed, nothing of the second
        assert ws.scalar("SELECT count(*) FROM ingested_files") == 1
        status, error = ws.query("SELECT status, error FROM runs WHERE step = 'ingest'")[0]
        assert status == "failed" and "interrupted" in error
        res = ingest(ws, IngestConfig([str(data_dir / MEDQUAD), str(big)], "k", "domain"))
        assert res.files[0].status == "unchanged"
        assert res.files[1].documents_added == 60 * 4896


# --- workspace schema --------------------------------------------------------------------------------------------
def test_older_workspace_is_migrated_forward_without_loss(tmp_path: Path, data_dir: Path) -> None:
    from core.schema import MIGRATIONS

    path = tmp_path / "old"
    path.mkdir()
    import duckdb

    con = duckdb.connect(str(path / "studio.duckdb"))
    con.execute(MIGRATIONS["core"][0])  # a workspace from before the audit views existed
    con.execute("CREATE TABLE schema_versions (component VARCHAR PRIMARY KEY, version INTEGER, "
                "applied_at TIMESTAMP DEFAULT current_timestamp)")
    con.execute("INSERT INTO schema_versions VALUES ('core', 1, current_timestamp)")
    con.execute("INSERT INTO corpora (name, role) VALUES ('old', 'domain')")
    con.execute("INSERT INTO documents (doc_id, corpus, text, char_count, content_hash) "
                "VALUES ('d1', 'old', 'kept across the migration', 26, 'h')")
    con.close()
    with Workspace.open(path) as ws:
        assert ws.schema_version()["core"] == len(MIGRATIONS["core"])
        assert ws.query("SELECT doc_id, text FROM current_documents") == [("d1", "kept across the migration")]


def test_language_detection_tells_chinese_english_and_other() -> None:
    assert detect_language("高血压患者能吃党参吗？党参有降血脂，降血压的作用。") == "zh"
    assert detect_language("Hypertension is a condition in which the force of the blood is too high.") == "en"
    assert detect_language("Le patient est traité pour une hypertension et il est suivi par le médecin.") == "other"
    assert detect_language("1234 5678 ---") == "other"
    assert detect_language("これは日本語の文章です。") == "ja"
