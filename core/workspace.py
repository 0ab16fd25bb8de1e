"""The workspace: a folder holding `studio.duckdb` and an `artifacts/` folder for large files.

Every step opens a `Workspace`, records itself as a row of `runs` and writes its verdicts into `decisions`.
Connections are short-lived on purpose: DuckDB lets one process write a database file at a time, so the app
and the command line take turns instead of one of them holding the file for hours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from core.config import read_json, write_json_atomic
from core.schema import MIGRATIONS

DB_NAME = "studio.duckdb"
# Who holds the write lock: written by each writer beside the database, removed when it closes, so a process that
# waits for the workspace can say what it waits for.
LOCK_INFO_NAME = "studio.lock-info.json"
LOCK_WAIT_REPORT_S = 5.0  # while waiting, say so again this often
# The read snapshot: a consistent read-only copy a writer publishes beside the database, because DuckDB lets no
# other process open the file, not even read-only, while a writer holds it; the app reads it meanwhile.
SNAPSHOT_NAME = "studio.snapshot.duckdb"
SNAPSHOT_INFO_NAME = "studio.snapshot.json"
# Set in the environment of a background job that writes the workspace (`core.jobs.launch_step_job`): its writer
# publishes the snapshot when it opens the workspace (unless nothing changed since the last one), so the pages read
# the workspace as it was when the job took the lock.
PUBLISH_ON_OPEN_ENV = "STUDIO_PUBLISH_SNAPSHOT"
log = logging.getLogger("studio.workspace")
ROLES = ("domain", "general", "instruction", "benchmark")
DEFAULT_TOKENIZER = "bundled:smollm2"


class WorkspaceError(RuntimeError):
    """A problem the user can fix (a bad path, a locked workspace, an unknown corpus)."""


class WorkspaceBusy(WorkspaceError):
    """Another process holds the workspace's database (DuckDB allows one writer process, and no reader beside it)."""


@dataclass
class Run:
    """One execution of a step; counts set here are stored on the run when it ends."""

    run_id: str
    step: str
    params: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)


@cache
def library_versions() -> dict[str, str]:
    versions = {}
    for name in ("studio", "duckdb", "pyarrow", "transformers", "tokenizers", "torch", "sentence-transformers",
                 "faiss-cpu", "rensa", "datasketch", "ftfy", "jieba"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


@cache
def code_version() -> str:
    repo = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def lock_holder(path: Path) -> str:
    """Who holds the workspace: the writer its lock-info file names (when that process still lives), else the
    processes that have the database open (Linux), else a general description."""
    with contextlib.suppress(OSError, ValueError, TypeError):
        info = json.loads((path / LOCK_INFO_NAME).read_text(encoding="utf-8"))
        pid = int(info["pid"])
        if pid != os.getpid() and _process_alive(pid):
            return f"`{info.get('command') or '?'}` (pid {pid}, since {info.get('since', '?')})"
    holders = _processes_with_open(path / DB_NAME)
    if holders:
        return ", ".join(f"`{cmd}` (pid {pid})" for pid, cmd in holders[:3])
    return "another process (a running step, the app or a DuckDB session)"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _processes_with_open(db: Path) -> list[tuple[int, str]]:
    """(pid, command line) of the other processes that have `db` open, read from /proc (empty elsewhere)."""
    target = str(db.resolve())
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if any(os.readlink(fd) == target for fd in (entry / "fd").iterdir()):
                cmd = " ".join((entry / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
                found.append((int(entry.name), cmd[:200] or "?"))
    return found


def _limit_memory(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"SET memory_limit = '{os.environ.get('STUDIO_DUCKDB_MEMORY', '2GB')}'")


def _file_signature(path: Path) -> list[int]:
    """Size and modification time (ns) of a file, or zeros: whether a database file changed since a look."""
    try:
        st = path.stat()
    except OSError:
        return [0, 0]
    return [st.st_size, st.st_mtime_ns]


def database_signature(path: Path) -> list[int]:
    """The database file and its write-ahead log as they stand: equal signatures, nothing was written."""
    db = path / DB_NAME
    return _file_signature(db) + _file_signature(db.with_name(db.name + ".wal"))


def workspace_signature(path: Path) -> tuple[int, ...]:
    """Changes whenever anything is written to the workspace: the database signature and the read snapshot a
    writing job publishes (what a cache of reads is keyed by)."""
    return tuple(database_signature(path) + _file_signature(path / SNAPSHOT_NAME))


def _short_command() -> str:
    """`studio dedup` for this process when it is a `studio` command, else its program name."""
    if sys.argv and sys.argv[0].endswith(("studio/cli.py", "studio")) and len(sys.argv) > 1:
        return f"studio {sys.argv[1]}"
    return Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"


def snapshot_info(path: str | Path) -> dict[str, Any] | None:
    """What the published read snapshot of the workspace at `path` shows (`after`, `published_at`, `by`,
    `seconds`), or None when there is none."""
    path = Path(path).expanduser().resolve()
    if not (path / SNAPSHOT_NAME).exists():
        return None
    return read_json(path / SNAPSHOT_INFO_NAME)


class Workspace:
    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection, read_only: bool,
                 snapshot_of: dict[str, Any] | None = None) -> None:
        self.path = path
        self.con = con
        self.read_only = read_only
        # Set when this is the published read snapshot (the live database was held by a writer): what it shows.
        self.snapshot_of = snapshot_of

    # --- opening -------------------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, create: bool = True, read_only: bool = False,
             wait_s: float | None = None) -> Workspace:
        """Open (or create) a workspace. A writer waits up to `wait_s` (default 30 s) while another process
        holds the file: the app's pages take short read-only connections, and a job launched from a page
        starts while that page redraws. Readers default to not waiting, so a page shows a busy workspace at
        once."""
        path = Path(path).expanduser().resolve()
        db = path / DB_NAME
        if not db.exists():
            if path.is_file():
                raise WorkspaceError(f"{path} is a file, not a workspace: give the folder that holds "
                                     f"{DB_NAME} (`studio init FOLDER` creates one)")
            if not create:
                raise WorkspaceError(f"no workspace at {path}: it does not exist (check the path, or run "
                                     f"`studio init {path}` to create it)")
            if read_only:
                raise WorkspaceError(f"no workspace at {path}")
            if path.exists() and not path.is_dir():
                raise WorkspaceError(f"{path} exists and is not a folder")
            path.mkdir(parents=True, exist_ok=True)
        if wait_s is None:
            # STUDIO_LOCK_WAIT_S: how long a writer waits (the app's jobs wait long instead of failing).
            wait_s = 0.0 if read_only else float(os.environ.get("STUDIO_LOCK_WAIT_S", "30"))
        started = time.monotonic()
        deadline = started + wait_s
        next_report = 0.0
        while True:
            try:
                con = duckdb.connect(str(db), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() >= deadline:
                    error = WorkspaceBusy if "lock" in str(exc).lower() else WorkspaceError
                    raise error(cls._open_error(path, exc)) from exc
                waited = time.monotonic() - started
                if waited >= next_report:  # at once, then every few seconds
                    log.warning("waiting for workspace %s, in use by %s (%.0f s of %.0f s)", path,
                                lock_holder(path), waited, wait_s)
                    next_report = waited + LOCK_WAIT_REPORT_S
                time.sleep(0.25)
        foreign = cls._not_a_workspace(con)
        if foreign:
            con.close()
            raise WorkspaceError(f"{db} is not a studio workspace ({foreign}); nothing was written to it. "
                                 "Choose another folder (`studio init NEW_FOLDER` creates one)")
        (path / "artifacts").mkdir(exist_ok=True)
        # Bounded memory: DuckDB spills to the workspace's temp folder instead of growing with the corpus.
        _limit_memory(con)
        if not read_only:
            con.execute(f"SET temp_directory = '{path / 'artifacts' / 'tmp'}'")
        ws = cls(path, con, read_only)
        if not read_only:
            ws._write_lock_info()
            if os.environ.get(PUBLISH_ON_OPEN_ENV):
                ws.publish_snapshot(f"before {_short_command()}", only_if_changed=True, best_effort=True)
            ws._migrate()
            ws._close_interrupted_runs()
        return ws

    @classmethod
    def open_for_reading(cls, path: str | Path) -> Workspace:
        """The workspace read-only: the live database whenever it can be opened, else, while a writer holds it,
        its newest published read snapshot (`snapshot_of` says as of when). Without a snapshot the writer's lock
        is the error, as `open` gives it."""
        try:
            return cls.open(path, create=False, read_only=True)
        except WorkspaceBusy as exc:
            path = Path(path).expanduser().resolve()
            info = snapshot_info(path)
            if info is None:
                raise
            try:
                con = duckdb.connect(str(path / SNAPSHOT_NAME), read_only=True)
            except duckdb.Error:
                raise exc from None
            _limit_memory(con)
            return cls(path, con, True, snapshot_of=info)

    def publish_snapshot(self, after: str, *, only_if_changed: bool = False, best_effort: bool = False
                         ) -> float | None:
        """Publish a consistent read-only copy of the workspace beside it (`studio.snapshot.duckdb`), which readers
        open while this writer holds the database: every table and view as committed (plus this connection's own
        open transaction, so call it between transactions), written under a temporary name and renamed into
        place, so a reader sees the previous copy or this one, never half of one. `after` says what the copy
        shows (e.g. "ingest medquad_nih"). With `only_if_changed`, nothing is copied while the database files are
        as they were after the last publish. With `best_effort` (a step publishing as it goes), a failure (a full
        disk) is logged, not raised: the step's own work matters more. Returns the seconds it took, or None when it
        skipped or failed."""
        if self.read_only:
            raise WorkspaceError("a read-only workspace cannot publish a snapshot")
        if best_effort:
            try:
                return self.publish_snapshot(after, only_if_changed=only_if_changed)
            except (duckdb.Error, OSError) as exc:
                log.warning("could not publish the read snapshot of %s: %s", self.path, exc)
                return None
        if only_if_changed:
            info = snapshot_info(self.path)
            if info is not None and info.get("signature") == database_signature(self.path):
                return None
        started = time.monotonic()
        target = self.path / SNAPSHOT_NAME
        tmp = self.path / f".{SNAPSHOT_NAME}.{os.getpid()}.tmp"
        # Holding the write lock, no other process publishes: a copy left half-written by a killed one is removed.
        for leftover in self.path.glob(f".{SNAPSHOT_NAME}.*.tmp*"):
            leftover.unlink(missing_ok=True)
        database = self.scalar("SELECT current_database()")
        self.con.execute("CHECKPOINT")  # a smaller log to copy past, and the signature below stays put
        self.con.execute(f"ATTACH '{str(tmp).replace(chr(39), chr(39) * 2)}' AS studio_snapshot_copy")
        try:
            self.con.execute(f'COPY FROM DATABASE "{database}" TO studio_snapshot_copy')
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("DETACH studio_snapshot_copy")
            tmp.unlink(missing_ok=True)
            raise
        self.con.execute("DETACH studio_snapshot_copy")
        os.replace(tmp, target)
        seconds = time.monotonic() - started
        info = {"after": after, "published_at": datetime.now().isoformat(timespec="seconds"),
                "by": self._command(), "pid": os.getpid(), "seconds": round(seconds, 2),
                "signature": database_signature(self.path)}
        write_json_atomic(self.path / SNAPSHOT_INFO_NAME, info)
        log.info("published the read snapshot of %s after %s in %.1f s", self.path, after, seconds)
        return seconds

    @staticmethod
    def _command() -> str:
        return " ".join(" ".join(sys.argv).split())[:300]

    @staticmethod
    def _not_a_workspace(con: duckdb.DuckDBPyConnection) -> str | None:
        """Why the database is not a studio workspace, or None. An empty database (a new workspace, or one
        whose `init` died before its first table) is one; any other needs the studio's `schema_versions`
        with its core component. Only reads: a foreign database is refused before anything is written."""
        tables = {name for (name,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = current_database() "
            "AND table_schema = 'main'").fetchall()}
        if not tables:
            return None
        if "schema_versions" not in tables:
            shown = ", ".join(sorted(tables)[:5]) + (" ..." if len(tables) > 5 else "")
            return f"it holds other tables ({shown}) and no studio schema"
        try:
            components = {c for (c,) in con.execute("SELECT component FROM schema_versions").fetchall()}
        except duckdb.Error as exc:
            return f"its schema_versions table is not the studio's ({type(exc).__name__})"
        if "core" not in components:
            return "its schema_versions table names no studio core schema"
        return None

    @staticmethod
    def _open_error(path: Path, exc: Exception) -> str:
        if "lock" in str(exc).lower():
            return (f"workspace {path} is in use by {lock_holder(path)}; try again when it finishes")
        return f"cannot open workspace {path}: {exc}"

    def _write_lock_info(self) -> None:
        info = {"pid": os.getpid(), "command": self._command(),
                "since": datetime.now().isoformat(timespec="seconds")}
        with contextlib.suppress(OSError):
            (self.path / LOCK_INFO_NAME).write_text(json.dumps(info), encoding="utf-8")

    def close(self) -> None:
        self.con.close()
        if not self.read_only:
            with contextlib.suppress(OSError, ValueError):
                info_path = self.path / LOCK_INFO_NAME
                if json.loads(info_path.read_text(encoding="utf-8")).get("pid") == os.getpid():
                    info_path.unlink()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def artifacts(self) -> Path:
        return self.path / "artifacts"

    def _migrate(self) -> None:
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (component VARCHAR PRIMARY KEY, version INTEGER, "
            "applied_at TIMESTAMP DEFAULT current_timestamp)"
        )
        applied = dict(self.con.execute("SELECT component, version FROM schema_versions").fetchall())
        for component, steps in MIGRATIONS.items():
            done = applied.get(component, 0)
            for version, sql in enumerate(steps[done:], start=done + 1):
                with self.transaction():
                    self.con.execute(sql)
                    self.con.execute(
                        "INSERT OR REPLACE INTO schema_versions VALUES (?, ?, current_timestamp)",
                        [component, version],
                    )

    def _close_interrupted_runs(self) -> None:
        # Holding the write lock means no other process is writing: a 'running' run of another process was
        # killed. Its uncommitted work was rolled back by DuckDB; ingest commits batch by batch, so the
        # documents of files it had not finished are removed here. Say so in the run's row.
        self.con.execute(
            """
            DELETE FROM documents d
            WHERE d.run_id IN (SELECT run_id FROM runs WHERE status = 'running' AND coalesce(pid, -1) <> ?)
              AND NOT EXISTS (SELECT 1 FROM ingested_files f WHERE f.run_id = d.run_id
                              AND f.source_file = d.source_file)
            """,
            [os.getpid()],
        )
        self.con.execute(
            "UPDATE runs SET status = 'failed', ended_at = coalesce(ended_at, current_timestamp), "
            "error = 'interrupted: the process ended before the step finished' "
            "WHERE status = 'running' AND coalesce(pid, -1) <> ?",
            [os.getpid()],
        )

    def schema_version(self) -> dict[str, int]:
        return dict(self.con.execute("SELECT component, version FROM schema_versions").fetchall())

    # --- transactions and queries --------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.con.execute("BEGIN TRANSACTION")
        try:
            yield
        except BaseException:
            self.con.execute("ROLLBACK")
            raise
        else:
            self.con.execute("COMMIT")

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        return self.con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list[Any] | None = None) -> Any:
        rows = self.con.execute(sql, params or []).fetchall()  # fetch all: DuckDB wants results finished
        return rows[0][0] if rows else None

    def df(self, sql: str, params: list[Any] | None = None):  # -> pandas.DataFrame
        return self.con.execute(sql, params or []).df()

    # --- settings ------------------------------------------------------------------------------------------
    def get_setting(self, key: str, default: str | None = None) -> str | None:
        value = self.scalar("SELECT value FROM settings WHERE key = ?", [key])
        return default if value is None else value

    def set_setting(self, key: str, value: str) -> None:
        self.con.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", [key, value])

    @property
    def tokenizer_name(self) -> str:
        return self.get_setting("tokenizer", DEFAULT_TOKENIZER) or DEFAULT_TOKENIZER

    # --- corpora -------------------------------------------------------------------------------------------
    def ensure_corpus(self, name: str, role: str, source: str = "", fmt: str = "", description: str = "") -> None:
        if role not in ROLES:
            raise WorkspaceError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
        if not name.strip():
            raise WorkspaceError("a corpus needs a name")
        existing = self.scalar("SELECT role FROM corpora WHERE name = ?", [name])
        if existing is None:
            self.con.execute(
                "INSERT INTO corpora (name, role, source, format, description) VALUES (?, ?, ?, ?, ?)",
                [name, role, source, fmt, description],
            )
        elif existing != role:
            raise WorkspaceError(f"corpus {name!r} already exists with role {existing!r}, not {role!r}")

    def corpora(self) -> list[dict[str, Any]]:
        # Documents of files wholly ingested (a read-only reader of a workspace not migrated yet reads them all).
        source = "complete_documents" if self.scalar(
            "SELECT count(*) FROM duckdb_views() WHERE view_name = 'complete_documents'") else "documents"
        rows = self.con.execute(
            f"""
            SELECT c.name, c.role, c.format, c.source,
                   count(d.doc_id) AS documents,
                   coalesce(sum(d.char_count), 0) AS chars,
                   sum(d.token_count) AS tokens,
                   count(d.doc_id) - count(d.token_count) AS untokenised
            FROM corpora c LEFT JOIN {source} d ON d.corpus = c.name
            GROUP BY ALL ORDER BY c.role, c.name
            """
        ).fetchall()
        keys = ("name", "role", "format", "source", "documents", "chars", "tokens", "untokenised")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    # --- runs and decisions --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def run(self, step: str, params: dict[str, Any], *, supersede: bool = True) -> Iterator[Run]:
        """Record a step's execution. With `supersede`, earlier runs of the same step stop counting once
        this one succeeds (their decisions stay in the table, as history)."""
        run = Run(run_id=f"{step}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}", step=step,
                  params=params)
        self.con.execute(
            "INSERT INTO runs (run_id, step, params, versions, started_at, status, active, pid) "
            "VALUES (?, ?, ?, ?, current_timestamp, 'running', FALSE, ?)",
            [run.run_id, step, json.dumps(params, default=str),
             json.dumps({"code": code_version(), **library_versions()}), os.getpid()],
        )
        try:
            yield run
        except BaseException as exc:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            self.con.execute(
                "UPDATE runs SET status = 'failed', ended_at = current_timestamp, error = ?, counts = ? "
                "WHERE run_id = ?",
                [f"{type(exc).__name__}: {exc}"[:2000], json.dumps(run.counts, default=str), run.run_id],
            )
            raise
        with self.transaction():
            if supersede:
                self.con.execute("UPDATE runs SET active = FALSE WHERE step = ? AND run_id <> ?",
                                 [step, run.run_id])
            self.con.execute(
                "UPDATE runs SET status = 'ok', active = TRUE, ended_at = current_timestamp, counts = ?, "
                "params = ? WHERE run_id = ?",  # params again: a step may add what it resolved (a model path)
                [json.dumps(run.counts, default=str), json.dumps(run.params, default=str), run.run_id],
            )

    def record_decisions(self, run: Run, decisions: pa.Table) -> int:
        """Append decisions for `run`. `decisions` needs doc_id and verdict columns; reason, score, threshold
        and details (a JSON string) are optional."""
        n = decisions.num_rows
        if n == 0:
            return 0
        cols = set(decisions.column_names)
        missing = {"doc_id", "verdict"} - cols

        if missing:
            raise ValueError(f"decisions lack columns {sorted(missing)}")

        def col(name: str) -> str:
            return f"new.{name}" if name in cols else "NULL"

        self.con.register("new_decisions", decisions)
        try:
            self.con.execute(
                f"""
                INSERT INTO decisions (doc_id, step, run_id, verdict, reason, score, threshold, details)
                SELECT new.doc_id, ?, ?, new.verdict, {col('reason')}, {col('score')}, {col('threshold')},
                       {col('details')}
                FROM new_decisions new
                """,
                [run.step, run.run_id],
            )
        finally:
            self.con.unregister("new_decisions")
        return n

    def document_history(self, doc_id: str) -> list[dict[str, Any]]:
        """Every decision ever taken on a document, newest first, with whether it still counts."""
        rows = self.con.execute(
            """
            SELECT d.step, d.verdict, d.reason, d.score, d.threshold, d.details, d.run_id, r.active,
                   r.status, d.decided_at
            FROM decisions d JOIN runs r USING (run_id) WHERE d.doc_id = ? ORDER BY d.decided_at DESC
            """,
            [doc_id],
        ).fetchall()
        keys = ("step", "verdict", "reason", "score", "threshold", "details", "run_id", "active", "status",
                "decided_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def runs(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.con.execute(
            "SELECT run_id, step, status, active, started_at, ended_at, counts, params, error FROM runs "
            "ORDER BY started_at DESC LIMIT ?",
            [limit],
        ).fetchall()
        keys = ("run_id", "step", "status", "active", "started_at", "ended_at", "counts", "params", "error")
        return [dict(zip(keys, r, strict=True)) for r in rows]


# --- the run that counts ----------------------------------------------------------------------------------------
@dataclass
class ActiveRun:
    """A step's newest active, successful run: the one whose decisions and results count now."""
    run_id: str
    step: str
    params: dict[str, Any]
    counts: dict[str, Any]
    started_at: datetime | None = None
    ended_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "step": self.step, "params": self.params, "counts": self.counts,
                "started_at": self.started_at, "ended_at": self.ended_at}


def active_run(ws: Workspace, step: str) -> ActiveRun | None:
    """The newest active, successful run of `step` (as recorded in `runs.step`), or None if it never ran."""
    rows = ws.query("SELECT run_id, params, counts, started_at, ended_at FROM runs "
                    "WHERE step = ? AND active AND status = 'ok' ORDER BY started_at DESC LIMIT 1", [step])
    if not rows:
        return None
    run_id, params, counts, started_at, ended_at = rows[0]
    return ActiveRun(run_id, step, json.loads(params or "{}"), json.loads(counts or "{}"), started_at, ended_at)
