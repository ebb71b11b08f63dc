"""Bars sent in a request, as a contract database, so that the run's own input code
(`SQLiteDataModule.for_inference`: validation, features, normalisation) builds the windows.

One temporary SQLite file per request (in a temporary directory, removed afterwards) holds the
`assets` rows of the requested symbols (their sectors as the run recorded them: the sector
regime columns need them), their `series` rows and, when sent, their `indicators` and
`corporate_actions` rows.
An `assets` row is the one in the run's own database when it is readable (its asset class,
currency, listing and delisting dates), else one with the recorded sector, asset class and
currency "unknown" and the listing date at the first bar sent.
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from plusultra.data.io.fixture import SCHEMA
from plusultra.io import write_sqlite_atomic
from plusultra.service.schemas import Bars


def _rows(symbol: str, bars: Bars) -> tuple[list[tuple], list[tuple]]:
    n = len(bars.timestamp)
    none = [None] * n
    series = list(
        zip(
            [symbol] * n,
            bars.timestamp,
            bars.open or none,
            bars.high or none,
            bars.low or none,
            bars.close,
            bars.volume or none,
            strict=True,
        )
    )
    indicators = [
        (symbol, ts, name, value)
        for name, values in bars.indicators.items()
        for ts, value in zip(bars.timestamp, values, strict=True)
    ]
    return series, indicators


@contextmanager
def bars_database(
    bars: dict[str, Bars], sectors: dict[str, str | None], known: dict[str, tuple]
) -> Iterator[Path]:
    """A temporary contract database holding `bars` (symbol -> Bars); removed on exit.

    Args:
        bars: the request's bars per symbol.
        sectors: symbol -> sector, as the run recorded them (data.json ``sectors``).
        known: symbol -> its `assets` row (7 values) in the run's own database.
    """
    assets, series, indicators, actions = [], [], [], []
    for symbol, b in bars.items():
        default = (symbol, symbol, sectors.get(symbol), "unknown", "unknown", b.timestamp[0], None)
        assets.append(known.get(symbol, default))
        s, i = _rows(symbol, b)
        series += s
        indicators += i
        actions += [(symbol, a.ex_date, a.action, a.value) for a in b.corporate_actions]
    with tempfile.TemporaryDirectory(prefix="plusultra-serve-") as tmp:
        path = Path(tmp) / "request.sqlite"
        write_sqlite_atomic(
            path,
            SCHEMA,
            [
                ("assets", 7, assets),
                ("series", 7, series),
                ("indicators", 4, indicators),
                ("corporate_actions", 4, actions),
            ],
        )
        yield path


def known_assets(db: str | None, symbols: list[str]) -> dict[str, tuple]:
    """symbol -> `assets` row of `symbols` in the database `db` ({} when it is unreadable)."""
    if not db or not Path(db).is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
            rows = con.execute(
                "SELECT symbol, name, sector, asset_class, currency, listed, delisted FROM assets"
            ).fetchall()
    except sqlite3.Error:
        return {}
    wanted = set(symbols)
    return {row[0]: tuple(row) for row in rows if row[0] in wanted}
