"""The `studio` command as scripts use it: JSON on stdout, non-zero exit and one line on stderr on failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core.config import REPO_ROOT

MEDQUAD = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"


def studio(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "studio.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)


def test_init_ingest_status_json(tmp_path: Path, data_dir: Path) -> None:
    ws = tmp_path / "ws"
    out = studio("init", str(ws), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["created"] is True

    out = studio("ingest", str(ws), str(data_dir / MEDQUAD), "--corpus", "medquad", "--role", "domain", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["ok"] and data["counts"]["documents_added"] == 4896 and data["counts"]["errors"] == 0
    assert data["run_id"].startswith("ingest-")

    again = json.loads(studio("ingest", str(ws), str(data_dir / MEDQUAD), "--corpus", "medquad", "--role",
                              "domain", "--json").stdout)
    assert again["counts"]["documents_added"] == 0 and again["counts"]["files_unchanged"] == 1

    status = json.loads(studio("status", str(ws), "--json").stdout)
    assert status["documents"] == 4896
    assert status["corpora"][0]["name"] == "medquad" and status["corpora"][0]["role"] == "domain"
    assert [r["step"] for r in status["recent_runs"]] == ["ingest", "ingest"]

    human = studio("status", str(ws))
    assert "medquad" in human.stdout and "4,896" in human.stdout


def test_failures_exit_non_zero_with_one_line(tmp_path: Path, data_dir: Path) -> None:
    missing = studio("status", str(tmp_path / "nowhere"))
    assert missing.returncode != 0
    assert missing.stderr.strip().count("\n") == 0 and "no workspace" in missing.stderr

    assert studio("init", str(tmp_path / "ws")).returncode == 0
    bad_file = studio("ingest", str(tmp_path / "ws"), str(tmp_path / "absent.jsonl"), "--corpus", "x", "--role",
                      "domain", "--json")
    assert bad_file.returncode != 0
    assert json.loads(bad_file.stdout)["ok"] is False
    assert "no such file" in bad_file.stderr

    (tmp_path / "notes.xyz").write_text("hello")
    unsupported = studio("ingest", str(tmp_path / "ws"), str(tmp_path / "notes.xyz"), "--corpus", "x", "--role",
                         "general", "--json")
    assert unsupported.returncode != 0
    assert "unsupported file type" in unsupported.stderr


def test_demo_ingests_every_recipe_file_without_unexplained_loss(tmp_path: Path, data_dir: Path) -> None:
    from core.demo import load_recipe

    out = studio("demo", str(tmp_path / "demo"), "--data", str(data_dir), "--no-app", "--no-steps", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    recipe = load_recipe()
    assert {c["corpus"] for c in data["corpora"]} == {c["name"] for c in recipe["corpus"]}
    for corpus in data["corpora"]:
        # Every record read is either a document or a row of ingest_errors.
        assert corpus["documents_seen"] == corpus["documents_added"] + corpus["errors"], corpus
    assert data["documents_added"] > 50_000
    rerun = json.loads(studio("demo", str(tmp_path / "demo"), "--data", str(data_dir), "--no-app", "--no-steps",
                              "--json").stdout)
    assert rerun["documents_added"] == 0
