"""The studio's job history (floor 6): every job in an SQLite database (the standard library's ``sqlite3``), its
outputs as files in a folder per job beside it.

A row holds the model, its weights hash, the task, every setting as JSON, the seed, the state, the error sentence,
the times and the list of output files with what the page shows of them. A restart keeps everything; a job that
was queued or running when the server stopped is marked ``interrupted``. Deleting a job removes its row and folder.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["History", "JOB_STATES", "FINISHED"]

JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED = frozenset({"done", "failed", "cancelled", "interrupted"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    kind TEXT NOT NULL,
    task TEXT NOT NULL,
    settings TEXT NOT NULL,
    seed INTEGER,
    state TEXT NOT NULL,
    error TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    outputs TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_by_model ON jobs (model, created);
"""
_JSON_COLUMNS = ("settings", "outputs")


class History:
    """Jobs in ``folder/studio.sqlite3`` and their files in ``folder/jobs/<id>/``; safe to share between threads."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jobs_folder = self.folder / "jobs"
        self.jobs_folder.mkdir(exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.folder / "studio.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._cursor() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            db.execute(
                "UPDATE jobs SET state = 'interrupted', error = 'the server stopped before this job finished.', "
                "finished = ? WHERE state IN ('queued', 'running')",
                (time.time(),),
            )

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, job_id: str, model: str, model_hash: str, kind: str, task: str, settings: dict[str, Any]) -> None:
        """A new queued job."""
        seed = settings.get("seed")
        with self._cursor() as db:
            db.execute(
                "INSERT INTO jobs (id, model, model_hash, kind, task, settings, seed, state, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                (job_id, model, model_hash, kind, task, json.dumps(settings), seed, time.time()),
            )

    def update(self, job_id: str, **values: Any) -> None:
        """Set some columns of a job (JSON ones given as Python values)."""
        if not values:
            return
        for key in _JSON_COLUMNS:
            if key in values:
                values[key] = json.dumps(values[key])
        columns = ", ".join(f"{k} = ?" for k in values)
        with self._cursor() as db:
            db.execute(f"UPDATE jobs SET {columns} WHERE id = ?", (*values.values(), job_id))  # noqa: S608 - our names

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._cursor() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(row) if row is not None else None

    def list(self, model: str | None = None, limit: int = 50, before: float | None = None) -> list[dict[str, Any]]:
        """The newest jobs first (of one model, created before ``before`` when given)."""
        query, args = "SELECT * FROM jobs WHERE 1 = 1", []
        if model is not None:
            query, args = query + " AND model = ?", [*args, model]
        if before is not None:
            query, args = query + " AND created < ?", [*args, before]
        with self._cursor() as db:
            rows = db.execute(query + " ORDER BY created DESC LIMIT ?", (*args, limit)).fetchall()
        return [_row(r) for r in rows]

    def delete(self, job_id: str) -> bool:
        """Remove a job's row and its files; False if there was no such job."""
        with self._cursor() as db:
            gone = db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
        shutil.rmtree(self.job_folder(job_id), ignore_errors=True)
        return bool(gone)

    def job_folder(self, job_id: str) -> Path:
        return self.jobs_folder / job_id


def _row(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for key in _JSON_COLUMNS:
        out[key] = json.loads(out[key]) if out[key] else {}
    return out
