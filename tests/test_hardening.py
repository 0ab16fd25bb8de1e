"""Hostile use of the curation steps (issue 10): user folders the export must not delete, foreign databases,
typos in workspace paths, exports short of their budget after decontamination, silent progress, killed
processes, half-ingested files and a busy workspace."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import duckdb
import pytest
from conftest import kill_ingest_midway, replicated_jsonl

from core.benchmarks import BenchmarkImportConfig, import_benchmark
from core.decontam import contamination_index
from core.ingest import IngestConfig, ingest
from core.jobs import queued_message
from core.mix import Component, MixRecipe, build_mix
from core.tokens import count_tokens
from core.workspace import Workspace, WorkspaceError
from studio.cli import main as cli_main

REPO_ROOT = Path(__file__).resolve().parents[1]
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


# --- 14: progress where stderr is not a terminal; no library warnings ----------------------------------------
def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path: Path, data_dir: Path) -> None:
    ws = tmp_path / "ws"
    env = dict(os.environ, STUDIO_PROGRESS_INTERVAL="0.2", PYTHONWARNINGS="default")
    assert subprocess.run([sys.executable, "-m", "studio.cli", "init", str(ws)], cwd=REPO_ROOT, env=env,
                          capture_output=True, timeout=120).returncode == 0
    part = tmp_path / "medquad_part.jsonl"  # 1,500 real records: enough for several progress calls
    part.write_bytes(b"".join((data_dir / MEDQUAD).read_bytes().splitlines(keepends=True)[:1500]))
    steps = [["ingest", str(ws), str(part), "--corpus", "medquad", "--role", "domain"],
             ["tokens", str(ws), "--batch-size", "500"]]
    for argv in steps:
        # stderr is a file here, as under nohup or in a container log
        log = tmp_path / f"{argv[0]}.log"
        with open(log, "w") as err:
            proc = subprocess.run([sys.executable, "-m", "studio.cli", *argv], cwd=REPO_ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=err, timeout=300)
        assert proc.returncode == 0
        text = log.read_text()
        lines = text.splitlines()
        assert "\r" not in text and "\033[" not in text  # no bar drawing in a log
        assert len(lines) >= 2, text
        assert all(re.match(r"\[\d\d:\d\d:\d\d \+[\d,]+s\] +(\d+\.\d%|\.\.\.) ", line) for line in lines), text
        assert "100.0%" in lines[-1]
        assert "Warning" not in text, text  # e.g. DuckDB's Arrow-copy UserWarning from core/tokens.py


def test_a_quiet_step_still_prints_a_periodic_line(capsys, monkeypatch) -> None:
    from studio.cli import Reporter

    monkeypatch.setenv("STUDIO_PROGRESS_INTERVAL", "0.1")
    reporter = Reporter(quiet=False, progress_file=None)
    assert reporter.lines  # pytest's captured stderr is not a terminal
    reporter(0.0, "deduplicating 1,000 documents")
    reporter(0.5, "deduplicating 500 documents")  # the same step: no new line at once
    time.sleep(0.45)  # a long call inside the step: the heartbeat speaks
    reporter(0.9, "writing clusters")
    reporter.close()
    lines = capsys.readouterr().err.splitlines()
    assert "deduplicating 1,000 documents" in lines[0]
    assert sum("deduplicating 500 documents" in line for line in lines) >= 2
    assert "writing clusters" in lines[-1]


def test_token_count_raises_no_library_warning(small_ws: Path) -> None:
    with Workspace.open(small_ws) as ws:
        ws.con.execute("UPDATE documents SET token_count = NULL WHERE corpus = 'wikipedia'")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            result = count_tokens(ws)
    assert result.documents_counted > 0


# --- 6: a killed ingest's partial file is never current to read-only readers ---------------------------------
def test_readers_never_see_a_half_ingested_file(tmp_path: Path, data_dir: Path) -> None:
    big = replicated_jsonl(data_dir / MEDQUAD, tmp_path / "big.jsonl", copies=25)  # ~120k lines
    ws_path = tmp_path / "ws"
    assert cli_main(["init", str(ws_path)]) == 0
    progress = tmp_path / "progress.jsonl"
    # kill once a part of the big file is committed
    kill_ingest_midway(ws_path, [data_dir / MEDQUAD, big], progress,
                       lambda line: "big.jsonl" in line and re.search(r"[2-9]\d,\d{3} records", line))
    # Read-only readers cannot clean up; the partial rows are in the table, but no reader counts them.
    con = duckdb.connect(str(ws_path / "studio.duckdb"), read_only=True)
    partial = con.execute("SELECT count(*) FROM documents WHERE source_file = ?", [str(big)]).fetchall()[0][0]
    assert partial > 0
    assert con.execute("SELECT count(*) FROM current_documents").fetchall()[0][0] == 4896
    assert con.execute("SELECT count(*) FROM document_fate").fetchall()[0][0] == 4896
    con.close()
    with Workspace.open(ws_path, create=False, read_only=True) as ws:
        assert [(c["name"], c["documents"]) for c in ws.corpora()] == [("k", 4896)]
    out = subprocess.run([sys.executable, "-m", "studio.cli", "status", str(ws_path), "--json"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=120)
    status = json.loads(out.stdout)
    assert status["documents"] == status["current_documents"] == 4896


# --- 5: no live children after a killed parent --------------------------------------------------------------
POOL_SCRIPT = """
import sys, time
from core.parallel import process_pool
with process_pool(2) as pool:
    futures = [pool.submit(time.sleep, 300) for _ in range(2)]
    time.sleep(2)
    print(" ".join(str(pid) for pid in pool._processes), flush=True)
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[1].split()[0] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_pool_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-c", POOL_SCRIPT], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_gone(workers, 10) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def test_the_watchdog_ends_a_worker_whose_parent_died_without_a_death_signal(tmp_path: Path) -> None:
    # The fallback where prctl is missing (not Linux) or was not set: the worker watches its parent's pid.
    script = ("import os, sys, time\n"
              "from core import parallel\n"
              "parallel.set_parent_death_signal = lambda sig=None: False\n"
              "if os.fork() == 0:\n"
              "    parallel.exit_with_parent(os.getppid())\n"
              "    print(os.getpid(), flush=True)\n"
              "    time.sleep(300)\n"
              "time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(
        REPO_ROOT)), stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        child = int(proc.stdout.readline())
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _wait_gone([child], 10) == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    import psutil

    return [c.pid for c in psutil.Process(pid).children(recursive=True)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    """Whether any socket listens on TCP `port` (IPv4 or IPv6), from /proc/net/tcp*; state 0A is LISTEN."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def _serve(ws: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "studio.cli", "app", str(ws), "--port", str(port), "--host",
                             "127.0.0.1"], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "app.log", "w"), start_new_session=True)  # noqa: SIM115
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return proc, port
        assert proc.poll() is None, (tmp_path / "app.log").read_text()
        time.sleep(0.3)
    raise AssertionError("studio app did not start")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_studio_app_stops_its_server_when_stopped_or_killed(tmp_path: Path, sig: int) -> None:
    ws = tmp_path / "ws"
    assert cli_main(["init", str(ws)]) == 0
    proc, port = _serve(ws, tmp_path)
    try:
        servers = _children(proc.pid)
        assert servers and _listening(port)
        os.kill(proc.pid, sig)  # the command only, not its process group
        code = proc.wait(timeout=30)
        if sig == signal.SIGTERM:
            assert code == 128 + signal.SIGTERM
            assert "stopped the server (SIGTERM)" in (tmp_path / "app.log").read_text()
        assert _wait_gone(servers, 15) == []
        # Nothing listens on the port any more. Read from the kernel's socket table rather than by connecting: a
        # connect to a closed ephemeral port can, rarely, connect to itself (TCP simultaneous open) and succeed.
        deadline = time.time() + 10
        while _listening(port) and time.time() < deadline:
            time.sleep(0.2)
        assert not _listening(port)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# --- 7: a busy workspace: say who holds it, show the wait, queue the app's jobs ------------------------------
HOLDER_SCRIPT = """
import sys, time
from core.workspace import Workspace
ws = Workspace.open(sys.argv[1], create=False)
print("holding", flush=True)
time.sleep(120)
"""


def test_a_waiting_writer_says_at_once_who_holds_the_workspace(tmp_path: Path, caplog) -> None:
    ws_path = tmp_path / "ws"
    Workspace.open(ws_path).close()
    script = tmp_path / "hold_workspace.py"
    script.write_text(HOLDER_SCRIPT)
    holder = subprocess.Popen([sys.executable, str(script), str(ws_path)], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        caplog.set_level("WARNING", logger="studio.workspace")
        started = time.monotonic()
        with pytest.raises(WorkspaceError) as refused:
            Workspace.open(ws_path, create=False, wait_s=6.0)
        waits = [r for r in caplog.records if r.name == "studio.workspace"]
        assert len(waits) >= 2  # at once, then again while waiting
        first = waits[0].getMessage()
        assert "waiting for workspace" in first and f"pid {holder.pid}" in first and "hold_workspace.py" in first
        assert waits[0].created - (time.time() - (time.monotonic() - started)) < 1.0  # said at once
        assert f"pid {holder.pid}" in str(refused.value)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    # The holder was killed: its lock-info file names a dead process, which is no longer blamed.
    with Workspace.open(ws_path, create=False) as ws:
        assert ws.scalar("SELECT count(*) FROM runs") == 0


def test_a_reader_holding_the_workspace_is_found_by_its_open_file(tmp_path: Path) -> None:
    ws_path = tmp_path / "ws"
    Workspace.open(ws_path).close()
    reader = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               "con = duckdb.connect(sys.argv[1], read_only=True)\nprint('open', flush=True)\n"
                               "time.sleep(120)", str(ws_path / "studio.duckdb")],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        with pytest.raises(WorkspaceError, match=rf"in use by `.*duckdb.*` \(pid {reader.pid}\)"):
            Workspace.open(ws_path, create=False, wait_s=0.5)
    finally:
        os.killpg(reader.pid, signal.SIGKILL)
        reader.wait()


def test_the_app_queues_a_job_while_another_runs(tmp_path: Path, data_dir: Path, monkeypatch) -> None:
    from studio import widgets

    ws_path = tmp_path / "ws"
    Workspace.open(ws_path).close()
    monkeypatch.setenv("STUDIO_WORKSPACE", str(ws_path))
    first = widgets.launch_job(["ingest", str(data_dir / MEDQUAD), "--corpus", "medquad", "--role", "domain"],
                               "Ingest MedQuAD")
    second = widgets.launch_job(["status"], "Status")  # refused before: 'still running'
    assert second.job_id != first.job_id
    assert second.last_progress()[1] == queued_message("Ingest MedQuAD")
    assert widgets.current_job(ws_path).job_id == second.job_id
    deadline = time.time() + 180
    while time.time() < deadline and (first.running or second.running):
        time.sleep(0.2)
    assert first.exit_code() == 0 and second.exit_code() == 0
    # The queued job ran after the first one ended, and saw its documents.
    assert second.result_file.stat().st_mtime >= first.exit_file.stat().st_mtime
    assert second.result()["documents"] == 4896
