"""Where a study lives: a SQLite file by default, any SQLAlchemy URL, or a journal file."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import sqlalchemy.exc
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage

JOURNAL = "journal:///"


def default_study_name(job_name: str, lines: list[str]) -> str:
    """``<job name>-<8 hex>`` from the search space and the command's overrides, sorted.

    The same command gives the same name, so a rerun resumes; ``hydra.sweeper.n_trials`` and
    the other sweeper keys are not task overrides and do not change it.
    """
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()[:8]
    return f"{job_name}-{digest}"


def resolve_storage(storage: str | None, storage_dir: str, study_name: str) -> str:
    """The storage URL: ``storage`` as given, or ``sqlite:///<storage_dir>/<study_name>.db``."""
    if storage is not None:
        return str(storage)
    path = Path(storage_dir) / f"{study_name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def open_storage(url: str, attempts: int = 5) -> BaseStorage:
    """The storage behind ``url``, for ``optuna.create_study(storage=...)``.

    ``journal:///<path>`` (relative; ``journal:////abs`` absolute, as for SQLite) opens
    an append-only JournalStorage file (file locks; safe on NFS where SQLite is not);
    anything else is Optuna's RDBStorage on a SQLAlchemy URL (SQLite waits up to 30 s for a
    lock held by another process). Processes started together race to create the tables
    (``table ... already exists``): opening is retried ``attempts`` times.
    """
    if url.startswith(JOURNAL):
        path = Path(url[len(JOURNAL) :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    kwargs = {}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 30}}
    for attempt in range(1, attempts):
        try:
            return RDBStorage(url, engine_kwargs=kwargs)
        except sqlalchemy.exc.SQLAlchemyError:
            time.sleep(0.2 * attempt)  # the other process finishes creating the schema
    return RDBStorage(url, engine_kwargs=kwargs)  # the last attempt raises its own error


def describe(url: str) -> str:
    """The URL without a password, for the log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
