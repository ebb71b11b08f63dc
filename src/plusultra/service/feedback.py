"""The analyst-feedback store: verdicts on a run's traded positions, in SQLite.

An analyst approves, vetoes or flags one decision of a run: the position the run took in one
symbol at one decision bar (a row of the run's ``predictions.parquet``), with a rationale and an
author. ``plusultra-review`` (`plusultra.cli.review`) and the service's ``/reviews`` endpoints
(`plusultra.service.review_api`) write here; the RL stage reads the vetoes and approvals back as
an offline dataset (`plusultra.rl.feedback`). Nothing here imports the web stack.

Storage. One SQLite file (default ``$PLUSULTRA_OUTPUT_DIR/reviews.sqlite``, else
``outputs/reviews.sqlite``), its schema created on first use, in WAL mode (readers never block
the writer), one short connection per operation (safe from any thread or process). The table
``reviews`` enforces its own constraints (verdict in approve/veto/flag, non-empty run id, symbol
and author, a rationale for every veto, a finite position), so a row written by any other client
is as clean as ours; ``store_meta`` holds the schema version.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from plusultra.errors import DataError
from plusultra.io import write_parquet_atomic, write_text_atomic

VERDICTS = ("approve", "veto", "flag")
SCHEMA_VERSION = 1
DB_NAME = "reviews.sqlite"
EXPORT_FORMATS = ("csv", "parquet", "json")
COLUMNS = (
    "id", "run_id", "run_dir", "symbol", "timestamp", "position", "verdict", "rationale",
    "author", "created_at",
)  # fmt: skip
SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL CHECK (length(trim(run_id)) > 0),
    run_dir TEXT,
    symbol TEXT NOT NULL CHECK (length(trim(symbol)) > 0),
    timestamp TEXT NOT NULL CHECK (length(timestamp) >= 10),
    position REAL CHECK (position IS NULL OR position BETWEEN -1e300 AND 1e300),
    verdict TEXT NOT NULL CHECK (verdict IN ('approve', 'veto', 'flag')),
    rationale TEXT NOT NULL DEFAULT '',
    author TEXT NOT NULL CHECK (length(trim(author)) > 0),
    created_at TEXT NOT NULL,
    CHECK (verdict != 'veto' OR length(trim(rationale)) > 0)
);
CREATE INDEX IF NOT EXISTS reviews_run ON reviews (run_id);
CREATE INDEX IF NOT EXISTS reviews_symbol_time ON reviews (symbol, timestamp);
CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO store_meta VALUES ('schema_version', '1')
"""


def default_db() -> Path:
    """``$PLUSULTRA_OUTPUT_DIR/reviews.sqlite`` if that variable is set, else
    ``outputs/reviews.sqlite``."""
    return Path(os.environ.get("PLUSULTRA_OUTPUT_DIR") or "outputs") / DB_NAME


def canonical_timestamp(value, where: str = "timestamp") -> str:
    """An ISO-8601 timestamp as stored: tz-aware values converted to UTC and made naive, then
    ``YYYY-MM-DDTHH:MM:SS`` (the form ``pd.Timestamp.isoformat`` gives a bar's time).

    Raises:
        DataError: ``value`` is not a timestamp (names ``where``).
    """
    try:
        ts = (
            pd.to_datetime(value, format="ISO8601")
            if isinstance(value, str)
            else pd.Timestamp(value)
        )
    except (ValueError, TypeError):
        ts = pd.NaT
    if ts is pd.NaT or not isinstance(ts, pd.Timestamp):
        raise DataError(
            f"{where}={value!r} is not an ISO-8601 timestamp (e.g. 2024-03-01 or "
            "2024-03-01T15:30:00Z)"
        )
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts.isoformat()


@dataclass(frozen=True)
class Review:
    """One stored verdict (a row of ``reviews``).

    Attributes:
        id: row id (assigned by the store).
        run_id: the catalogue's run id (the run dir's ``run_id.txt``; its name without one).
        run_dir: the run directory as given when reviewed (absolute), or None.
        symbol: the symbol reviewed.
        timestamp: the decision bar, canonical ISO-8601 (`canonical_timestamp`).
        position: the position the run took there (fraction of equity), or None.
        verdict: approve, veto or flag.
        rationale: why (required for a veto).
        author: who.
        created_at: when the verdict was recorded (UTC, ISO-8601).
    """

    id: int
    run_id: str
    run_dir: str | None
    symbol: str
    timestamp: str
    position: float | None
    verdict: str
    rationale: str
    author: str
    created_at: str

    def as_dict(self) -> dict:
        return asdict(self)


class ReviewStore:
    """The SQLite store of verdicts (see the module docstring).

    Args:
        path: the database file; created with its schema (and its directory) on first use.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._ready = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """One connection for one operation: committed on success, rolled back on error, closed
        either way."""
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            con = sqlite3.connect(self.path, timeout=10.0)
        except sqlite3.Error as exc:
            raise DataError(f"{self.path}: cannot open the review store ({exc})") from None
        try:
            if not self._ready:  # create the schema once; an existing store is only read
                have = con.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                    "AND name IN ('reviews', 'store_meta')"
                ).fetchone()[0]
                if have < 2:
                    con.execute("PRAGMA journal_mode=WAL")
                    con.executescript(SCHEMA)
                self._ready = True
            with con:
                yield con
        except sqlite3.DatabaseError as exc:
            self._ready = False  # check the schema again next time (e.g. the file was replaced)
            if isinstance(exc, sqlite3.IntegrityError):
                raise DataError(f"{self.path}: table reviews refused the row ({exc})") from None
            raise DataError(f"{self.path}: not a usable review store ({exc})") from None
        finally:
            con.close()

    def add(
        self,
        run_id: str,
        symbol: str,
        timestamp,
        verdict: str,
        author: str,
        rationale: str = "",
        position: float | None = None,
        run_dir: str | os.PathLike | None = None,
    ) -> Review:
        """Record one verdict; returns it as stored.

        Raises:
            DataError: a field is invalid (names it): verdict not in approve/veto/flag, empty
                run id, symbol or author, a veto without a rationale, a timestamp that is not
                ISO-8601, a non-finite position.
        """
        if verdict not in VERDICTS:
            raise DataError(f"verdict={verdict!r}; valid: {list(VERDICTS)}")
        for name, value in (("run_id", run_id), ("symbol", symbol), ("author", author)):
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{name} must be a non-empty string, got {value!r}")
        rationale = (rationale or "").strip()
        if verdict == "veto" and not rationale:
            raise DataError("a veto needs a rationale (why the position was wrong)")
        if position is not None:
            position = float(position)
            if not math.isfinite(position):
                raise DataError(f"position={position!r} must be a finite number")
        row = (
            run_id.strip(),
            None if run_dir is None else str(Path(run_dir).resolve()),
            symbol.strip(),
            canonical_timestamp(timestamp),
            position,
            verdict,
            rationale,
            author.strip(),
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        with self._connect() as con:
            columns, marks = ", ".join(COLUMNS[1:]), ", ".join("?" * len(row))
            cur = con.execute(f"INSERT INTO reviews ({columns}) VALUES ({marks})", row)
            return Review(int(cur.lastrowid), *row)

    def list(
        self,
        run_id: str | None = None,
        symbol: str | None = None,
        verdict: str | None = None,
        author: str | None = None,
        since=None,
        until=None,
        symbols: list[str] | None = None,
        limit: int | None = None,
    ) -> list[Review]:
        """The verdicts matching every filter given, oldest decision bar first (then by id).

        Args:
            run_id, symbol, verdict, author: exact matches.
            since, until: decision bars in [since, until] (ISO-8601, inclusive).
            symbols: any of these symbols.
            limit: at most this many rows.

        Raises:
            DataError: an unknown verdict, a bad timestamp or a limit < 1.
        """
        where, args = [], []
        if verdict is not None and verdict not in VERDICTS:
            raise DataError(f"verdict={verdict!r}; valid: {list(VERDICTS)}")
        for col, value in (
            ("run_id", run_id), ("symbol", symbol), ("verdict", verdict), ("author", author)
        ):  # fmt: skip
            if value is not None:
                where.append(f"{col} = ?")
                args.append(value)
        if since is not None:
            where.append("timestamp >= ?")
            args.append(canonical_timestamp(since, "since"))
        if until is not None:
            where.append("timestamp <= ?")
            args.append(canonical_timestamp(until, "until"))
        if symbols is not None:
            where.append(f"symbol IN ({', '.join('?' * len(symbols))})" if symbols else "0")
            args.extend(symbols)
        sql = f"SELECT {', '.join(COLUMNS)} FROM reviews"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY timestamp, id"
        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise DataError(f"limit={limit!r} must be an integer >= 1")
            sql += f" LIMIT {int(limit)}"
        with self._connect() as con:
            return [Review(*row) for row in con.execute(sql, args).fetchall()]

    def frame(self, **filters) -> pd.DataFrame:
        """`list`'s rows as a DataFrame with the columns of ``reviews`` (also when empty)."""
        rows = [r.as_dict() for r in self.list(**filters)]
        out = pd.DataFrame(rows, columns=list(COLUMNS))
        out["position"] = out["position"].astype("float64")
        out["id"] = out["id"].astype("int64")
        return out

    def export(self, out: str | os.PathLike, fmt: str | None = None, **filters) -> tuple[Path, int]:
        """Write the verdicts matching ``filters`` (`list`'s) to ``out`` atomically (a reader
        never sees half a file); returns the path and the number of rows written.

        Args:
            out: the file to write.
            fmt: csv, parquet or json (a list of records); None: from ``out``'s suffix.

        Raises:
            DataError: no format given and the suffix names none.
        """
        out = Path(out)
        fmt = fmt or out.suffix.lstrip(".").lower()
        if fmt not in EXPORT_FORMATS:
            raise DataError(
                f"{out}: cannot tell the export format from the suffix {out.suffix!r}; "
                f"use one of {['.' + f for f in EXPORT_FORMATS]} or give the format"
            )
        frame = self.frame(**filters)
        if fmt == "parquet":
            write_parquet_atomic(out, frame)
        elif fmt == "csv":
            write_text_atomic(out, frame.to_csv(index=False))
        else:
            records = [
                dict(zip(COLUMNS, row, strict=True)) for row in frame.itertuples(index=False)
            ]
            records = [{k: _plain(v) for k, v in r.items()} for r in records]
            write_text_atomic(out, json.dumps(records, indent=2) + "\n")
        return out, len(frame)


def _plain(value):
    """A frame cell as JSON: NaN (a NULL position) as None, numpy scalars as Python ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


# ------------------------------------------------------------------ a run's traded positions


def run_id_of(run_dir: str | os.PathLike) -> str:
    """The catalogue's id of a run (its ``run_id.txt``), or the run dir's name without one."""
    run_dir = Path(run_dir)
    marker = run_dir / "run_id.txt"
    if marker.is_file():
        text = marker.read_text(encoding="utf-8").strip()
        if text:
            return text
    return run_dir.resolve().name


@dataclass(frozen=True)
class Trade:
    """One traded decision of a run: what a verdict is about."""

    run_id: str
    run_dir: str
    symbol: str
    timestamp: str  # canonical ISO-8601
    position: float


def find_trade(run_dir: str | os.PathLike, symbol: str, timestamp) -> Trade:
    """The run's position in ``symbol`` decided at ``timestamp``, from its ``predictions.parquet``
    (the test segment's decisions: symbol, timestamp, position).

    Raises:
        DataError: the run dir or its predictions are missing, or the run did not trade that
            symbol at that bar (the message gives the symbols, or the symbol's bar range).
    """
    try:
        run_dir = Path(run_dir)
        found = run_dir.is_dir()
    except (ValueError, OSError):  # e.g. a NUL byte in the path
        found = False
    if not found:
        raise DataError(f"run dir {str(run_dir)!r} does not exist")
    path = run_dir / "predictions.parquet"
    if not path.is_file():
        raise DataError(f"{path}: missing; is {run_dir} a finished run (metrics.json)?")
    try:
        preds = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    missing = [c for c in ("symbol", "timestamp", "position") if c not in preds.columns]
    if missing:
        raise DataError(f"{path}: no column(s) {missing}")
    when = canonical_timestamp(timestamp)
    rows = preds[preds["symbol"].astype(str) == symbol]
    if rows.empty:
        known = sorted(preds["symbol"].astype(str).unique())
        raise DataError(f"{path}: the run traded no symbol {symbol!r}; it traded {known}")
    stamps = rows["timestamp"].map(canonical_timestamp)
    hit = rows[stamps == when]
    if hit.empty:
        raise DataError(
            f"{path}: the run took no position in {symbol!r} at {when}; its decision bars for "
            f"{symbol!r} run from {stamps.min()} to {stamps.max()} ({len(rows)} bars)"
        )
    position = float(hit["position"].iloc[0])
    if not math.isfinite(position):
        raise DataError(f"{path}: the position in {symbol!r} at {when} is not finite")
    return Trade(run_id_of(run_dir), str(run_dir.resolve()), symbol, when, position)


def review_trade(
    store: ReviewStore,
    run_dir: str | os.PathLike,
    symbol: str,
    timestamp,
    verdict: str,
    author: str,
    rationale: str = "",
) -> Review:
    """Check that the run traded (symbol, timestamp) and record the verdict on its position."""
    trade = find_trade(run_dir, symbol, timestamp)
    return store.add(
        trade.run_id, symbol, trade.timestamp, verdict, author, rationale, trade.position,
        trade.run_dir,
    )  # fmt: skip
