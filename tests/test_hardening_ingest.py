"""Hostile input to ingest (issue 10): bad benchmark items, stray bytes in JSON, unterminated CSV quotes,
truncated or corrupt compressed files, and oversized single-line records, each answered with a recorded reason
and nothing lost or invented."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path

import orjson
import zstandard

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.ingest import IngestConfig, ingest
from core.readers import preview_source
from core.workspace import Workspace

MMLU_MED = "mmlu/mcq_mmlu_medical_test.jsonl"
MEDQUAD = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"
GB18030_CSV = "chinese_medical_dialogue/raw/sample_IM_5000-6000_gb18030.csv"


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _errors(ws: Workspace, corpus: str) -> dict[int | None, str]:
    return dict(ws.query("SELECT line, reason FROM ingest_errors WHERE corpus = ? ORDER BY line", [corpus]))


# --- benchmark items (11) ------------------------------------------------------------------------------------
def test_benchmark_items_with_bad_answers_choices_or_questions_are_rejected(empty_ws: Workspace, data_dir: Path,
                                                                           tmp_path: Path) -> None:
    real = [orjson.loads(x) for x in _lines(data_dir / MMLU_MED)[:40]]
    planted = {  # line number (1-based, after insertion) -> the bad item and the reason expected for it
        5: ({**real[0], "answer_index": 2.5}, "benchmark item has an invalid answer_index"),
        10: ({**real[1], "answer_index": True}, "benchmark item has an invalid answer_index"),
        15: ({**real[2], "answer_index": 9}, "benchmark item has an invalid answer_index"),
        20: ({**real[3], "choices": []}, "benchmark item has no choices"),
        25: ({**real[4], "question": "   "}, "benchmark item has an empty question"),
        30: ({**real[5], "choices": None}, "benchmark item has no choices list"),
    }
    records = list(real)
    for line in sorted(planted):
        records.insert(line - 1, planted[line][0])
    # An integral float and a digit string are the same answer as the integer (CSV and pandas exports).
    records.append({**real[6], "answer_index": float(real[6]["answer_index"])})
    records.append({**real[7], "answer_index": str(real[7]["answer_index"])})
    path = tmp_path / "bench.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    result = import_benchmark(empty_ws, BenchmarkImportConfig([str(path)], "bench", "domain"))
    assert _errors(empty_ws, "bench") == {line: reason for line, (_, reason) in planted.items()}
    assert result.benchmark.items == len(real) + 2
    gold = empty_ws.query("SELECT question, answer_index, answer FROM benchmark_items ORDER BY item_text")
    by_question: dict[str, list[tuple[int, str]]] = {}
    for question, index, answer in gold:
        by_question.setdefault(question, []).append((index, answer))
    for item in real:  # every kept item carries its own gold answer, none an invented one
        for index, answer in by_question[item["question"]]:
            assert index == item["answer_index"] and answer == item["choices"][item["answer_index"]]


def test_free_text_item_with_empty_question_is_rejected(empty_ws: Workspace, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "What lowers fever?", "answer": "Paracetamol"},
        {"question": "", "answer": "Rest"},
        {"question": "Is aspirin an NSAID?", "answer": True},
    ]) + "\n", encoding="utf-8")
    result = import_benchmark(empty_ws, BenchmarkImportConfig([str(path)], "qa", "domain", fmt="qa"))
    assert result.benchmark.items == 1
    assert _errors(empty_ws, "qa") == {2: "evaluation item has an empty question",
                                       3: "evaluation item lacks question/answer"}


# --- stray bytes in JSON (9) -----------------------------------------------------------------------------------
def test_stray_high_bytes_in_jsonl_are_recorded_not_decoded_as_a_legacy_code_page(empty_ws: Workspace,
                                                                                   data_dir: Path,
                                                                                   tmp_path: Path) -> None:
    lines = _lines(data_dir / MEDQUAD)[:300]
    assert all(line.isascii() for line in lines[:100])
    # Stray bytes in otherwise ASCII lines (the 2nd, 12th and 22nd line saying " the ").
    chosen = [i for i, line in enumerate(lines[:100]) if b" the " in line][1::10][:3]
    broken = dict(zip(chosen, [b"\xff\xfe\xc3(", b"\x9d", b"\xe9"], strict=True))
    out = list(lines)
    for index, junk in broken.items():
        out[index] = out[index].replace(b" the ", b" the " + junk + b" ", 1)
    path = tmp_path / "stray.jsonl"
    path.write_bytes(b"".join(out))
    result = ingest(empty_ws, IngestConfig([str(path)], "stray", "domain"))
    assert result.files[0].encoding == "utf-8" and "not UTF-8" in result.files[0].message
    errors = empty_ws.query("SELECT line, reason, byte_offset, detail FROM ingest_errors ORDER BY line")
    assert [(line, reason) for line, reason, _, _ in errors] == [(i + 1, "invalid UTF-8") for i in sorted(broken)]
    for (line, _, offset, detail), junk in zip(errors, [broken[i] for i in sorted(broken)], strict=True):
        assert offset == sum(len(x) for x in out[:line - 1])
        assert junk[:1].hex() in detail and "RFC 8259" in detail
    # Every other line is stored exactly as its UTF-8 text: no mojibake from a guessed code page.
    assert result.documents_added == len(lines) - len(broken)
    stored = dict(empty_ws.query("SELECT source_line, text FROM documents"))
    for number, line in enumerate(out, start=1):
        if number - 1 not in broken:
            assert stored[number] == orjson.loads(line)["text"].strip()


def test_legacy_encoded_csv_still_reads_and_json_array_with_bad_bytes_is_recorded(empty_ws: Workspace,
                                                                                  data_dir: Path,
                                                                                  tmp_path: Path) -> None:
    res = ingest(empty_ws, IngestConfig([str(data_dir / GB18030_CSV)], "cmdd", "domain", template="{title}\n{answer}"))
    assert res.files[0].encoding == "gb18030" and res.errors == 0 and res.documents_added == 7644
    records = json.loads((data_dir / "llamafactory/sft_en_general_alpaca_en_demo.json").read_text())[:20]
    path = tmp_path / "alpaca.json"
    path.write_bytes(json.dumps(records).encode().replace(b"the", "th\xe9".encode("latin-1"), 1))
    res = ingest(empty_ws, IngestConfig([str(path)], "alpaca", "instruction"))
    assert res.documents_added == 0
    assert empty_ws.query("SELECT reason FROM ingest_errors WHERE corpus = 'alpaca'") == [("invalid UTF-8",)]


# --- unterminated CSV quote (10) -------------------------------------------------------------------------------
def test_csv_unterminated_quote_is_recorded_and_the_following_rows_survive(empty_ws: Workspace, data_dir: Path,
                                                                           tmp_path: Path) -> None:
    texts = [orjson.loads(x)["text"] for x in _lines(data_dir / MEDQUAD)[:400]]
    texts = [t for t in texts if "," in t and '"' not in t and "\n" not in t][:60]  # one line each, quoted
    texts[5] = texts[5] + "\nwith a second line, inside its quotes"  # a legitimate multi-line field
    rows = [f'r{i},"{t}"\n' for i, t in enumerate(texts)]
    broken = {20: rows[20].rstrip('"\n') + "\n", 41: rows[41].rstrip('"\n') + "\n"}  # closing quote lost
    rows = [broken.get(i, row) for i, row in enumerate(rows)]
    path = tmp_path / "quotes.csv"
    path.write_text("id,text\n" + "".join(rows), encoding="utf-8")
    result = ingest(empty_ws, IngestConfig([str(path)], "quotes", "domain"))
    # Physical line numbers: the header is line 1 and row 5 spans two lines.
    line_of = {i: i + 2 + (i > 5) for i in range(len(texts))}
    errors = empty_ws.query("SELECT line, reason, detail FROM ingest_errors ORDER BY line")
    assert [(line, reason) for line, reason, _ in errors] == [(line_of[i], "unterminated quote") for i in broken]
    assert all("not closed" in detail for _, _, detail in errors)
    assert result.documents_added == len(texts) - len(broken)
    stored = dict(empty_ws.query("SELECT source_line, text FROM documents"))
    for i, text in enumerate(texts):
        if i not in broken:
            assert stored[line_of[i]] == text.strip()


# --- damaged compressed files (4) ------------------------------------------------------------------------------
def test_truncated_or_corrupt_compressed_files_are_recorded_and_the_ingest_goes_on(empty_ws: Workspace,
                                                                                  data_dir: Path,
                                                                                  tmp_path: Path) -> None:
    data = (data_dir / MEDQUAD).read_bytes()
    lines = data.count(b"\n")
    gz, zst = gzip.compress(data), zstandard.ZstdCompressor(write_checksum=True).compress(data)
    bad_zst = bytearray(zst)
    bad_zst[len(zst) // 2:len(zst) // 2 + 64] = bytes(64)  # zeroed block: the frame checksum fails
    multi_frame = zstandard.ZstdCompressor().compress(data[:len(data) // 2]) + \
        zstandard.ZstdCompressor().compress(data[len(data) // 2:])
    bad_gz = bytearray(gz)
    bad_gz[len(gz) // 2:len(gz) // 2 + 64] = bytes(64)
    files = {  # in ingest order (sorted names): damaged files between good ones
        "a_good.jsonl.gz": gz,
        "b_truncated.jsonl.gz": gz[: len(gz) // 2],
        "c_corrupt.jsonl.gz": bytes(bad_gz),
        "d_truncated.jsonl.zst": zst[: len(zst) // 2],
        "e_corrupt.jsonl.zst": bytes(bad_zst),
        "f_not_zstd.jsonl.zst": data[:5000],
        "g_multi_frame.jsonl.zst": multi_frame,
        "h_good.jsonl": data,
    }
    folder = tmp_path / "files"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    result = ingest(empty_ws, IngestConfig([str(folder)], "mixed", "domain"))
    status = {Path(f.file).name: f.status for f in result.files}
    assert status == {"a_good.jsonl.gz": "ingested", "b_truncated.jsonl.gz": "failed",
                      "c_corrupt.jsonl.gz": "failed", "d_truncated.jsonl.zst": "failed",
                      "e_corrupt.jsonl.zst": "failed", "f_not_zstd.jsonl.zst": "failed",
                      "g_multi_frame.jsonl.zst": "ingested", "h_good.jsonl": "ingested"}
    errors = {Path(f).name: (reason, offset, detail) for f, reason, offset, detail in empty_ws.query(
        "SELECT file, reason, byte_offset, detail FROM ingest_errors")}
    assert {name: reason for name, (reason, _, _) in errors.items()} == {
        "b_truncated.jsonl.gz": "truncated gzip file", "c_corrupt.jsonl.gz": "corrupt gzip file",
        "d_truncated.jsonl.zst": "truncated zstd file", "e_corrupt.jsonl.zst": "corrupt zstd file",
        "f_not_zstd.jsonl.zst": "corrupt zstd file"}
    for name, (_, offset, detail) in errors.items():
        assert name in detail and "good decompressed bytes" in detail
        assert 0 <= offset < len(data)
    assert errors["b_truncated.jsonl.gz"][1] > len(data) // 4  # the good part before the break is counted
    # A damaged file adds nothing (no half file); each good file and the two-frame file add every line.
    per_file = dict(empty_ws.query("SELECT source_file, count(*) FROM documents GROUP BY 1"))
    assert sorted(Path(f).name for f in per_file) == ["a_good.jsonl.gz", "g_multi_frame.jsonl.zst", "h_good.jsonl"]
    assert set(per_file.values()) == {lines}


# --- oversized single-line records (8) -------------------------------------------------------------------------
def test_oversized_lines_are_rejected_while_streaming_in_bounded_memory(empty_ws: Workspace, data_dir: Path,
                                                                        tmp_path: Path) -> None:
    lines = _lines(data_dir / MEDQUAD)[:50]
    huge_text = "fever " * 4_000_000  # a 24 MB line
    huge = orjson.dumps({"id": "huge", "text": huge_text}) + b"\n"
    body = b"".join(lines[:20]) + huge + b"".join(lines[20:])
    (tmp_path / "long.jsonl").write_bytes(body)
    (tmp_path / "long.jsonl.gz").write_bytes(gzip.compress(body, compresslevel=1))
    paragraphs = "\n\n".join(orjson.loads(x)["text"].replace("\n", " ") for x in lines[:10])
    long_paragraph = "\n".join(["chills and fever " * 500] * 2_000)  # 17 MB in 2,000 lines, no blank line
    (tmp_path / "long.txt").write_text(paragraphs + "\n\n" + long_paragraph + "\n\n" + paragraphs + "\n",
                                       encoding="utf-8")
    csv_rows = "".join(f"r{i},{orjson.loads(x)['text'].replace(chr(10), ' ').replace(',', ';')}\n"
                       for i, x in enumerate(lines[:10]))
    (tmp_path / "long.csv").write_text("id,text\n" + csv_rows + "big," + huge_text + "\n" + csv_rows,
                                       encoding="utf-8")
    max_chars = 10_000  # lines past ~1.1 MB are rejected unread
    (tmp_path / "warm.jsonl").write_bytes(b"".join(lines[:5]))  # loads the cleaning and language models first
    ingest(empty_ws, IngestConfig([str(tmp_path / "warm.jsonl")], "warm", "domain"))
    for name, expected_docs, bad_line in (("long.jsonl", 50, 21), ("long.jsonl.gz", 50, 21),
                                          ("long.txt", 20, None), ("long.csv", 20, 12)):
        tracemalloc.start()
        result = ingest(empty_ws, IngestConfig([str(tmp_path / name)], name, "domain", max_chars=max_chars))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 12 << 20, f"{name}: {peak / 2**20:.0f} MB traced for a {len(huge) >> 20} MB line"
        assert result.documents_added == expected_docs, name
        errors = empty_ws.query("SELECT line, reason, byte_offset FROM ingest_errors WHERE corpus = ?", [name])
        assert len(errors) == 1 and errors[0][1].startswith("oversized document"), (name, errors)
        if bad_line is not None:
            assert errors[0][0] == bad_line
        if name.startswith("long.jsonl"):
            assert errors[0][2] == sum(len(x) for x in lines[:20])  # offset of the line in the file
    # The lines after the long one are read at their own line numbers and offsets.
    line, offset, text = empty_ws.query("SELECT source_line, byte_offset, text FROM documents "
                                        "WHERE corpus = 'long.jsonl' AND source_line = 22")[0]
    assert offset == sum(len(x) for x in lines[:20]) + len(huge)
    assert text == orjson.loads(lines[20])["text"].strip()
    # The Ingest page's preview shows such a line by its size, without reading it whole.
    preview = preview_source(tmp_path / "long.jsonl", limit=25)
    assert [list(row) for row in preview.rows].count(["(oversized line)"]) == 1 and len(preview.rows) == 25

    # A whole JSONL file in GB18030 is not guessed either: its lines are errors, with the encoding as a hint,
    # and given explicitly it reads.
    rag = (data_dir / "medicalgpt/corpus_zh_medical_rag_qa.jsonl").read_text(encoding="utf-8")
    (tmp_path / "rag_gb.jsonl").write_bytes(rag.encode("gb18030"))
    res = ingest(empty_ws, IngestConfig([str(tmp_path / "rag_gb.jsonl")], "rag_guess", "domain"))
    assert res.documents_added == 0 and res.errors == 87 and "gb18030" in res.files[0].message
    res = ingest(empty_ws, IngestConfig([str(tmp_path / "rag_gb.jsonl")], "rag", "domain", encoding="gb18030"))
    assert res.documents_added == 87 and res.errors == 0
    assert empty_ws.scalar("SELECT count(*) FROM documents WHERE corpus = 'rag' AND text LIKE '问：%'") == 87
