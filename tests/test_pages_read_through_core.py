"""Pages are presentation only: no SQL string and no raw query on a workspace in `pages/`; they read through named
core functions (the developers' guide). The check reads the pages' syntax trees, so comments and prose in UI text
do not trip it; SQL is recognised by its statement shapes in upper case (SELECT ... FROM, INSERT INTO,
UPDATE ... SET, DELETE FROM, ... JOIN ... ON), which labels such as "Select corpora from the list" never take."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from core.config import REPO_ROOT

PAGES = sorted((REPO_ROOT / "pages").glob("*.py"))
SQL_SHAPES = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b"
    r"|\bJOIN\b[\s\S]*\bON\b|\bCREATE\s+(OR\s+REPLACE\s+)?(TEMP\s+)?(TABLE|VIEW)\b")
# Methods that run SQL on a workspace or a DuckDB connection.
QUERY_METHODS = {"query", "df", "scalar", "execute", "sql", "fetchall", "fetchone"}


def _string_text(node: ast.AST) -> str | None:
    """The text of a string literal; an f-string's literal parts joined with a placeholder per expression."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else " x " for v in node.values)
    return None


def sql_strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal in `source` shaped like SQL."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        text = _string_text(node)
        if text is not None and SQL_SHAPES.search(text):
            found.append((node.lineno, text.strip()[:80]))
    return found


def raw_queries(source: str) -> list[tuple[int, str]]:
    """(line, call) of every call of a query method on `ws`, `ws.con` or a connection in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in QUERY_METHODS:
            owner = ast.unparse(node.func.value)
            if owner in {"ws", "ws.con", "con", "workspace", "workspace.con"}:
                found.append((node.lineno, ast.unparse(node.func)))
    return found


def test_the_check_finds_sql_and_spares_ui_text() -> None:
    sample = '''
label = "Select corpora from the list, then update the threshold and set it"
help_text = f"Delete from the recipe the component {name} you do not want"
rows = ws.query("SELECT name, role FROM corpora ORDER BY role, name")
frame = ws.df(f"SELECT corpus, {column} AS length FROM documents WHERE corpus = ?", [name])
# SELECT doc_id FROM documents: a comment is not a string
counts = ws.df("SELECT c.name FROM corpora c "
               "LEFT JOIN current_documents d ON d.corpus = c.name")
ws.con.execute("UPDATE runs SET active = FALSE WHERE step = ?", [step])
ws.con.execute("DELETE FROM mix_pool WHERE doc_id = ?", [doc])
'''
    found = sql_strings(sample)
    assert [line for line, _ in found] == [4, 5, 7, 9, 10]
    assert [call for _, call in raw_queries(sample)] == ["ws.query", "ws.df", "ws.df", "ws.con.execute",
                                                         "ws.con.execute"]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_holds_no_sql(page: Path) -> None:
    source = page.read_text(encoding="utf-8")
    assert not sql_strings(source), f"SQL in {page.name}: move it into a named core function"
    assert not raw_queries(source), f"raw queries in {page.name}: read through a named core function"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_imports_no_cli_module(page: Path) -> None:
    tree = ast.parse(page.read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module] + \
        [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("studio.commands")], f"{page.name} imports a CLI module"


def test_one_upload_saver_cleans_names_and_keeps_what_it_saved(tmp_path: Path) -> None:
    from core.config import clean_file_name, save_upload

    assert clean_file_name("corpus.jsonl.gz", "upload") == "corpus.jsonl.gz"  # compound suffixes stay readable
    assert clean_file_name("My File (1).JSONL", "upload") == "My_File_1.jsonl"
    assert clean_file_name("../../etc/passwd", "upload") == "passwd"
    assert clean_file_name("C:\\Users\\x\\.hidden", "upload") == "hidden"
    assert clean_file_name("高血压 词表.TXT", "lexicon") == "高血压_词表.txt"
    assert clean_file_name("...", "upload") == "upload"
    assert clean_file_name("Cardio V2.CSV", "mined", ".csv") == "Cardio_V2.csv"
    assert clean_file_name("", "mined", ".csv") == "mined.csv"

    first = save_upload(tmp_path / "uploads", "fever notes.txt", b"fever\n")
    assert first.written and first.path == tmp_path / "uploads" / "fever_notes.txt"
    assert first.path.read_bytes() == b"fever\n"
    again = save_upload(tmp_path / "uploads", "fever notes.txt", b"fever\n")  # a page re-run
    assert again == (first.path, False)
    changed = save_upload(tmp_path / "uploads", "fever notes.txt", b"chills\n")
    assert changed.written and changed.path.read_bytes() == b"chills\n"
