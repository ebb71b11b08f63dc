"""A real-data database in the SQLite contract, built offline from the data shipped with `arch`.

`build_sp500_database` writes two index "symbols" with RAW daily OHLCV, 1999-01-04 to
2018-12-31 (5031 bars each, Yahoo Finance data as shipped in ``arch.data``):

* ``SPX``: S&P 500 index (``arch.data.sp500``, Yahoo ``^GSPC``).
* ``IXIC``: NASDAQ Composite index (``arch.data.nasdaq``, documented by arch as "NASDAQ
  Composite"; levels ~2200 in 1999 and ~6600 at the end of 2018 match ``^IXIC``).

Both are price indices, so ``Adj Close`` equals ``Close`` and is not stored; there are no
corporate actions (the table is created empty). Rows with a missing open/high/low/close are
dropped (none in the shipped data); volume 0 is kept (NASDAQ has two such rows, 2015-05-12 and
2018-01-09, a data-vendor glitch; the contract allows volume >= 0). The shipped rows pass every
check of `plusultra.data.validation.checks` as they are.

Market-wide alternative tables (``include_alternative=True``), all with ISO-date ``timestamp``:

====================  =========================================  ===========================
table (columns)       source and dating                          coverage
====================  =========================================  ===========================
``vix(vix)``          CBOE VIX close (FRED VIXCLS), trading day  2014-01-03 .. 2019-01-03
``wti(wti)``          WTI Cushing spot (FRED DCOILWTICO), day    1986-01-02 .. 2019-01-03
``core_cpi(core_cpi)``  CPI less food & energy, SA (FRED         1957-01 .. 2018-11, dated
                      CPILFESL), index 1982-84=100               the 1st of the month
``ff_factors(mkt_rf,  Fama-French 3 factors + risk-free rate,    1926-07 .. 2018-11, dated
smb, hml, rf)``       monthly, in percent (Ken French library)   the month's last day
====================  =========================================  ===========================

Holidays with NaN in VIX / WTI are dropped. Note that VIX only starts in 2014, so a VIX feature
is NaN for 1999-2013, and the window sampler skips windows with NaN features.

`SP500_ALTERNATIVE` holds the recommended
:class:`~plusultra.data.features.altdata.AlternativeDataSpec`
arguments. Publication lags (``ts + lag <= bar date`` makes a value usable; see
`plusultra.data.features.altdata`), for the simulator's convention of deciding and filling at the
16:00 ET close:

* ``vix`` ``'1D'``: the VIX close is set at 16:15 ET, 15 minutes *after* the equity close, so
  it is not known when trading at the close of the same day; it is used from the next bar.
* ``wti`` ``'0D'``: the day's WTI price is set by the NYMEX settlement at 14:30 ET, before the
  equity close.
* ``core_cpi`` ``'60D'`` from the first day of the reference month: BLS publishes month M's
  CPI around the middle of M+1 (usually days 10-20, i.e. 40-51 days after the date); the
  latest release in 1999-2018 was September 2013, published 2013-10-30 (59 days) because of
  the federal shutdown. 60 days is never early.
* ``ff_factors`` ``'45D'`` from the month's last day: the data library is updated once a month
  with the previous month's factors, typically within the following month.

Caveat on point-in-time: CPILFESL is FRED's current vintage (seasonal factors are revised every
year) and the Fama-French factors are recomputed with each CRSP update, so even with these lags
the *values* are revised data, not the first releases (true vintages: ALFRED). Treat them as
research features.
"""

from __future__ import annotations

import importlib
import importlib.resources
import logging
import os
import pathlib
import re

import pandas as pd

from plusultra.data.io.fixture import SCHEMA
from plusultra.io import write_sqlite_atomic

__all__ = ["SP500_ALTERNATIVE", "INDICES", "build_sp500_database"]

log = logging.getLogger(__name__)

# symbol -> (arch.data module, asset name)
INDICES = {
    "SPX": ("sp500", "S&P 500 Index"),
    "IXIC": ("nasdaq", "NASDAQ Composite Index"),
}
PRICE_COLUMNS = {"Open": "open", "High": "high", "Low": "low", "Close": "close", "Volume": "volume"}

# Recommended AlternativeDataSpec kwargs (lags justified in the module docstring).
SP500_ALTERNATIVE: list[dict] = [
    {"table": "vix", "columns": ["vix"], "publication_lag": "1D", "ffill_limit": 5, "prefix": ""},
    {"table": "wti", "columns": ["wti"], "publication_lag": "0D", "ffill_limit": 5, "prefix": ""},
    {
        "table": "core_cpi",
        "columns": ["core_cpi"],
        "publication_lag": "60D",
        "ffill_limit": 45,  # bars; a new print arrives every ~21 bars, so one may be late
        "prefix": "",
    },
    {
        "table": "ff_factors",
        "columns": ["mkt_rf", "smb", "hml", "rf"],
        "publication_lag": "45D",
        "ffill_limit": 45,
        "prefix": "ff_",
    },
]


def _iso(index: pd.Index) -> list[str]:
    return pd.DatetimeIndex(index).strftime("%Y-%m-%d").tolist()


def _sanitise(name: str) -> str:
    """'Mkt-RF' -> 'mkt_rf': lower case, runs of other characters become '_'."""
    clean = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return clean if re.match(r"[a-z_]", clean) else f"c_{clean}"


def _index_rows(symbol: str, module: str) -> tuple[list[tuple], int]:
    """Series rows of one index (RAW OHLCV) and the number of rows dropped for missing prices."""
    frame = importlib.import_module(f"arch.data.{module}").load()
    frame = frame[list(PRICE_COLUMNS)].rename(columns=PRICE_COLUMNS).sort_index()
    prices = ["open", "high", "low", "close"]
    keep = frame[prices].notna().all(axis=1)
    frame = frame[keep].astype(float)
    rows = zip(
        [symbol] * len(frame),
        _iso(frame.index),
        *(frame[c].tolist() for c in (*prices, "volume")),
        strict=True,
    )
    return list(rows), int((~keep).sum())


def _daily(module: str, column: str) -> list[tuple]:
    series = importlib.import_module(f"arch.data.{module}").load()[column].dropna().sort_index()
    return list(zip(_iso(series.index), series.astype(float).tolist(), strict=True))


def _french() -> tuple[list[str], list[tuple]]:
    """Fama-French monthly factors, dated at the month's last day; (columns, rows).

    ``arch.data.frenchdata.load()`` parses the YYYYMM integers as nanoseconds since 1970, so
    the csv.gz is read here with format '%Y%m'.
    """
    source = importlib.resources.files("arch.data.frenchdata") / "frenchdata.csv.gz"
    with importlib.resources.as_file(source) as file:
        frame = pd.read_csv(file, dtype={"Date": str})
    month = pd.to_datetime(frame.pop("Date"), format="%Y%m")
    frame.index = month + pd.offsets.MonthEnd(0)
    frame.columns = [_sanitise(c) for c in frame.columns]
    frame = frame.apply(pd.to_numeric, errors="coerce").dropna(how="all").sort_index()
    rows = zip(_iso(frame.index), *(frame[c].tolist() for c in frame.columns), strict=True)
    return list(frame.columns), list(rows)


def build_sp500_database(path: str | os.PathLike, include_alternative: bool = True) -> pathlib.Path:
    """Write the S&P 500 / NASDAQ Composite database atomically and return its path.

    Args:
        path: SQLite file to create or overwrite; parent directories are created.
        include_alternative: also write the ``vix``, ``wti``, ``core_cpi`` and ``ff_factors``
            side tables (see `SP500_ALTERNATIVE` for how to join them).

    Returns:
        `path` as a ``pathlib.Path``. Deterministic: same inputs give identical tables.
    """
    statements = [s for s in SCHEMA.split(";") if s.strip()]
    inserts: list[tuple[str, list[tuple]]] = []
    assets, series = [], []
    for symbol, (module, name) in INDICES.items():
        rows, dropped = _index_rows(symbol, module)
        if dropped:
            log.warning("%s: dropped %d row(s) with a missing price", symbol, dropped)
        series += rows
        assets.append((symbol, name, "Index", "index", "USD", rows[0][1], None))
    inserts += [("assets", assets), ("series", series)]
    if include_alternative:
        for table, module, column in (
            ("vix", "vix", "vix"),
            ("wti", "wti", "DCOILWTICO"),
            ("core_cpi", "core_cpi", "CPILFESL"),
        ):
            statements.append(f"CREATE TABLE {table}(timestamp TEXT PRIMARY KEY, {table} REAL)")
            inserts.append((table, _daily(module, column)))
        columns, rows = _french()
        statements.append(
            "CREATE TABLE ff_factors(timestamp TEXT PRIMARY KEY, "
            + ", ".join(f"{c} REAL" for c in columns)
            + ")"
        )
        inserts.append(("ff_factors", rows))
    target = pathlib.Path(path)
    write_sqlite_atomic(
        target, ";".join(statements), [(t, len(rows[0]), rows) for t, rows in inserts]
    )
    return target
