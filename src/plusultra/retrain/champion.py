"""The champion pointer: which finished run is in production.

A JSON file, written atomically (`plusultra.io.write_json_atomic`: a reader sees the old or the
new pointer, never a torn one)::

    {"run_dir": "/abs/path", "promoted_at": "2026-11-30T13:00:00+00:00",
     "metric": "val_sharpe", "value": 1.23, "db": "/abs/new.sqlite", "previous": {...} | null}

`previous` is the pointer it replaced, with that one's own `previous` set to null (one level
of history: the file stays small; every promotion is also in its retrain workdir's report).
The service (`plusultra-serve --champion FILE`) reloads when `run_dir` changes.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from plusultra.errors import DataError
from plusultra.io import write_json_atomic

KEYS = ("run_dir", "promoted_at", "metric", "value", "previous")


def default_pointer() -> Path:
    """`$PLUSULTRA_OUTPUT_DIR/champion.json`, else `outputs/champion.json` (absolute)."""
    return (Path(os.environ.get("PLUSULTRA_OUTPUT_DIR", "outputs")) / "champion.json").resolve()


def read_pointer(path: str | os.PathLike) -> dict | None:
    """The pointer at `path`, or None when there is no champion yet (no file).

    Raises:
        DataError: the file is not a JSON object with the pointer's keys.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        pointer = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"champion pointer {path}: not readable JSON ({exc})") from None
    if not isinstance(pointer, dict):
        raise DataError(f"champion pointer {path}: not a JSON object")
    missing = [k for k in KEYS if k not in pointer]
    if missing:
        raise DataError(f"champion pointer {path}: missing key(s) {missing}")
    return pointer


def write_pointer(
    path: str | os.PathLike,
    run_dir: str | os.PathLike,
    metric: str,
    value: float | None,
    previous: dict | None,
    db: str | None = None,
) -> dict:
    """Point `path` at `run_dir` atomically; returns the pointer written.

    Args:
        path: the pointer file.
        run_dir: the promoted run (made absolute).
        metric: the validation metric the promotion was decided on.
        value: the run's value of `metric` on the validation window it was compared on.
        previous: the pointer replaced (None: the first champion); stored without its own
            `previous` (set to None).
        db: the database the comparison ran on.
    """
    prev = None if previous is None else {**previous, "previous": None}
    pointer = {
        "run_dir": str(Path(run_dir).resolve()),
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "metric": metric,
        "value": value,
        "db": db,
        "previous": prev,
    }
    write_json_atomic(path, pointer)
    return pointer
