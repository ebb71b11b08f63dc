"""Catalogue rows: build one flat row per run and write it atomically as a parquet file.

A row is a plain ``dict[str, object]`` with, in this column order:

1. Core columns (always present, fixed types, see ``CORE_COLUMNS``): ``run_id``, ``run_dir``,
   ``status`` (``'completed'`` | ``'failed'`` | ``'interrupted'``: ended by SIGINT/SIGTERM |
   ``'pruned'``: stopped by its Optuna sweep's pruner, see ``plusultra.training.pruning``),
   ``error`` (``"ExceptionType: message"`` or null), ``started_at``/``finished_at`` (UTC
   timestamps), ``duration_s``, ``git_revision``, ``overrides`` (task overrides joined by one
   space), ``multirun``, ``job_num``, ``study`` (the study a multirun job belongs to, see
   ``plusultra.catalogue.sweeps``; null for a single run).
2. Group choices, one column per config group, named by Hydra's choice key verbatim:
   ``backbone``, a nested group ``a/b`` stays ``a/b``, a group placed with a package override
   ``backbone@enc`` stays ``backbone@enc``. ``hydra/...`` groups are skipped. The value is the
   chosen option name (null for an optional group left empty).
3. The resolved job config flattened to dotted names (``backbone.depth``,
   ``backbone._target_``); root scalars keep their bare name (``seed``, ``depth``). Lists and
   empty dicts are leaves stored as JSON strings.
4. Every entry of the run's ``metrics.json`` (``val_loss``, ``test_sharpe``, ``n_params`` ...).
5. Trial columns (``plusultra.catalogue.trials``): ``optuna.study``, ``optuna.trial``,
   ``optuna.params`` (replaced by the JSON ``{key: value}`` of the sampled keys), ``objective``
   and ``objectives``.

Collisions: choice keys never contain a dot and config leaves below the root always do, so a
choice can only collide with a root scalar of the same name. Precedence is
core > choices > metrics > config; the losing value is dropped and a warning is logged.

Stored types: ``None`` is SQL NULL, a float NaN (and a null metric, which means NaN) is stored
as a NULL DOUBLE so that aggregates skip it and ``ORDER BY`` puts it last. ints are BIGINT (an
int too large for 64 bits is stored as text), bools BOOLEAN, datetimes TIMESTAMPTZ (UTC), lists
and dicts JSON text, anything else ``str(value)``. DuckDB's ``union_by_name`` widens a column
that is an int in one run and a float in another to DOUBLE, and to VARCHAR when the types
disagree further.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import pathlib
import re
import secrets
import subprocess
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import Enum

import pyarrow as pa
import pyarrow.parquet as pq

from plusultra.catalogue.trials import trial_columns
from plusultra.execution import OPTIMISTIC
from plusultra.io import fsync_dir

log = logging.getLogger(__name__)

_TIMESTAMP = pa.timestamp("us", tz="UTC")

CORE_COLUMNS: dict[str, pa.DataType] = {
    "run_id": pa.string(),
    "run_dir": pa.string(),
    "status": pa.string(),
    "error": pa.string(),
    "started_at": _TIMESTAMP,
    "finished_at": _TIMESTAMP,
    "duration_s": pa.float64(),
    "git_revision": pa.string(),
    "overrides": pa.string(),
    "multirun": pa.bool_(),
    "job_num": pa.int64(),
    "study": pa.string(),
}
"""Columns every row has, with their parquet types."""

STATUSES = ("completed", "failed", "interrupted", "pruned")
RUN_ID_PATTERN = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
_SAFE_FILE_STEM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_GIT_TIMEOUT_S = 10


def _utc(ts: datetime) -> datetime:
    """Returns ``ts`` as an aware UTC datetime; a naive datetime is taken to be UTC already."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def new_run_id(now: datetime | None = None) -> str:
    """Makes a unique, time-sortable run id ``YYYYmmdd-HHMMSS-<8 hex>``.

    Args:
        now: The time to stamp (UTC; a naive datetime is taken as UTC). Defaults to now.

    Returns:
        The run id, e.g. ``20250101-120000-1a2b3c4d``.
    """
    stamp = _utc(now if now is not None else datetime.now(UTC))
    return f"{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}"


def _git(args: list[str], cwd: str | os.PathLike) -> str | None:
    """Runs a read-only git command; returns stripped stdout, or None if it failed."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            env=env,
            check=False,
        )
    except Exception:  # noqa: BLE001 - git missing, cwd missing, timeout: all mean "unknown"
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip()


def git_revision(cwd: str | os.PathLike) -> str:
    """Returns the commit checked out in ``cwd``, never raising.

    Args:
        cwd: A directory inside the working tree (for a Hydra job: ``hydra.runtime.cwd``).

    Returns:
        ``git rev-parse HEAD``, with a ``-dirty`` suffix when ``git status --porcelain`` lists
        anything (untracked files included); ``'unknown'`` outside a git repository, in a
        repository without commits, or when git is not installed. If the status cannot be read
        the bare revision is returned.
    """
    try:
        rev = _git(["rev-parse", "HEAD"], cwd)
        if not rev:
            return "unknown"
        status = _git(["status", "--porcelain"], cwd)
        return f"{rev}-dirty" if status else rev
    except Exception:  # noqa: BLE001 - documented to never raise
        return "unknown"


def _plain_leaf(value: object) -> object:
    """Maps a config leaf to a value parquet can store (see module docstring)."""
    if isinstance(value, Enum):
        return value.name
    if isinstance(value, list | tuple | dict):
        return json.dumps(value, default=_json_default)
    if value is None or isinstance(value, bool | int | float | str | datetime):
        return value
    return str(value)


def _json_default(value: object) -> object:
    if isinstance(value, Enum):
        return value.name
    return str(value)


def flatten_config(cfg: Mapping[str, object]) -> dict[str, object]:
    """Flattens a nested plain config to dotted column names.

    Args:
        cfg: A resolved config as plain nested dicts (``OmegaConf.to_container(resolve=True)``).

    Returns:
        ``{"backbone.depth": 4, "backbone._target_": "...", "seed": 0, ...}``. Nested dicts are
        walked; lists, tuples and empty dicts are leaves stored as JSON strings; keys are used as
        written (``_target_`` keeps its underscores, a non-string key is ``str()``-ed). Insertion
        order follows the config.
    """
    out: dict[str, object] = {}

    def walk(node: Mapping[object, object], prefix: str) -> None:
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                walk(value, f"{name}.")
            elif isinstance(value, Mapping):
                out[name] = json.dumps(dict(value))
            else:
                out[name] = _plain_leaf(value)

    walk(cfg, "")
    return out


def _metric_value(name: str, value: object) -> object:
    """A metric as stored: numbers as they are, null as NaN, anything else as text."""
    if value is None:
        return math.nan
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):  # a label such as `execution` or `test_information_ratio_benchmark`
        return value
    log.warning("catalogue: metric %r is not a number (%r); stored as text", name, value)
    return _plain_leaf(value) if isinstance(value, list | dict) else str(value)


def build_row(
    *,
    run_id: str,
    run_dir: str | os.PathLike | None,
    status: str,
    error: str | None,
    started_at: datetime,
    finished_at: datetime,
    git_rev: str,
    overrides: list[str],
    choices: Mapping[str, str | None],
    config: Mapping[str, object],
    metrics: Mapping[str, float | None],
    multirun: bool = False,
    job_num: int | None = None,
    study: str | None = None,
) -> dict[str, object]:
    """Builds one catalogue row (column rules in the module docstring).

    Args:
        run_id: From ``new_run_id``.
        run_dir: The run's output directory, or None when no job started.
        status: one of ``STATUSES``.
        error: ``"ExceptionType: message"`` for a failed or interrupted run, else None.
        started_at: Job start (UTC; naive datetimes are taken as UTC).
        finished_at: Job end (UTC).
        git_rev: From ``git_revision``.
        overrides: The job's task overrides (``hydra.overrides.task``).
        choices: ``hydra.runtime.choices``; ``hydra/...`` groups are skipped.
        config: The resolved job config as plain nested dicts, without the ``hydra`` node.
        metrics: The run's ``metrics.json``; a null value means NaN.
        multirun: Whether the job ran under ``-m``.
        job_num: The job's number in the sweep (None in run mode).
        study: The study of a multirun job (None in run mode).

    Returns:
        The row, core columns first, then choices, config and metrics.

    Raises:
        ValueError: If ``status`` is not one of ``STATUSES``.
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    started, finished = _utc(started_at), _utc(finished_at)
    row: dict[str, object] = {
        "run_id": run_id,
        "run_dir": None if run_dir is None else str(run_dir),
        "status": status,
        "error": error,
        "started_at": started,
        "finished_at": finished,
        "duration_s": (finished - started).total_seconds(),
        "git_revision": git_rev,
        "overrides": " ".join(str(o) for o in overrides),
        "multirun": bool(multirun),
        "job_num": None if job_num is None else int(job_num),
        "study": None if study is None else str(study),
    }

    def put(name: str, value: object, source: str) -> None:
        if name in row:
            log.warning("catalogue: %s %r collides with an existing column; dropped", source, name)
        else:
            row[name] = value

    for group in sorted(choices):
        if group == "hydra" or group.startswith("hydra/"):
            continue
        choice = choices[group]
        put(
            group,
            choice if choice is None or isinstance(choice, str) else _plain_leaf(choice),
            "group choice",
        )

    flat = flatten_config(config)
    metric_row = {str(k): _metric_value(str(k), v) for k, v in metrics.items()}
    for name, value in flat.items():
        if name in metric_row and name not in row:
            if value is not None:  # a null config key filled by the run (periods_per_year) is fine
                log.warning("catalogue: config key %r is shadowed by the metric of that name", name)
            continue
        put(name, value, "config key")
    for name, value in metric_row.items():
        put(name, value, "metric")
    trial = trial_columns(config, choices, metrics)
    if "optuna.params" in trial and "optuna.params" in row:
        row["optuna.params"] = trial.pop("optuna.params")  # the key list -> {key: value}
    for name, value in trial.items():
        put(name, value, "trial column")
    if isinstance(row.get("execution"), str):  # the fill timing, flagged when optimistic
        put("optimistic_execution", row["execution"] == OPTIMISTIC, "label")
    return row


def _arrow_column(name: str, value: object) -> tuple[pa.DataType, object]:
    """Chooses the parquet type of one cell and converts the value to it."""
    if name in CORE_COLUMNS:
        typ = CORE_COLUMNS[name]
        if value is not None and typ == _TIMESTAMP:
            value = _utc(value)  # type: ignore[arg-type]
        return typ, value
    if value is None:
        return pa.null(), None
    if isinstance(value, bool):
        return pa.bool_(), value
    if isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            return pa.int64(), value
        return pa.string(), str(value)
    if isinstance(value, float):
        return pa.float64(), None if math.isnan(value) else value
    if isinstance(value, datetime):
        return _TIMESTAMP, _utc(value)
    if isinstance(value, str):
        return pa.string(), value
    return pa.string(), _plain_leaf(value) if isinstance(value, list | tuple | dict) else str(value)


def row_to_table(row: Mapping[str, object]) -> pa.Table:
    """Converts a row to a one-row arrow table with explicit column types.

    Args:
        row: From ``build_row``.

    Returns:
        The table, columns in row order.
    """
    fields, arrays = [], []
    for name, value in row.items():
        typ, cell = _arrow_column(name, value)
        fields.append(pa.field(name, typ))
        arrays.append(pa.array([cell], type=typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_row(catalogue_dir: str | os.PathLike, row: Mapping[str, object]) -> pathlib.Path:
    """Writes ``row`` atomically to ``<catalogue_dir>/<run_id>.parquet``.

    The table goes first to ``.<run_id>.parquet.tmp`` in the same directory (a name the
    ``*.parquet`` glob never matches), is fsynced, then renamed over the final name with
    ``os.replace``. On any failure the temporary file is removed and nothing named
    ``*.parquet`` is left behind.

    Args:
        catalogue_dir: The catalogue directory; created if missing.
        row: From ``build_row``; must hold a ``run_id`` usable as a file name.

    Returns:
        The path of the written parquet file.

    Raises:
        ValueError: If the row has no usable ``run_id``.
    """
    run_id = row.get("run_id")
    if not isinstance(run_id, str) or not _SAFE_FILE_STEM.match(run_id):
        raise ValueError(f"row needs a run_id usable as a file name, got {run_id!r}")
    directory = pathlib.Path(catalogue_dir)
    directory.mkdir(parents=True, exist_ok=True)
    table = row_to_table(row)
    final = directory / f"{run_id}.parquet"
    tmp = directory / f".{run_id}.parquet.tmp"
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(directory)
    return final


def format_error(error: BaseException | str) -> str:
    """Formats an error as ``"ExceptionType: message"`` (a string is kept as it is)."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    return str(error)


def mark_recorded(error: object) -> None:
    """Sets ``error._plusultra_recorded = True`` so outer entry points do not record it twice."""
    if isinstance(error, BaseException):
        with contextlib.suppress(Exception):  # some exception types refuse attributes
            error._plusultra_recorded = True  # type: ignore[attr-defined]


def record_failed_invocation(
    catalogue_dir: str | os.PathLike,
    overrides: list[str],
    error: BaseException | str,
    cwd: str | os.PathLike = ".",
    *,
    started_at: datetime | None = None,
    multirun: bool = False,
    status: str = "failed",
    run_dir: str | os.PathLike | None = None,
) -> pathlib.Path:
    """Records an invocation that ended outside a job (e.g. config composition, a signal).

    The row has the ``status`` (``'failed'``, or ``'interrupted'`` for a signal), the error,
    ``run_dir`` (null when no job had started), and no choice, config or metric columns. An
    exception passed in is marked ``_plusultra_recorded``.

    Args:
        catalogue_dir: The catalogue directory.
        overrides: The command-line overrides as given.
        error: The exception (or a message).
        cwd: Where to read the git revision.
        started_at: When the invocation started; defaults to now.
        multirun: Whether it was a ``-m`` invocation.
        status: ``'failed'`` or ``'interrupted'``.
        run_dir: The run directory, when one had been created.

    Returns:
        The path of the written parquet file.
    """
    finished = datetime.now(UTC)
    started = _utc(started_at) if started_at is not None else finished
    row = build_row(
        run_id=new_run_id(started),
        run_dir=run_dir,
        status=status,
        error=format_error(error),
        started_at=started,
        finished_at=finished,
        git_rev=git_revision(cwd),
        overrides=list(overrides),
        choices={},
        config={},
        metrics={},
        multirun=multirun,
        job_num=None,
    )
    path = write_row(catalogue_dir, row)
    mark_recorded(error)
    return path
