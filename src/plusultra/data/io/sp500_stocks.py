"""A 20-stock cross-section in the SQLite contract, built offline from the data files of `skfolio`.

`build_sp500_stocks_database` writes 20 large US stocks with daily ADJUSTED CLOSES ONLY,
1990-01-02 to 2022-12-28 (8313 bars each, no missing bar), read from
``skfolio/datasets/data/sp500_dataset.csv.gz`` as shipped in the skfolio wheel (BSD-3-Clause,
Copyright (c) skfolio developers; skfolio documents the files as "provided solely for testing and
example purposes ... not intended for investment, trading, or commercial use").

The files are located through the installed distribution *without importing skfolio*
(`importlib.util.find_spec` of a top-level package does not run its ``__init__``, which would
load cvxpy, scikit-learn and plotly), so a ``pip install --no-deps skfolio`` is enough here. Nothing
is downloaded.

What is stored, and what is not:

* ``series``: ``close`` is skfolio's adjusted close (splits and dividends folded in by the data
  vendor, rounded to 3 decimals); ``open``, ``high``, ``low`` and ``volume`` are NULL (the file has
  none). ``corporate_actions`` is created empty because the closes are already adjusted. The
  rounding is coarse for the early low-priced years: AAPL closed at 0.264 on 1990-01-02, so one
  tick is 0.4 %; RRC (then Lomak Petroleum) is unchanged on 61 % of the days of 1990-1994, with a
  run of 69 identical closes.
* ``assets``: symbol, company name and GICS sector from `STOCKS`, a small static reference
  table written by hand (the current GICS sector of each company as published in S&P's GICS
  classification in 2023, not a point-in-time history: GICS started in 1999 and several of these
  companies changed industry since 1990). ``asset_class`` 'equity', ``currency`` 'USD',
  ``listed`` the first bar of the data (1990-01-02, the companies listed earlier), ``delisted``
  NULL.
* ``factor_returns(timestamp, mtum, qual, size, usmv, vlue)``: the daily log return of the
  adjusted close of five iShares MSCI USA factor ETFs (momentum, quality, size, min-volatility,
  value), 2014-01-03 to 2022-12-28, from ``factors_dataset.csv.gz``; returns rather than price
  levels because a level is not stationary, so train-segment normalisation would not carry to
  test. Joined as alternative data with a publication lag of one bar (`SP500_STOCKS_ALTERNATIVE`):
  an ETF closes at the same 16:00 ET instant as the stocks, so its close is not known before a
  decision taken at that close.
* ``sp500_index(timestamp, sp500)``: the S&P 500 price index level (``sp500_index.csv.gz``),
  1990-2022, a market-wide side table for benchmarks or features. ``data=sp500_stocks_index``
  joins it unlagged for the index features: unlike an ETF's own closing price, the index close
  is computed from its members' closes at t (`plusultra.data.features.families_index`).

Survivorship bias: the 20 names are large caps of the early 2020s, chosen with hindsight; every
one of them survived 1990-2022 and most grew into mega caps. A universe chosen this way overstates
the returns of long-only and momentum-style strategies over the whole period. Use it to test
the framework on a real cross-section, not to claim what a strategy would have earned.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib

import numpy as np
import pandas as pd

from plusultra.data.io.fixture import SCHEMA
from plusultra.errors import DataError
from plusultra.io import write_sqlite_atomic

__all__ = [
    "FACTOR_ETFS",
    "SP500_STOCKS_ALTERNATIVE",
    "STOCKS",
    "build_sp500_stocks_database",
    "skfolio_data_file",
]

log = logging.getLogger(__name__)

PACKAGE = "skfolio"
DATA_DIR = ("datasets", "data")  # inside the package directory
PRICES_FILE = "sp500_dataset.csv.gz"
FACTORS_FILE = "factors_dataset.csv.gz"
INDEX_FILE = "sp500_index.csv.gz"
INSTALL_HINT = (
    "install the data extra: pip install 'plusultra[stocks]' (only skfolio's data files are "
    "read, so `pip install --no-deps skfolio` is enough)"
)

# Static reference data: symbol -> (company name, GICS sector as classified by S&P in 2023).
# Not point in time (see the module docstring).
STOCKS: dict[str, tuple[str, str]] = {
    "AAPL": ("Apple Inc.", "Information Technology"),
    "AMD": ("Advanced Micro Devices, Inc.", "Information Technology"),
    "BAC": ("Bank of America Corporation", "Financials"),
    "BBY": ("Best Buy Co., Inc.", "Consumer Discretionary"),
    "CVX": ("Chevron Corporation", "Energy"),
    "GE": ("General Electric Company", "Industrials"),
    "HD": ("The Home Depot, Inc.", "Consumer Discretionary"),
    "JNJ": ("Johnson & Johnson", "Health Care"),
    "JPM": ("JPMorgan Chase & Co.", "Financials"),
    "KO": ("The Coca-Cola Company", "Consumer Staples"),
    "LLY": ("Eli Lilly and Company", "Health Care"),
    "MRK": ("Merck & Co., Inc.", "Health Care"),
    "MSFT": ("Microsoft Corporation", "Information Technology"),
    "PEP": ("PepsiCo, Inc.", "Consumer Staples"),
    "PFE": ("Pfizer Inc.", "Health Care"),
    "PG": ("The Procter & Gamble Company", "Consumer Staples"),
    "RRC": ("Range Resources Corporation", "Energy"),
    "UNH": ("UnitedHealth Group Incorporated", "Health Care"),
    "WMT": ("Walmart Inc.", "Consumer Staples"),
    "XOM": ("Exxon Mobil Corporation", "Energy"),
}
# factors_dataset.csv.gz column -> side-table column (iShares MSCI USA factor ETFs)
FACTOR_ETFS = {"MTUM": "mtum", "QUAL": "qual", "SIZE": "size", "USMV": "usmv", "VLUE": "vlue"}

# Recommended AlternativeDataSpec kwargs: one bar of lag (the ETF close is simultaneous with the
# decision close), carried at most 5 bars over a missing day.
SP500_STOCKS_ALTERNATIVE: list[dict] = [
    {
        "table": "factor_returns",
        "columns": list(FACTOR_ETFS.values()),
        "publication_lag": "1D",
        "ffill_limit": 5,
        "prefix": "etf_",
    },
]


def skfolio_data_file(name: str) -> pathlib.Path:
    """Path of one data file of the installed skfolio, found without importing skfolio.

    Raises:
        DataError: skfolio is not installed, or the file is not where skfolio keeps it.
    """
    spec = importlib.util.find_spec(PACKAGE)  # a top-level package: its __init__ is not run
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"data=sp500_stocks reads its prices from the {PACKAGE} wheel; {INSTALL_HINT}"
        )
    for root in spec.submodule_search_locations:
        path = pathlib.Path(root).joinpath(*DATA_DIR, name)
        if path.is_file():
            return path
    raise DataError(
        f"{name} not found under {', '.join(spec.submodule_search_locations)}/"
        f"{'/'.join(DATA_DIR)}: this {PACKAGE} version does not ship it; {INSTALL_HINT}"
    )


def _read(name: str) -> pd.DataFrame:
    """A skfolio csv.gz (Date column + one column per asset) indexed by date, sorted."""
    path = skfolio_data_file(name)
    frame = pd.read_csv(path, index_col="Date")
    frame.index = pd.to_datetime(frame.index, format="%Y-%m-%d")
    if frame.index.has_duplicates:
        raise DataError(f"{path}: repeated dates {frame.index[frame.index.duplicated()][:5]}")
    return frame.sort_index().astype(float)


def _iso(index: pd.Index) -> list[str]:
    return pd.DatetimeIndex(index).strftime("%Y-%m-%d").tolist()


def _series_rows(prices: pd.DataFrame) -> list[tuple]:
    """(symbol, timestamp, open, high, low, close, volume) with NULL open/high/low/volume."""
    unknown = sorted(set(prices.columns) - set(STOCKS))
    if unknown:
        raise DataError(f"{PRICES_FILE}: symbol(s) {unknown} have no entry in STOCKS")
    rows = []
    for symbol in sorted(prices.columns):
        close = prices[symbol].dropna()
        rows += [
            (symbol, ts, None, None, None, value, None)
            for ts, value in zip(_iso(close.index), close.tolist(), strict=True)
        ]
    return rows


def _factor_rows(factors: pd.DataFrame) -> list[tuple]:
    """(timestamp, log returns...) from adjusted closes; the first date has no return."""
    missing = sorted(set(FACTOR_ETFS) - set(factors.columns))
    if missing:
        raise DataError(f"{FACTORS_FILE}: no column(s) {missing}; has {list(factors.columns)}")
    returns = np.log(factors[list(FACTOR_ETFS)]).diff().iloc[1:]
    values = returns.to_numpy()
    return [
        (ts, *(None if np.isnan(v) else float(v) for v in row))
        for ts, row in zip(_iso(returns.index), values, strict=True)
    ]


def build_sp500_stocks_database(
    path: str | os.PathLike, include_alternative: bool = True
) -> pathlib.Path:
    """Write the 20-stock database atomically and return its path.

    Args:
        path: SQLite file to create or overwrite; parent directories are created.
        include_alternative: also write the ``factor_returns`` and ``sp500_index`` side tables.

    Returns:
        `path` as a ``pathlib.Path``. Deterministic: same skfolio files give identical tables.

    Raises:
        DataError: skfolio (or one of its data files) is missing; see `skfolio_data_file`.
    """
    prices = _read(PRICES_FILE)
    series = _series_rows(prices)
    first = {s: str(prices[s].first_valid_index().date()) for s in prices.columns}
    assets = [
        (s, STOCKS[s][0], STOCKS[s][1], "equity", "USD", first[s], None)
        for s in sorted(prices.columns)
    ]
    statements = [s for s in SCHEMA.split(";") if s.strip()]
    inserts = [("assets", 7, assets), ("series", 7, series)]
    if include_alternative:
        columns = ", ".join(f"{c} REAL" for c in FACTOR_ETFS.values())
        statements.append(f"CREATE TABLE factor_returns(timestamp TEXT PRIMARY KEY, {columns})")
        inserts.append(("factor_returns", 1 + len(FACTOR_ETFS), _factor_rows(_read(FACTORS_FILE))))
        index = _read(INDEX_FILE)["SP500"].dropna()
        statements.append("CREATE TABLE sp500_index(timestamp TEXT PRIMARY KEY, sp500 REAL)")
        inserts.append(
            ("sp500_index", 2, list(zip(_iso(index.index), index.tolist(), strict=True)))
        )
    target = pathlib.Path(path)
    write_sqlite_atomic(target, ";".join(statements), inserts)
    log.info("wrote %s: %d symbols x %d bars (close only)", target, len(assets), len(prices))
    return target
