"""Direct writes to an MLflow sqlite tracking store, for speed.

Only used when the database already exists and is at exactly the schema
revision the installed mlflow expects (so mlflow would not migrate it), and
has the columns written here; anything else falls back to ``MlflowClient``.
The rows are the ones ``SqlAlchemyStore.create_run``, ``log_batch``,
``set_tag`` and ``update_run_info`` write.  Tests check the result through
``MlflowClient``.

Each commit is an fsync or more, which is most of what a sweep's child costs,
so a run this process created takes two transactions when nothing else needs
one: its creation (with its params, its tags and the path of its live log) and
its end (with the final status, the failure reason and the tags set meanwhile).
Descriptive tags (any key outside ``mlexec.``, such as ``mlflow.project.env``)
set while the run goes on wait at most :data:`TAG_DELAY` seconds for the end
or for another write to share; a background thread writes them after that, and
whatever is left when the process exits is written then.  Tags under
``mlexec.`` (what mlexec itself reads to stop, repair or attach to a run) and
every status change are committed before the call returns.  One connection is
kept per store and reopened when the database file is replaced.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import re
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from mlexec_core.errors import TrackingError
from mlexec_core.supervisor import LIVE_TAG

_REV = re.compile(r"^(down_)?revision\s*(?::[^=]*)?=\s*['\"]([0-9a-f]+)['\"]", re.M)
_head_cache: list[str | None] = []
#: Seconds to wait for a sqlite store another process holds locked (default 10).
LOCK_TIMEOUT_VAR = "MLEXEC_SQLITE_LOCK_TIMEOUT"
#: Seconds a descriptive tag of a running run may wait to share a transaction (see the module's doc).
TAG_DELAY = 0.2
#: Tags with this prefix are committed at once: mlexec reads them to stop, repair and attach.
IMMEDIATE_PREFIX = "mlexec."
_ACTIVE = ("RUNNING", "SCHEDULED")


def lock_timeout() -> float:
    try:
        return max(0.0, float(os.environ.get(LOCK_TIMEOUT_VAR, "10")))
    except ValueError:
        return 10.0

_ADJECTIVES = ("amazing", "bold", "brave", "bright", "calm", "clever", "crisp", "eager", "gentle", "honest",
               "jolly", "keen", "lively", "merry", "nimble", "polite", "quiet", "rare", "shy", "smiling",
               "stately", "sunny", "swift", "tasty", "vaunted", "wise", "witty", "zealous")
_NOUNS = ("ant", "bass", "bear", "cat", "crab", "crow", "deer", "dove", "eel", "finch", "fox", "gnu", "hare",
          "hawk", "koi", "lark", "lynx", "mole", "moth", "newt", "owl", "ram", "seal", "shoat", "slug", "swan",
          "toad", "wasp", "wolf", "yak")


def random_run_name() -> str:
    """A name in MLflow's style (``smiling-shoat-959``)."""
    # os.urandom instead of the random module (and its hashlib import) on every run
    pick = int.from_bytes(os.urandom(8), "big")
    adjective, pick = _ADJECTIVES[pick % len(_ADJECTIVES)], pick // len(_ADJECTIVES)
    noun, pick = _NOUNS[pick % len(_NOUNS)], pick // len(_NOUNS)
    return f"{adjective}-{noun}-{pick % 1000}"


def installed_head_revision() -> str | None:
    """The newest schema revision of the installed mlflow, read from its files (no import)."""
    if _head_cache:
        return _head_cache[0]
    head = None
    spec = importlib.util.find_spec("mlflow")
    if spec and spec.submodule_search_locations:
        versions = Path(next(iter(spec.submodule_search_locations)), "store", "db_migrations", "versions")
        revisions, downs = set(), set()
        for file in versions.glob("*.py"):
            for down, rev in _REV.findall(file.read_text(encoding="utf-8", errors="replace")):
                (downs if down else revisions).add(rev)
        heads = revisions - downs
        head = heads.pop() if len(heads) == 1 else None
    _head_cache.append(head)
    return head


class SqliteStore:
    """A :class:`~mlexec_core.builtins.mlflow.store.TrackingStore` written directly.

    ``fallback()`` gives the same store through ``MlflowClient``, for what is not
    written here (a new experiment, artifacts that are not local files)."""

    kind = "sqlite"
    #: Nothing to open: the connection is made by the first transaction, in milliseconds.
    connected = True

    def __init__(self, uri: str, path: Path, workspace: bool, fallback: Callable[[], Any]) -> None:
        self.uri = uri
        self.path = path
        self.workspace = workspace
        self._fallback = fallback
        self._lock = threading.RLock()  # one connection, used by one thread at a time
        self._conn: sqlite3.Connection | None = None
        self._conn_key: tuple[int, int, int] | None = None
        #: Runs this process created, with their artifact URI.
        self._created: dict[str, str] = {}
        #: Descriptive tags not written yet, per run, and when each run's are due.
        self._pending: dict[str, dict[str, str]] = {}
        self._due: dict[str, float] = {}
        self._wake = threading.Condition(self._lock)
        self._flusher: threading.Thread | None = None
        self._at_exit = False

    def connect(self) -> None:
        """(Nothing to do: see :attr:`connected`.)"""

    @classmethod
    def open(cls, uri: str, fallback: Callable[[], Any]) -> "SqliteStore | None":
        if not uri.startswith("sqlite:///"):
            return None
        path = Path(uri[len("sqlite:///"):])
        if not path.is_file() or "?" in uri:
            return None
        head = installed_head_revision()
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=lock_timeout())
            try:
                (rev,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
                cols = {r[1] for r in db.execute("PRAGMA table_info(experiments)")}
                run_cols = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
            finally:
                db.close()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise TrackingError(f"the sqlite store {path} stayed locked by another writer for "
                                    f"{lock_timeout():g} s",
                                    hint=f"another process is writing to it; retry, or raise {LOCK_TIMEOUT_VAR}") from None
            return None
        except (sqlite3.Error, TypeError, ValueError):
            return None
        needed = {"run_uuid", "name", "source_type", "source_name", "entry_point_name", "user_id", "status",
                  "start_time", "end_time", "source_version", "lifecycle_stage", "artifact_uri", "experiment_id",
                  "deleted_time"}
        if head is None or rev != head or not needed <= run_cols:
            return None
        return cls(uri, path, "workspace" in cols, fallback)

    def _connection(self, wait: float) -> sqlite3.Connection:
        """The kept connection; a new one when the file was replaced or this is a forked child."""
        try:
            st = os.stat(self.path)
            key = (st.st_dev, st.st_ino, os.getpid())
        except OSError:
            key = None
        if self._conn is None or key != self._conn_key:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
            self._conn = None
            db = sqlite3.connect(self.path, timeout=wait, check_same_thread=False)
            db.execute("PRAGMA foreign_keys = ON")
            self._conn, self._conn_key = db, key
        return self._conn

    @contextlib.contextmanager
    def _db(self, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction; a store locked by another writer is waited for ``lock_timeout()`` s.
        ``immediate`` for a transaction that reads before it writes: it takes the write lock at
        its start, where sqlite waits for it, instead of failing at once with SQLITE_BUSY when
        another writer holds the lock by the time it writes."""
        wait = lock_timeout()
        with self._lock:
            try:
                db = self._connection(wait)
                with db:  # commits, or rolls back on any exception (an interrupt too)
                    if immediate:
                        db.execute("BEGIN IMMEDIATE")
                    yield db
            except sqlite3.OperationalError as exc:
                self._drop()
                if "locked" in str(exc) or "busy" in str(exc):
                    raise TrackingError(f"the sqlite store {self.path} stayed locked by another writer for {wait:g} s",
                                        hint=f"another process is writing to it; retry, or raise {LOCK_TIMEOUT_VAR}") from None
                raise TrackingError(f"tracking store {self.uri} refused: {exc}") from None
            except sqlite3.Error as exc:
                self._drop()
                raise TrackingError(f"tracking store {self.uri} refused: {exc}") from None

    def _drop(self) -> None:
        """Forget the connection after an error: the next transaction opens a new one."""
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
        self._conn = self._conn_key = None

    def experiment_id(self, name: str | None, experiment_id: str | None) -> str:
        with self._db() as db:
            ws = " AND workspace = 'default'" if self.workspace else ""
            if experiment_id is not None:
                row = db.execute("SELECT experiment_id, name, lifecycle_stage FROM experiments "
                                 f"WHERE experiment_id = ?{ws}", (experiment_id,)).fetchone()
                if row is None:
                    raise TrackingError(f"no experiment with id {experiment_id!r} in {self.uri}",
                                        hint="check --experiment-id, or use --experiment-name to create one")
            else:
                row = db.execute("SELECT experiment_id, name, lifecycle_stage FROM experiments "
                                 f"WHERE name = ?{ws}", (name or "Default",)).fetchone()
                if row is None:
                    # New experiments take MLflow's own rules for artifact locations.
                    return self._fallback().experiment_id(name, None)
        if row[2] != "active":
            raise TrackingError(f"experiment {row[1]!r} ({row[0]}) is deleted",
                                hint="restore it with `mlflow experiments restore`, or pick another")
        return str(row[0])

    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
                   params: Mapping[str, str], run_id: str | None = None) -> tuple[str, str]:
        """One transaction: the run, its tags and its params (``run_id``: the id to give it)."""
        run_id = run_id or uuid.uuid4().hex
        run_name = run_name or tags.get("mlflow.runName") or random_run_name()
        tags = {**tags, "mlflow.runName": run_name}
        with self._db(immediate=True) as db:
            (location,) = db.execute("SELECT artifact_location FROM experiments WHERE experiment_id = ?",
                                     (int(experiment_id),)).fetchone()
            artifact_uri = f"{location.rstrip('/')}/{run_id}/artifacts"
            db.execute(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status,"
                " start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id, deleted_time)"
                " VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, '', 'active', ?, ?, NULL)",
                (run_id, run_name, tags.get("mlflow.user", "unknown"), _now(), artifact_uri, int(experiment_id)),
            )
            db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                           [(k, v, run_id) for k, v in tags.items()])
            db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                           [(k, v, run_id) for k, v in params.items()])
        self._created[run_id] = artifact_uri
        return run_id, run_name

    def attach(self, run_id: str, params: Mapping[str, str]) -> tuple[str, str]:
        with self._db(immediate=True) as db:
            row = db.execute("SELECT experiment_id, name FROM runs WHERE run_uuid = ? AND lifecycle_stage = 'active'",
                             (run_id,)).fetchone()
            if row is None:
                raise TrackingError(f"no run with id {run_id!r} in {self.uri}", hint="check --run-id")
            existing = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())
            for key, value in params.items():
                if key in existing and existing[key] != value:
                    raise TrackingError(f"run {run_id} already has param {key}={existing[key]!r}, not {value!r}",
                                        hint="MLflow params cannot change; start a new run")
            db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)",
                           [(k, v, run_id) for k, v in params.items() if k not in existing])
            db.execute("UPDATE runs SET status = 'RUNNING' WHERE run_uuid = ?", (run_id,))
        return str(row[0]), row[1]

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        """Descriptive tags of a run this process created wait (up to :data:`TAG_DELAY` s) to share
        a transaction; all others, with what waits for the same run, are committed now."""
        if run_id in self._created and not any(k.startswith(IMMEDIATE_PREFIX) or k == "mlflow.runName"
                                               for k in tags):
            with self._lock:
                self._pending.setdefault(run_id, {}).update(tags)
                self._due.setdefault(run_id, time.monotonic() + TAG_DELAY)
                self._start_flusher()
                self._wake.notify()
            return
        with self._taking(run_id) as waiting, self._db() as db:
            self._write_tags(db, run_id, {**waiting, **tags})

    @contextlib.contextmanager
    def _taking(self, run_id: str) -> Iterator[dict[str, str]]:
        """The waiting tags of ``run_id``, for a transaction to write; put back if it fails."""
        with self._lock:
            self._due.pop(run_id, None)
            taken = self._pending.pop(run_id, {})
        try:
            yield taken
        except BaseException:
            if taken:
                with self._lock:
                    self._pending[run_id] = {**taken, **self._pending.get(run_id, {})}
                    self._due.setdefault(run_id, time.monotonic() + TAG_DELAY)
            raise

    @staticmethod
    def _write_tags(db: sqlite3.Connection, run_id: str, tags: Mapping[str, str]) -> None:
        if not tags:
            return
        db.executemany("INSERT OR REPLACE INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                       [(k, v, run_id) for k, v in tags.items()])
        if "mlflow.runName" in tags:
            db.execute("UPDATE runs SET name = ? WHERE run_uuid = ?", (tags["mlflow.runName"], run_id))

    def _start_flusher(self) -> None:
        if self._flusher is None or not self._flusher.is_alive():
            if not self._at_exit:
                self._at_exit = True
                atexit.register(self._flush_at_exit)
            self._flusher = threading.Thread(target=self._flush_loop, name="mlexec-sqlite-tags", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        with self._lock:
            while True:
                if not self._due:
                    if not self._wake.wait(30):  # idle: end the thread, the next tag starts another
                        if not self._due:
                            self._flusher = None
                            return
                    continue
                delay = min(self._due.values()) - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                now = time.monotonic()
                due = [run_id for run_id, at in self._due.items() if at <= now]
                with contextlib.suppress(Exception):  # the store is down: the run's end tries again
                    self.flush(due)

    def _flush_at_exit(self) -> None:
        with contextlib.suppress(Exception):  # the store is gone: nothing more can be done
            self.flush()

    def flush(self, run_ids=None) -> None:
        """Write the waiting tags (of ``run_ids``, or all) now."""
        with self._lock:
            run_ids = list(self._pending) if run_ids is None else [r for r in run_ids if r in self._pending]
            if not run_ids:
                return
            with contextlib.ExitStack() as stack:
                taken = {run_id: stack.enter_context(self._taking(run_id)) for run_id in run_ids}
                with self._db() as db:
                    for run_id, tags in taken.items():
                        self._write_tags(db, run_id, tags)

    def status(self, run_id: str) -> str:
        with self._db() as db:
            row = db.execute("SELECT status FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
        return row[0] if row else "RUNNING"

    def set_status(self, run_id: str, status: str, reopen: bool = False) -> None:
        """Move a run between RUNNING and SCHEDULED; a run that has ended stays as it is, unless
        ``reopen`` (its job is started again into it: the run goes on, its end time cleared)."""
        with self._taking(run_id) as waiting, self._db() as db:
            if reopen:
                db.execute("UPDATE runs SET status = ?, end_time = NULL WHERE run_uuid = ?", (status, run_id))
            else:
                db.execute(f"UPDATE runs SET status = ? WHERE run_uuid = ? AND status IN {_ACTIVE}",
                           (status, run_id))
            self._write_tags(db, run_id, waiting)

    def end_run(self, run_id: str, status: str, end_time: int | None = None) -> None:
        """End a run whatever its status (``finish`` is the compare-and-set)."""
        self.finish(run_id, status, {}, end_time=end_time, force=True)

    def finish(self, run_id: str, status: str, tags: Mapping[str, str], end_time: int | None = None,
               force: bool = False, also: tuple[str, ...] = ()) -> bool:
        """End a run in one transaction, with ``tags``; unless ``force``, only if it is still RUNNING
        or SCHEDULED (the job may have ended it itself, or its mlexec did before a repair looked:
        that stands), or has a status in ``also``.  The check and the write are one conditional UPDATE, so no other writer can
        come between them.  The waiting tags are written and the supervisor record removed either
        way.  Whether it was ended here."""
        with self._taking(run_id) as waiting, self._db() as db:
            only_active = "" if force else f" AND status IN {_ACTIVE + tuple(also)}"
            ended = db.execute(f"UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?{only_active}",
                               (status, end_time or _now(), run_id)).rowcount > 0
            self._write_tags(db, run_id, {**waiting, **tags} if ended else waiting)
            db.execute("DELETE FROM tags WHERE key = ? AND run_uuid = ?", (LIVE_TAG, run_id))
        self._created.pop(run_id, None)
        return ended

    def live_runs(self) -> list[tuple[str, str, dict[str, str]]]:
        """Runs still carrying a supervisor record: one lookup on the tags' primary key."""
        with self._db() as db:
            rows = db.execute(
                "SELECT t.run_uuid, r.status, t.value FROM tags t JOIN runs r ON r.run_uuid = t.run_uuid"
                " WHERE t.key = ?", (LIVE_TAG,)).fetchall()
            found = []
            for run_id, status, live in rows:
                tags = {LIVE_TAG: live}
                if status in ("RUNNING", "SCHEDULED"):
                    tags.update(db.execute(
                        "SELECT key, value FROM tags WHERE run_uuid = ? AND key LIKE 'mlexec.%'",
                        (run_id,)).fetchall())
                found.append((run_id, status, tags))
        return found

    def run_info(self, run_id: str) -> tuple[str, dict[str, str], dict[str, str]]:
        """``(status, tags, {"artifact_uri": ...})`` of a run; :class:`TrackingError` if there is none."""
        with self._db() as db:
            row = db.execute("SELECT status, artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            if row is None:
                raise TrackingError(f"no run with id {run_id!r} in {self.uri}",
                                    hint="check the id (the `=== Run ID ... ===` line of mlexec run)")
            tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)).fetchall())
        with self._lock:
            tags.update(self._pending.get(run_id, {}))
        return row[0], tags, {"artifact_uri": row[1] or ""}

    def download_output(self, run_id: str) -> bytes | None:
        """The ``mlexec/output.log`` artifact, read in place when the artifacts are local files."""
        return self.read_artifact(run_id, "mlexec/output.log")

    def read_artifact(self, run_id: str, artifact_path: str) -> bytes | None:
        """One artifact of the run (``None``: it has none of that name), read in place when the
        artifacts are local files."""
        _, _, info = self.run_info(run_id)
        location = info["artifact_uri"]
        if location.startswith("file://"):
            location = location[len("file://"):]
        if location.startswith("/"):
            try:
                return Path(location, artifact_path).read_bytes()
            except FileNotFoundError:
                return None
            except OSError as exc:
                raise TrackingError(f"cannot read {artifact_path} of run {run_id}: {exc}") from None
        return self._fallback().read_artifact(run_id, artifact_path)

    def run_params(self, run_id: str) -> dict[str, str]:
        with self._db() as db:
            return dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)).fetchall())

    def clear_live(self, run_id: str) -> None:
        with self._db() as db:
            db.execute("DELETE FROM tags WHERE key = ? AND run_uuid = ?", (LIVE_TAG, run_id))

    def put_artifact(self, run_id: str, data: bytes, artifact_path: str) -> None:
        """Write ``data`` into the run's artifacts when they are on this machine; else through MLflow."""
        root = self._artifact_root(run_id)
        if root is None:
            self._fallback().put_artifact(run_id, data, artifact_path)
            return
        target = root / artifact_path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def _artifact_root(self, run_id: str) -> Path | None:
        uri = self._created.get(run_id)
        if uri is None:
            with self._db() as db:
                row = db.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            uri = row[0] if row else None
        return _local_path(uri) if uri else None

    def log_artifact(self, run_id: str, local_path: Path, artifact_path: str) -> None:
        """Copy ``local_path`` into the run's artifacts when they are on this machine; else through MLflow."""
        uri = self._created.get(run_id)
        if uri is None:
            with self._db() as db:
                row = db.execute("SELECT artifact_uri FROM runs WHERE run_uuid = ?", (run_id,)).fetchone()
            uri = row[0] if row else None
        root = _local_path(uri) if uri else None
        if root is None:
            self._fallback().log_artifact(run_id, local_path, artifact_path)
            return
        target = root / artifact_path
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_file(local_path, target)


def _copy_file(source: str | os.PathLike[str], target: Path) -> None:
    """``shutil.copyfile`` without importing shutil (bz2, lzma) at the end of every run."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)


def _local_path(uri: str) -> Path | None:
    """The directory an artifact URI names on this machine, or ``None`` (a remote store)."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            return None
        return Path(unquote(parsed.path))
    if uri.startswith("/"):
        return Path(uri)
    return None


def _now() -> int:
    return int(time.time() * 1000)
