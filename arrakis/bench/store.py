"""The experiment store: every logged run of every experiment, in one SQLite file.

The bench's ``log_experiment`` writes here; ``list_versions``, ``get_version``,
``experiments`` and ``export`` read back. The design follows from one promise: a run that
finished is never lost, also when several processes log into the same ``save_dir`` and
when a process dies half-way through writing.

- **One file, created lazily.** ``save_dir/experiments.sqlite`` (stdlib ``sqlite3``) is made
  on the first write; building a store, or reading an empty one, creates nothing.
- **One transaction per run.** Each run is a single row, written between ``BEGIN IMMEDIATE``
  and ``COMMIT``. SQLite makes the transaction atomic: a process killed (even with SIGKILL)
  before ``COMMIT`` returns leaves no trace of its row, and every run committed before
  stays. ``IMMEDIATE`` takes the write lock up front, so two writers queue at ``BEGIN``
  instead of failing when a reader tries to become a writer.
- **WAL journal, busy timeout, FULL sync.** In write-ahead-log mode readers never block the
  one writer nor the writer the readers; a writer that finds the lock taken waits up to
  ``timeout`` seconds (the busy timeout) rather than failing. ``synchronous=FULL`` syncs the
  log at every commit, so a committed run also survives a power cut, not only a crash.
  A connection is opened per operation: nothing is shared across threads or forked
  processes, and no file stays open between runs.
- **A version hash per run.** ``version = sha256(canonical JSON of {experiment, source,
  args, result, timestamp, run_id})`` in hex. As in the original, the time makes two runs
  of the same code on the same arguments two versions; a random ``run_id`` (stored with
  the run) keeps them apart also when two processes finish in the same microsecond. Since
  every input of the hash is stored, ``Run.verify()`` can recompute it. Lookups accept a
  unique prefix of at least ``MIN_PREFIX`` hex digits.

Values become JSON with ``to_json``: results of the library through their ``to_dict()``,
tensors and arrays through ``tolist()``, lists, tuples, sets, dicts, dataclasses, numbers
and strings as themselves; anything else is recorded as ``{"__repr__": repr(value)}``, so a
reader can tell a stand-in from data. Results come back in that JSON form (a
``HeadSelection`` reads back as its ``to_dict()``; ``HeadSelection.from_dict`` rebuilds it).

The module itself needs only the standard library: it recognises tensors and arrays
without importing torch or numpy (if torch is not loaded, no value can be a tensor).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DB_NAME = "experiments.sqlite"
SCHEMA_VERSION = 1  # stored as PRAGMA user_version; a newer file is refused, not misread
MIN_PREFIX = 6  # hex digits a version prefix needs: 16**6 = 16.7M, ambiguous only by bad luck
REPR_KEY = "__repr__"  # marks a value that could not be serialised and was recorded as its repr

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order: oldest first
    experiment TEXT NOT NULL,
    version TEXT NOT NULL UNIQUE,          -- sha256 hex, see version_hash
    args TEXT NOT NULL,                    -- JSON object: parameter name -> value
    result TEXT NOT NULL,                  -- JSON
    source TEXT,                           -- the function's source, NULL where unavailable
    timestamp TEXT NOT NULL,               -- ISO 8601, UTC, when the run finished
    run_id TEXT NOT NULL                   -- random, hashed: simultaneous runs differ
)""",
    "CREATE INDEX IF NOT EXISTS runs_by_experiment ON runs (experiment, id)",
)


class ExperimentLookupError(KeyError):
    """A run that is not in the store. A ``KeyError`` whose message reads as plain text."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class VersionNotFoundError(ExperimentLookupError):
    """No run of that experiment has that version (or the experiment has no runs)."""


class AmbiguousVersionError(ExperimentLookupError):
    """A version prefix that matches more than one run of the experiment."""


@dataclass(frozen=True)
class Run:
    """One logged run, as read back from the store (args and result in their JSON form)."""

    name: str
    version: str
    args: dict[str, Any]
    result: Any
    source: str | None
    timestamp: str
    run_id: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def verify(self) -> bool:
        """Whether the version hash still matches the stored source, args, result and time."""
        return self.version == version_hash(self.name, self.source, self.args, self.result, self.timestamp, self.run_id)


def to_json(value: Any) -> Any:
    """``value`` as JSON-ready data (see the module docstring for the rules)."""
    return _to_json(value, set())


def _to_json(value: Any, path: set[int]) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)  # also IntEnum and friends
    if isinstance(value, float):
        return float(value)
    if id(value) in path:  # a container that holds itself
        return {REPR_KEY: f"<cycle: {type(value).__name__}>"}
    path = path | {id(value)}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):  # results of the library, before tensors:
        return _to_json(to_dict(), path)  # CompositionScores is a tensor whose to_dict keeps its mode
    torch = sys.modules.get("torch")  # looked up, not imported: no torch loaded, no tensors to meet
    if torch is not None and isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # arrays and numpy scalars
        return value.tolist()
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _to_json(v, path) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v, path) for v in value]
    if isinstance(value, set | frozenset):
        items = [_to_json(v, path) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name), path) for f in dataclasses.fields(value)}
    return {REPR_KEY: repr(value)}


def _canonical(value: Any) -> str:
    """The JSON text the hash is taken over: sorted keys, no spaces (stable across round trips)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def version_hash(name: str, source: str | None, args: Any, result: Any, timestamp: str, run_id: str) -> str:
    """sha256 (hex) over a run's experiment name, source, JSON args and result, time and run id."""
    payload = {"experiment": name, "source": source, "args": args, "result": result}
    payload |= {"timestamp": timestamp, "run_id": run_id}
    return hashlib.sha256(_canonical(payload).encode()).hexdigest()


class ExperimentStore:
    """Logged runs under ``save_dir`` (one SQLite file, made on the first ``log``).

    Safe to use from several processes at once on one ``save_dir``; ``timeout`` is how long,
    in seconds, a writer waits for another one to finish before giving up.
    """

    def __init__(self, save_dir: str | Path, *, timeout: float = 60.0) -> None:
        self.save_dir = Path(save_dir)
        self.path = self.save_dir / DB_NAME
        self.timeout = float(timeout)
        self._ready = False  # the schema is known to exist

    def __repr__(self) -> str:
        return f"ExperimentStore({str(self.path)!r})"

    # -- writing -----------------------------------------------------------------------------

    def log(self, name: str, args: Mapping[str, Any], result: Any, source: str | None = None) -> Run:
        """Record one finished run in a single transaction; returns it as stored."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"an experiment name must be a non-empty string, got {name!r}")
        args_json, result_json = to_json(dict(args)), to_json(result)
        timestamp = datetime.now(UTC).isoformat(timespec="microseconds")
        run_id = uuid.uuid4().hex
        version = version_hash(name, source, args_json, result_json, timestamp, run_id)
        row = (name, version, json.dumps(args_json), json.dumps(result_json), source, timestamp, run_id)
        with self._connect(write=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "INSERT INTO runs (experiment, version, args, result, source, timestamp, run_id)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return Run(name, version, args_json, result_json, source, timestamp, run_id)

    # -- reading -----------------------------------------------------------------------------

    def list_versions(self, name: str) -> list[str]:
        """The version hash of every run of ``name``, oldest first ([] if it has none)."""
        with self._connect() as conn:
            if conn is None:
                return []
            rows = conn.execute("SELECT version FROM runs WHERE experiment = ? ORDER BY id", (name,))
            return [version for (version,) in rows]

    def runs(self, name: str) -> list[Run]:
        """Every run of ``name``, oldest first ([] if it has none)."""
        with self._connect() as conn:
            if conn is None:
                return []
            rows = conn.execute(f"SELECT {_COLUMNS} FROM runs WHERE experiment = ? ORDER BY id", (name,))
            return [_run(row) for row in rows]

    def experiments(self) -> dict[str, int]:
        """Each experiment's name and how many runs it has, in order of its first run."""
        with self._connect() as conn:
            if conn is None:
                return {}
            rows = conn.execute("SELECT experiment, COUNT(*) FROM runs GROUP BY experiment ORDER BY MIN(id)")
            return dict(rows.fetchall())

    def get_version(self, name: str, version: str) -> Run:
        """The run of ``name`` whose version is ``version`` or starts with it (>= 6 hex digits).

        Raises ``VersionNotFoundError`` or ``AmbiguousVersionError`` (both ``KeyError``) with
        what the store does hold, and ``ValueError`` for a prefix that is too short or not hex.
        """
        if name not in self.experiments():  # the experiment first: a hash of no experiment is no question
            raise VersionNotFoundError(self._not_found(name))
        if not isinstance(version, str) or not re.fullmatch(r"[0-9a-fA-F]+", version):
            raise ValueError(f"a version is a hex string (see list_versions({name!r})), got {version!r}")
        if len(version) < MIN_PREFIX:
            raise ValueError(f"a version prefix needs at least {MIN_PREFIX} hex digits, got {version!r}")
        version = version.lower()
        with self._connect() as conn:
            # GLOB is case-sensitive and hex has none of its wildcards, so this is a prefix match
            query = f"SELECT {_COLUMNS} FROM runs WHERE experiment = ? AND version GLOB ? ORDER BY id LIMIT 5"
            rows = [] if conn is None else conn.execute(query, (name, version + "*")).fetchall()
            if len(rows) == 1:
                return _run(rows[0])
            if len(rows) > 1:
                shown = ", ".join(row[1][: len(version) + 4] for row in rows)
                raise AmbiguousVersionError(
                    f"version prefix {version!r} matches {'5 or more' if len(rows) == 5 else len(rows)} runs "
                    f"of experiment {name!r} ({shown}...); give more digits"
                )
        raise VersionNotFoundError(self._not_found(name, version))

    def _not_found(self, name: str, version: str | None = None) -> str:
        """What the store holds instead: the experiments, or how many versions ``name`` has."""
        counts = self.experiments()
        if name not in counts:
            known = ", ".join(repr(n) for n in counts) or "none yet"
            return f"experiment {name!r} has no recorded runs in {self.path} (recorded experiments: {known})"
        n = counts[name]
        message = (
            f"no version {version!r} of experiment {name!r}: it has {n} recorded version{'s' * (n != 1)} "
            f"(list them with list_versions({name!r}))"
        )
        with self._connect() as conn:
            assert conn is not None
            query = "SELECT experiment FROM runs WHERE version GLOB ? LIMIT 1"
            other = conn.execute(query, (f"{version}*",)).fetchone()
        if other is not None:
            message += f"; {version!r} is a version of experiment {other[0]!r}"
        return message

    def export(self, name: str, path: str | Path) -> int:
        """Write every run of ``name`` to ``path`` as JSON lines (one ``Run.to_dict()`` a line).

        Writes a temporary file beside ``path`` and renames it, so ``path`` is never half
        written. Returns how many runs were written; an experiment without runs is an error.
        """
        runs = self.runs(name)
        if not runs:
            raise VersionNotFoundError(self._not_found(name))
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("w", encoding="utf-8") as f:
                for run in runs:
                    f.write(json.dumps(run.to_dict(), ensure_ascii=False) + "\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return len(runs)

    # -- connections -------------------------------------------------------------------------

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection | None]:
        """A fresh connection, closed afterwards; None for a read when there is no store yet.

        ``isolation_level=None`` leaves transactions to us (``BEGIN IMMEDIATE``/``COMMIT``)
        instead of the sqlite3 module's implicit ones.
        """
        if not write and not self.path.exists():
            yield None
            return
        if write:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self._ready = self._ready and self.path.exists()  # someone may have deleted the file
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        try:
            if write and not self._ready:
                self._create_schema(conn)
            if not write and not self._has_schema(conn):  # another process is creating it right now
                yield None
                return
            conn.execute("PRAGMA synchronous = FULL")
            yield conn
        finally:
            conn.close()

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        # Switching to WAL needs a moment alone with the file; several processes creating the
        # store at once may find it busy beyond the busy timeout's reach, so retry until ours.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                    raise sqlite3.OperationalError("database is locked (journal mode not yet WAL)")
                conn.execute("BEGIN IMMEDIATE")
                break
            except sqlite3.OperationalError as error:
                if ("locked" not in str(error) and "busy" not in str(error)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        try:
            found = conn.execute("PRAGMA user_version").fetchone()[0]
            if found > SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path} was written by a newer arrakis (store schema {found}, this one reads "
                    f"{SCHEMA_VERSION}); upgrade arrakis to use it"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._ready = True

    @staticmethod
    def _has_schema(conn: sqlite3.Connection) -> bool:
        return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone() is not None


_COLUMNS = "experiment, version, args, result, source, timestamp, run_id"


def _run(row: tuple) -> Run:
    name, version, args, result, source, timestamp, run_id = row
    return Run(name, version, json.loads(args), json.loads(result), source, timestamp, run_id)
