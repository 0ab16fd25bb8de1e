"""Hostile use of the curation steps (issue 10): user folders the export must not delete, foreign databases,
typos in workspace paths, exports short of their budget after decontamination, silent progress, killed
processes, half-ingested files and a busy workspace."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.decontam import contamination_index
from core.ingest import IngestConfig, ingest
from core.mix import Component, MixRecipe, build_mix
from core.tokens import count_tokens
from core.workspace import Workspace, WorkspaceError
from studio.cli import main as cli_main

MEDQUAD = "medquad/corpus_en_medquad_nih_paragraphs.jsonl"
WIKIPEDIA = "llamafactory/corpus_en_wikipedia_paragraphs.jsonl"
MMLU_MED = "mmlu/mcq_mmlu_medical_test.jsonl"


@pytest.fixture(scope="module")
def small_ws_path(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real workspace: MedQuAD (domain), Wikipedia (general), MMLU medical (benchmark), tokens counted."""
    path = tmp_path_factory.mktemp("hardening") / "ws"
    with Workspace.open(path) as ws:
        ingest(ws, IngestConfig(sources=[str(data_dir / MEDQUAD)], corpus="medquad", role="domain"))
        ingest(ws, IngestConfig(sources=[str(data_dir / WIKIPEDIA)], corpus="wikipedia", role="general"))
        import_benchmark(ws, BenchmarkImportConfig([str(data_dir / MMLU_MED)], "mmlu_medical", "domain"))
        count_tokens(ws)
    return path


@pytest.fixture
def small_ws(small_ws_path: Path, tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    shutil.copytree(small_ws_path, path)
    return path


def small_recipe(name: str = "small", total_tokens: int = 60_000, decontaminate: bool = False) -> MixRecipe:
    return MixRecipe(name=name, seed=3, total_tokens=total_tokens, decontaminate=decontaminate,
                     components=[Component("domain", share=0.8), Component("general", share=0.2)])


# --- 1: the export replaces only a folder the studio wrote ---------------------------------------------------
def test_export_refuses_a_user_folder_holding_a_manifest(small_ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "v"
    (out / "src").mkdir(parents=True)
    (out / "manifest.json").write_text("{}")
    (out / "src" / "app.js").write_text("x")
    with Workspace.open(small_ws) as ws, pytest.raises(WorkspaceError, match="not a studio export"):
        build_mix(ws, small_recipe(), out)
    assert (out / "src" / "app.js").read_text() == "x"
    assert (out / "manifest.json").read_text() == "{}"
    assert not (tmp_path / "v.partial").exists()


def test_export_never_deletes_a_user_partial_folder_or_extra_files(small_ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "mix"
    (tmp_path / "mix.partial").mkdir()
    (tmp_path / "mix.partial" / "notes.txt").write_text("mine")
    with Workspace.open(small_ws) as ws:
        with pytest.raises(WorkspaceError, match="not a studio export in progress"):
            build_mix(ws, small_recipe(), out)
        assert (tmp_path / "mix.partial" / "notes.txt").read_text() == "mine"
        shutil.rmtree(tmp_path / "mix.partial")
        first = build_mix(ws, small_recipe(), out)
        # The studio's own export is replaced by the next one...
        second = build_mix(ws, small_recipe(), out)
        assert second.run_id != first.run_id
        assert json.loads((out / "manifest.json").read_text())["run"]["run_id"] == second.run_id
        assert not any(p.name.startswith(".studio") for p in out.iterdir())
        # ...but not once a user put a file of their own into it.
        (out / "my_notes.md").write_text("keep me")
        with pytest.raises(WorkspaceError, match=r"files the studio did not export \(my_notes.md\)"):
            build_mix(ws, small_recipe(), out)
        assert (out / "my_notes.md").read_text() == "keep me"
        assert (out / "train.jsonl").exists()


def test_cli_mix_refuses_a_foreign_folder_with_the_reason(small_ws: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "v"
    (out / "src").mkdir(parents=True)
    (out / "manifest.json").write_text('{"format": "studio-mix/1", "files": {}}')
    (out / "src" / "app.js").write_text("x")
    recipe_path = tmp_path / "r.toml"
    from core.mix import save_recipe
    save_recipe(small_recipe(), recipe_path)
    code = cli_main(["mix", str(small_ws), "--recipe", str(recipe_path), "--out", str(out)])
    assert code != 0
    assert "src/" in capsys.readouterr().err
    assert (out / "src" / "app.js").read_text() == "x"


# --- 2: a foreign DuckDB file is refused without a write -----------------------------------------------------
@pytest.mark.parametrize("read_only", [False, True])
def test_a_foreign_duckdb_file_is_refused_untouched(tmp_path: Path, read_only: bool) -> None:
    folder = tmp_path / "analytics"
    folder.mkdir()
    db = folder / "studio.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE sales (day DATE, amount DOUBLE)")
    con.execute("INSERT INTO sales VALUES ('2024-01-01', 12.5)")
    con.close()
    before = db.read_bytes()
    with pytest.raises(WorkspaceError, match=r"is not a studio workspace \(it holds other tables \(sales\)"):
        Workspace.open(folder, create=False, read_only=read_only)
    assert db.read_bytes() == before
    con = duckdb.connect(str(db), read_only=True)
    assert {t for (t,) in con.execute("SELECT table_name FROM information_schema.tables").fetchall()} == {"sales"}
    con.close()
    assert not (folder / "artifacts").exists()


def test_cli_commands_refuse_a_foreign_database(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "other"
    folder.mkdir()
    con = duckdb.connect(str(folder / "studio.duckdb"))
    con.execute("CREATE TABLE documents (id INTEGER)")
    con.close()
    before = (folder / "studio.duckdb").read_bytes()
    for argv in (["init", str(folder)], ["status", str(folder)], ["tokens", str(folder)]):
        assert cli_main(argv) != 0
        assert "is not a studio workspace" in capsys.readouterr().err
    assert (folder / "studio.duckdb").read_bytes() == before


# --- 3: only init and demo create a workspace ----------------------------------------------------------------
def test_a_typo_in_the_workspace_path_creates_nothing(tmp_path: Path, data_dir: Path, capsys) -> None:
    typo = tmp_path / "wrokspace"
    commands = [
        ["ingest", str(typo), str(data_dir / MEDQUAD), "--corpus", "medquad", "--role", "domain"],
        ["bench-import", str(typo), str(data_dir / MMLU_MED), "--name", "mmlu", "--kind", "domain"],
        ["app", str(typo), "--port", "1"],
        ["tokens", str(typo)], ["status", str(typo)], ["dedup", str(typo), "--method", "exact"],
    ]
    for argv in commands:
        assert cli_main(argv) != 0, argv
        err = capsys.readouterr().err
        assert "no workspace at" in err and "does not exist" in err, (argv, err)
        assert not typo.exists(), argv
    assert cli_main(["init", str(typo)]) == 0
    assert (typo / "studio.duckdb").exists()
    capsys.readouterr()
    assert cli_main(["ingest", str(typo / "studio.duckdb"), str(data_dir / MEDQUAD), "--corpus", "m", "--role",
                     "domain"]) != 0
    assert "is a file, not a workspace" in capsys.readouterr().err


# --- 13: decontamination at export refills from the pool -----------------------------------------------------
@pytest.fixture(scope="module")
def planted_ws_path(small_ws_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small workspace plus a domain corpus in which every document carries a benchmark question and its
    answer inside real MedQuAD prose (one per MMLU medical question over 100 characters)."""
    path = tmp_path_factory.mktemp("planted") / "ws"
    shutil.copytree(small_ws_path, path)
    with Workspace.open(path) as ws:
        # Questions long enough for the 13-gram check to find inside prose.
        items = ws.query("SELECT question, answer FROM benchmark_items WHERE length(question) > 100 "
                         "ORDER BY doc_id LIMIT 1200")
        prose = [t for (t,) in ws.query("SELECT text FROM documents WHERE corpus = 'medquad' ORDER BY doc_id "
                                        "LIMIT 1200")]
        source = path.parent / "planted.jsonl"
        source.write_text("".join(json.dumps({"text": f"{text}\n\nReview question: {q} Answer: {a}"}) + "\n"
                                  for text, (q, a) in zip(prose, items, strict=False)), encoding="utf-8")
        ingest(ws, IngestConfig(sources=[str(source)], corpus="medquad_planted", role="domain"))
        count_tokens(ws)
    return path


def test_decontamination_at_export_refills_the_budget_and_shares(planted_ws_path: Path, tmp_path: Path) -> None:
    with Workspace.open(planted_ws_path) as ws:
        clean_domain = ws.scalar("SELECT sum(token_count) FROM documents WHERE corpus = 'medquad'")
        general = ws.scalar("SELECT sum(token_count) FROM documents WHERE corpus = 'wikipedia'")
        # A budget the clean pools hold without repeats: domain takes most of its clean pool.
        budget = int(min(clean_domain * 0.7 / 0.8, general * 0.9 / 0.2))
        recipe = MixRecipe(name="planted", seed=4, total_tokens=budget, decontaminate=True, max_repeats=1.0,
                           components=[Component("domain", share=0.8), Component("general", share=0.2)])
        result = build_mix(ws, recipe, tmp_path / "out")
    decontam = result.decontamination
    assert decontam["dropped_documents"] >= 100  # the planted copies were sampled and dropped...
    assert decontam["refill"]["rounds"] >= 2 and decontam["refill"]["refilled_tokens"] > 0
    # ...and replaced: the budget and the shares hold within the mix's 1 % tolerance.
    assert abs(result.train_tokens - budget) / budget < 0.01, (result.train_tokens, budget)
    assert abs(result.components["domain"]["share_exported"] - 0.8) < 0.01
    assert abs(result.components["general"]["share_exported"] - 0.2) < 0.01
    rows = [json.loads(line) for line in (Path(result.out_dir) / "train.jsonl").read_text().splitlines()]
    assert len(rows) == result.train_documents
    with Workspace.open(planted_ws_path, read_only=True) as ws:
        assert not any(contamination_index(ws).find_many([r["text"] for r in rows]))
    assert not [w for w in result.plan.warnings if "decontamination" in w]


def test_decontamination_warns_where_the_pool_cannot_refill(planted_ws_path: Path, tmp_path: Path) -> None:
    with Workspace.open(planted_ws_path) as ws:
        planted = ws.scalar("SELECT sum(token_count) FROM documents WHERE corpus = 'medquad_planted'")
        recipe = MixRecipe(name="short", seed=4, total_tokens=int(planted * 0.5 / 0.3), decontaminate=True,
                           max_repeats=1.0, on_short="allow",
                           components=[Component("planted", share=0.3, corpora=["medquad_planted"]),
                                       Component("general", share=0.7, corpora=["wikipedia"])])
        result = build_mix(ws, recipe, tmp_path / "out")
    assert result.components["planted"]["tokens"] == 0
    assert any("'planted'" in w and "short" in w for w in result.plan.warnings), result.plan.warnings
    assert any("after decontamination component 'planted'" in w for w in result.plan.warnings)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["warnings"] == result.plan.warnings
