"""Tests of the synthetic market database written by `plusultra.data.io.fixture`."""

from __future__ import annotations

import sqlite3

import numpy as np
import pandas as pd
import pytest

from plusultra.data.io import fixture
from plusultra.data.io.fixture import generate_fixture
from plusultra.errors import ConfigError

SMALL = {"n_symbols": 12, "n_days": 300, "seed": 0}
ORDER = {
    "assets": "symbol",
    "series": "symbol, timestamp",
    "indicators": "symbol, timestamp, name",
    "corporate_actions": "symbol, ex_date, action",
}
COLUMNS = {
    "assets": [
        ("symbol", "TEXT"),
        ("name", "TEXT"),
        ("sector", "TEXT"),
        ("asset_class", "TEXT"),
        ("currency", "TEXT"),
        ("listed", "TEXT"),
        ("delisted", "TEXT"),
    ],
    "series": [
        ("symbol", "TEXT"),
        ("timestamp", "TEXT"),
        ("open", "REAL"),
        ("high", "REAL"),
        ("low", "REAL"),
        ("close", "REAL"),
        ("volume", "REAL"),
    ],
    "indicators": [("symbol", "TEXT"), ("timestamp", "TEXT"), ("name", "TEXT"), ("value", "REAL")],
    "corporate_actions": [
        ("symbol", "TEXT"),
        ("ex_date", "TEXT"),
        ("action", "TEXT"),
        ("value", "REAL"),
    ],
}


def read_tables(path) -> dict[str, pd.DataFrame]:
    """Every contract table, ordered by its primary key."""
    with sqlite3.connect(path) as conn:
        return {t: pd.read_sql(f"SELECT * FROM {t} ORDER BY {o}", conn) for t, o in ORDER.items()}


def total_returns(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """(close * split + dividend) / previous close - 1, (days, symbols); NaN outside life."""
    close = tables["series"].pivot(index="timestamp", columns="symbol", values="close")
    actions = tables["corporate_actions"]

    def wide(action: str, fill: float) -> pd.DataFrame:
        rows = actions[actions["action"] == action]
        frame = rows.pivot(index="ex_date", columns="symbol", values="value")
        return frame.reindex(index=close.index, columns=close.columns).fillna(fill)

    return (close * wide("split", 1.0) + wide("dividend", 0.0)) / close.shift(1) - 1.0


def pooled_corr(x: pd.DataFrame, y: pd.DataFrame) -> tuple[float, int]:
    """Spearman correlation of the aligned non-NaN cells of two wide frames, and their count."""
    both = pd.DataFrame({"x": x.stack(), "y": y.stack()}).dropna()
    return both["x"].corr(both["y"], method="spearman"), len(both)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, pd.DataFrame]:
    return read_tables(generate_fixture(tmp_path_factory.mktemp("small") / "m.db", **SMALL))


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> dict[str, pd.DataFrame]:
    path = generate_fixture(tmp_path_factory.mktemp("medium") / "m.db", 30, 1000, seed=1)
    return read_tables(path)


def test_same_seed_identical_different_seed_differs(tmp_path, small):
    again = read_tables(generate_fixture(tmp_path / "again.db", **SMALL))
    for table, frame in small.items():
        pd.testing.assert_frame_equal(again[table], frame, check_exact=True)
    other = read_tables(generate_fixture(tmp_path / "other.db", **{**SMALL, "seed": 1}))
    assert not other["series"]["close"].equals(small["series"]["close"])


def test_schema_is_the_contract(tmp_path):
    path = generate_fixture(tmp_path / "m.db", **SMALL)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert tables == set(COLUMNS)
        for table, expected in COLUMNS.items():
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            assert [(row[1], row[2]) for row in info] == expected
            keys = [row[1] for row in sorted(info, key=lambda row: row[5]) if row[5]]
            assert keys == [c.strip() for c in ORDER[table].split(",")]


def test_dates_ohlc_and_positivity(small):
    series = small["series"]
    days = pd.to_datetime(series["timestamp"], format="%Y-%m-%d")
    assert days.min() == pd.Timestamp("2012-01-03") and days.dt.day_of_week.max() <= 4
    assert series["timestamp"].nunique() == SMALL["n_days"]
    prices = series[["open", "high", "low", "close"]]
    assert np.isfinite(prices.to_numpy()).all() and (prices > 0).all().all()
    assert (series["volume"] > 0).all()
    assert (series["high"] >= series[["open", "close"]].max(axis=1)).all()
    assert (series["low"] <= series[["open", "close"]].min(axis=1)).all()
    gap = np.log(series["open"] / series.groupby("symbol")["close"].shift(1)).abs()
    assert gap.median() < 0.02  # open near the previous close


def test_rows_only_within_listed_life(small):
    assets = small["assets"].set_index("symbol")
    assert set(assets["asset_class"]) == {"equity"} and set(assets["currency"]) == {"USD"}
    assert list(assets.index) == [f"SYM{i:03d}" for i in range(SMALL["n_symbols"])]
    calendar = np.sort(small["series"]["timestamp"].unique())
    life = small["series"].groupby("symbol")["timestamp"].agg(["min", "max", "count"])
    assert (life["min"] == assets["listed"]).all()
    assert (life["max"] == assets["delisted"].fillna(calendar[-1])).all()
    expected_count = [
        np.searchsorted(calendar, b) - np.searchsorted(calendar, a) + 1
        for a, b in zip(life["min"], life["max"], strict=True)
    ]
    assert list(life["count"]) == expected_count  # no gaps inside a life
    assert (assets["listed"] > calendar[0]).sum() == 2  # round(15 % of 12)
    assert assets["delisted"].notna().sum() == 1  # round(10 % of 12)
    keys = small["series"][["symbol", "timestamp"]]
    assert set(small["indicators"]["name"]) == {"sentiment"}
    got = small["indicators"][["symbol", "timestamp"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(got, keys.reset_index(drop=True))
    actions = small["corporate_actions"].merge(
        small["series"], left_on=["symbol", "ex_date"], right_on=["symbol", "timestamp"]
    )
    assert len(actions) == len(small["corporate_actions"])


def test_tiny_universe_keeps_a_full_life_symbol(tmp_path):
    tables = read_tables(generate_fixture(tmp_path / "m.db", n_symbols=3, n_days=30))
    assets = tables["assets"]
    full = (assets["listed"] == "2012-01-03") & assets["delisted"].isna()
    assert full.any()
    assert len(tables["series"]) >= 30


def test_prices_reproduce_growth_exactly():
    rng = np.random.default_rng(3)
    growth = np.exp(rng.normal(0.0003, 0.03, (400, 20)))
    first = rng.integers(0, 100, 20)
    last = np.minimum(first + rng.integers(100, 400, 20), 399)
    px = fixture._prices(rng, growth, first, last)
    assert (px["split"] > 1).sum() == 2 and (px["dividend"] > 0).any()
    recon = (px["close"][1:] * px["split"][1:] + px["dividend"][1:]) / px["close"][:-1]
    days = np.arange(1, 400)[:, None]
    alive = (days > first) & (days <= last)
    np.testing.assert_allclose(recon[alive], growth[1:][alive], rtol=1e-12)


def test_raw_prices_and_actions_give_smooth_total_returns(small):
    actions = small["corporate_actions"]
    splits = actions[actions["action"] == "split"]
    dividends = actions[actions["action"] == "dividend"]
    assert len(splits) == 1 and splits["value"].isin([2.0, 3.0, 4.0]).all()
    assert dividends["symbol"].nunique() == 6 and (dividends["value"] > 0).all()
    assert np.allclose(dividends["value"], dividends["value"].round(2))
    returns = total_returns(small)
    assert returns.abs().max().max() < 0.4
    close = small["series"].pivot(index="timestamp", columns="symbol", values="close")
    raw = close / close.shift(1)
    for row in splits.itertuples():
        assert raw.loc[row.ex_date, row.symbol] < 0.75  # the raw close drops by the ratio
        assert abs(returns.loc[row.ex_date, row.symbol]) < 0.4


def test_within_sector_correlation_exceeds_across(small):
    sector = small["assets"].set_index("symbol")["sector"]
    corr = total_returns(small).corr()
    same = sector[corr.index].to_numpy()[:, None] == sector[corr.columns].to_numpy()[None, :]
    off_diagonal = ~np.eye(len(corr), dtype=bool)
    within = corr.to_numpy()[same & off_diagonal].mean()
    across = corr.to_numpy()[~same].mean()
    assert across > 0.1 and within > across + 0.05


def test_volume_rises_with_absolute_return(small):
    series = small["series"]
    returns = total_returns(small).abs()
    volume = np.log(series.pivot(index="timestamp", columns="symbol", values="volume"))
    per_symbol = [returns[s].corr(volume[s], method="spearman") for s in returns.columns]
    assert np.median(per_symbol) > 0.2


def test_sentiment_predicts_next_day_return(medium):
    indicators = medium["indicators"]
    sentiment = indicators[indicators["name"] == "sentiment"].pivot(
        index="timestamp", columns="symbol", values="value"
    )
    returns = total_returns(medium)
    excess = returns.sub(returns.mean(axis=1), axis=0)  # cross-sectional, removes the factors
    corr, n = pooled_corr(sentiment.shift(1), excess)
    assert corr * np.sqrt(n) > 4.0  # t-statistic of a positive correlation


def test_idiosyncratic_returns_mean_revert(medium):
    returns = total_returns(medium)
    excess = returns.sub(returns.mean(axis=1), axis=0)
    reversal, n = pooled_corr(excess.shift(1), excess)
    assert reversal * np.sqrt(n) < -4.0  # t-statistic of a negative lag-1 autocorrelation


@pytest.mark.parametrize("existing", [False, True])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, existing):
    target = tmp_path / "m.db"
    if existing:
        target.write_bytes(b"previous")
    calls = []

    def failing_insert(conn, table, n_columns, rows):
        calls.append(table)
        if len(calls) == 2:
            raise RuntimeError("injected")
        original(conn, table, n_columns, rows)

    import plusultra.io

    original = plusultra.io.insert_rows
    monkeypatch.setattr(plusultra.io, "insert_rows", failing_insert)
    with pytest.raises(RuntimeError, match="injected"):
        generate_fixture(target, **SMALL)
    assert calls == ["assets", "series"]
    assert [p.name for p in tmp_path.iterdir()] == (["m.db"] if existing else [])
    if existing:
        assert target.read_bytes() == b"previous"


def test_creates_parents_overwrites_and_returns_path(tmp_path):
    target = tmp_path / "a" / "b" / "m.db"
    assert generate_fixture(str(target), **SMALL) == target
    first = read_tables(target)["series"]
    generate_fixture(target, **{**SMALL, "seed": 5})
    assert not read_tables(target)["series"]["close"].equals(first["close"])
    assert [p.name for p in target.parent.iterdir()] == ["m.db"]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"n_symbols": 0}, "n_symbols"),
        ({"n_days": 29}, "n_days"),
        ({"n_sectors": 0}, "n_sectors"),
        ({"seed": -1}, "seed"),
        ({"n_symbols": 2.5}, "n_symbols"),
        ({"start": "2012-13-40"}, "start"),
        ({"start": "yesterday"}, "start"),
    ],
)
def test_invalid_arguments_raise_config_error(tmp_path, kwargs, argument):
    with pytest.raises(ConfigError, match=argument):
        generate_fixture(tmp_path / "m.db", **kwargs)
    assert not any(tmp_path.iterdir())
