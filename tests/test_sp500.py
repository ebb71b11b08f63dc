"""The real S&P 500 / NASDAQ database built offline from `arch`'s shipped data."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from plusultra.data.datasets.panel import load_panel
from plusultra.data.features.altdata import load_alternative, specs_from_config
from plusultra.data.io.sp500 import SP500_ALTERNATIVE, build_sp500_database


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_sp500_database(tmp_path_factory.mktemp("sp500") / "sp500.sqlite")


@pytest.fixture(scope="module")
def panel(db):
    return load_panel(db)  # validation on: the real data must pass the contract's checks


@pytest.fixture(scope="module")
def alt(db, panel):
    return load_alternative(db, specs_from_config(SP500_ALTERNATIVE), panel.dates, panel.symbols)


def _query(db, sql):
    with sqlite3.connect(db) as con:
        return pd.read_sql_query(sql, con)


def test_tables_and_assets(db):
    tables = set(_query(db, "SELECT name FROM sqlite_master WHERE type='table'")["name"])
    assert tables == {
        "assets",
        "series",
        "indicators",
        "corporate_actions",
        "vix",
        "wti",
        "core_cpi",
        "ff_factors",
    }
    assert _query(db, "SELECT COUNT(*) n FROM corporate_actions")["n"][0] == 0
    assets = _query(db, "SELECT * FROM assets ORDER BY symbol").set_index("symbol")
    assert list(assets.index) == ["IXIC", "SPX"]
    assert (assets["asset_class"] == "index").all() and (assets["currency"] == "USD").all()
    assert (assets["listed"] == "1999-01-04").all() and assets["delisted"].isna().all()
    ff = _query(db, "SELECT * FROM ff_factors LIMIT 1")
    assert list(ff.columns) == ["timestamp", "mkt_rf", "smb", "hml", "rf"]


def test_known_closes_and_date_range(db):
    series = _query(db, "SELECT * FROM series")
    last = series[series["timestamp"] == "2018-12-31"].set_index("symbol")
    assert last.loc["SPX", "close"] == pytest.approx(2506.85, abs=0.01)
    assert last.loc["IXIC", "close"] == pytest.approx(6635.28, abs=0.01)
    for _, rows in series.groupby("symbol"):
        assert rows["timestamp"].min() == "1999-01-04" and rows["timestamp"].max() == "2018-12-31"
        assert len(rows) == 5031
    assert (series["volume"] >= 0).all() and (series["volume"] == 0).sum() == 2  # NASDAQ quirk


def test_panel_loads_with_validation(panel):
    assert panel.symbols == ["IXIC", "SPX"] and panel.shape == (5031, 2)
    no_actions = panel.fields["close_raw"]  # no corporate actions: adjusted = raw (to rounding)
    np.testing.assert_allclose(panel.fields["close"], no_actions, rtol=1e-12)
    assert np.isfinite(panel.fields["close"]).all()


def test_vix_is_finite_from_2014_with_a_one_day_lag(db, panel, alt):
    vix, dates = alt["vix"], pd.DatetimeIndex(panel.dates)
    np.testing.assert_array_equal(vix[:, 0], vix[:, 1])  # market-wide, broadcast
    assert np.isnan(vix[dates <= "2014-01-03", 0]).all()  # the shipped VIX starts 2014-01-03
    assert np.isfinite(vix[dates >= "2014-01-06", 0]).mean() > 0.99
    table = _query(db, "SELECT * FROM vix").set_index("timestamp")["vix"]
    at = dates.get_loc(pd.Timestamp("2018-12-31"))
    assert vix[at, 0] == table["2018-12-28"]  # Friday's close, not Monday's (16:15 ET)


def test_cpi_changes_monthly_and_never_before_its_lag(db, panel, alt):
    cpi, dates = alt["core_cpi"][:, 0], pd.DatetimeIndex(panel.dates)
    table = _query(db, "SELECT * FROM core_cpi")
    month = pd.to_datetime(table["timestamp"])
    assert (month.dt.day == 1).all()
    assert np.isfinite(cpi).all()
    changes = np.flatnonzero(np.diff(cpi) != 0) + 1
    assert 200 <= len(changes) <= 240  # ~one new print a month over 20 years
    # Prints become usable on consecutive 1st-of-month + 60D, 28..31 days apart (a weekend or
    # holiday can shift one by up to 3 days): never two changes within a month.
    assert np.diff(dates[changes]).min() >= pd.Timedelta("25D")
    for t in changes:  # the value that appears at a change is usable, the next month's is not
        row = np.flatnonzero(table["core_cpi"].to_numpy() == cpi[t])
        assert (month[row] + pd.Timedelta("60D") <= dates[t]).any()
        newer = month[month > month[row].max()]
        assert newer.empty or newer.min() + pd.Timedelta("60D") > dates[t]


def test_fama_french_dated_at_month_end(db, alt, panel):
    ff = _query(db, "SELECT * FROM ff_factors").set_index("timestamp")
    assert ff.index[0] == "1926-07-31" and ff.index[-1] == "2018-11-30"
    assert ff.loc["2018-10-31", "mkt_rf"] == pytest.approx(-7.68)  # percent
    ff_mkt = pd.Series(alt["ff_mkt_rf"][:, 0], index=pd.DatetimeIndex(panel.dates))
    # October's factor is usable from 2018-10-31 + 45D = Sat 12-15, i.e. Monday 12-17's bar.
    assert ff_mkt["2018-12-14"] == pytest.approx(ff.loc["2018-09-30", "mkt_rf"])
    assert ff_mkt["2018-12-17"] == pytest.approx(-7.68)


def test_without_alternative_and_deterministic(db, tmp_path):
    core = build_sp500_database(tmp_path / "core.sqlite", include_alternative=False)
    tables = set(_query(core, "SELECT name FROM sqlite_master WHERE type='table'")["name"])
    assert tables == {"assets", "series", "indicators", "corporate_actions"}
    again = build_sp500_database(tmp_path / "again.sqlite")
    assert again.read_bytes() == db.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.sqlite", "core.sqlite"]
