"""Run -> `plusultra-predict` round trips: inference rebuilds exactly the inputs the run used.

`features=full` (every registered feature, indicators and the regime columns) on databases
without sectors (like `data=sp500`, like an import without an assets file), and with
market-state conditioning and alternative data: the predictions of `plusultra-predict` on the
run's own database equal the run's test predictions on every row both have.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import open_dict

from plusultra.cli.predict import predict
from plusultra.data.datasets.panel import load_panel
from plusultra.data.features.pipeline import NO_SECTORS
from plusultra.data.io.fixture import generate_fixture
from plusultra.data.io.importers import import_files
from plusultra.errors import DataError
from tests.conftest import TINY, compose_config, run_cli
from tests.test_run import run_in_process

SECTOR_COLUMNS = ("regime_sector_strength", "regime_sector_rank")
MACRO = {"table": "macro", "columns": ["level"], "publication_lag": "1D", "ffill_limit": 3}


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory) -> Path:
    """6 symbols x 700 business days: long enough for the regimes' ~270-bar warm-up."""
    return generate_fixture(tmp_path_factory.mktemp("rt") / "m.sqlite", 6, 700, seed=1)


def _copy(src: Path, dst: Path) -> Path:
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    return dst


def _run(db: Path, tmp: Path, *overrides: str, alternative: list[dict] | None = None) -> Path:
    cfg = compose_config([*TINY, "data=sqlite", f"data.path={db}", "features=full", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
        cfg.hydra.runtime.output_dir = str(tmp / "run")
        if alternative is not None:
            cfg.data.alternative = alternative
    (tmp / "run").mkdir(parents=True)
    return run_in_process(cfg)[1]


def assert_round_trip(run_dir: Path, db: Path, tmp: Path) -> pd.DataFrame:
    """Predict on `db` and compare with the run's test predictions; returns the merge."""
    out = predict(run_dir, str(db), tmp / "p.parquet", 256, None, None, progress=False)
    ours = pd.read_parquet(run_dir / "predictions.parquet")
    merged = ours.merge(pd.read_parquet(out), on=["symbol", "timestamp"], suffixes=("", "_cli"))
    assert len(ours) > 0 and len(merged) == len(ours)
    np.testing.assert_allclose(merged["pred_1"], merged["pred_1_cli"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(merged["position"], merged["position_cli"], atol=1e-9)
    return merged


def _data(run_dir: Path) -> dict:
    return json.loads((run_dir / "data.json").read_text())


def test_full_features_on_an_sp500_like_database(fixture_db, tmp_path):
    """Every sector NULL (as in data=sp500): sector columns skipped, the rest round-trips."""
    db = _copy(fixture_db, tmp_path / "nosector.sqlite")
    with sqlite3.connect(db) as con:
        con.execute("UPDATE assets SET sector = NULL")
    run_dir = _run(db, tmp_path / "out", "data.target=raw")
    data = _data(run_dir)
    columns = data["features"]["columns"]
    assert {"regime_volatility", "regime_liquidity"} <= set(columns)
    assert not set(SECTOR_COLUMNS) & set(columns)
    assert data["features"]["regimes"] == ["volatility", "liquidity"]
    assert {data["features"]["skipped"][c] for c in SECTOR_COLUMNS} == {NO_SECTORS}
    assert data["dropped_symbols"] == {} and data["statistics"]["n_symbols"] == 6
    assert_round_trip(run_dir, db, tmp_path)


def _export_csvs(db: Path, folder: Path, symbols: int) -> list[Path]:
    """Per-symbol CSVs (date, OHLCV, sentiment) of `symbols` symbols of `db` still listed at
    its end (an import without an assets file records no delisting)."""
    panel = load_panel(db)
    folder.mkdir()
    paths = []
    alive = np.flatnonzero(np.isfinite(panel.fields["close"][-1]))[:symbols]
    for s, sym in zip(alive, np.asarray(panel.symbols)[alive], strict=True):
        frame = pd.DataFrame(
            {
                "Date": pd.DatetimeIndex(panel.dates).strftime("%Y-%m-%d"),
                **{k.title(): panel.fields[k][:, s] for k in ("open", "high", "low", "close")},
                "Volume": panel.fields["volume"][:, s],
                "Sentiment": panel.indicators["sentiment"][:, s],
            }
        ).dropna(subset=["Close"])
        paths.append(folder / f"{sym.lower()}.csv")
        frame.to_csv(paths[-1], index=False)
    return paths


def test_full_features_on_an_imported_database_without_sectors(fixture_db, tmp_path):
    """`plusultra-data import` without an assets file leaves every sector NULL."""
    db = tmp_path / "imported.sqlite"
    import_files(_export_csvs(fixture_db, tmp_path / "csv", 4), db)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM assets WHERE sector IS NOT NULL").fetchone() == (
            0,
        )
    run_dir = _run(db, tmp_path / "out")
    data = _data(run_dir)
    assert "ind_sentiment" in data["features"]["columns"]
    assert not set(SECTOR_COLUMNS) & set(data["features"]["columns"])
    assert data["statistics"]["n_symbols"] == 4
    assert_round_trip(run_dir, db, tmp_path)


def test_conditioning_and_alternative_data_round_trip(fixture_db, tmp_path):
    """Regime labels served as conditioning inputs, a side table with its availability flag,
    a symbol without a sector among sectored ones (neutral sector values), and a run on part of
    the universe from a later start (the sector columns are cross-sectional, the exponential
    averages depend on their first bar): predict rebuilds both from data.json."""
    db = _copy(fixture_db, tmp_path / "alt.sqlite")
    panel = load_panel(db)
    dates, universe = pd.DatetimeIndex(panel.dates), panel.symbols[:-1]
    with sqlite3.connect(db) as con:
        no_sector = con.execute("SELECT MIN(symbol) FROM assets").fetchone()[0]
        con.execute("UPDATE assets SET sector = NULL WHERE symbol = ?", (no_sector,))
        con.execute("CREATE TABLE macro(timestamp TEXT, level REAL)")
        rows = [(str(d.date()), float(np.sin(i / 9))) for i, d in enumerate(dates[50:], 50)]
        con.executemany("INSERT INTO macro VALUES (?, ?)", rows)
    run_dir = _run(
        db,
        tmp_path / "out",
        "data.conditioning=[volatility]",
        "market_state.dim=4",
        f"data.symbols=[{','.join(universe)}]",
        f"data.start={dates[10].date()}",
        alternative=[MACRO],
    )
    data = _data(run_dir)
    columns = data["features"]["columns"]
    assert set(SECTOR_COLUMNS) <= set(columns)
    assert columns[-2:] == ["alt_macro_level", "alt_available_macro"]
    assert data["loader"]["conditioning"] == ["volatility"]
    assert data["loader"]["alternative"][0]["table"] == "macro"
    merged = assert_round_trip(run_dir, db, tmp_path)
    assert no_sector in set(merged["symbol"])  # trained and predicted, not dropped
    assert data["loader"]["symbols"] == universe
    # the recorded universe matters: every symbol moves the sector columns and the predictions
    wider = predict(
        run_dir, str(db), tmp_path / "all.parquet", 256, None, None, False, panel.symbols
    )
    both = merged.merge(pd.read_parquet(wider), on=["symbol", "timestamp"])
    assert len(both) == len(merged) and not np.allclose(both["pred_1_x"], both["pred_1_y"])
    # a database that cannot rebuild a recorded column is refused, naming it and why
    with sqlite3.connect(db) as con:
        con.execute("UPDATE assets SET sector = NULL")
    with pytest.raises(DataError, match=r"lacks \['regime_sector_strength'.*assets.sector is NULL"):
        predict(run_dir, str(db), tmp_path / "x.parquet", 256, None, None, progress=False)


@pytest.mark.slow
def test_full_features_on_real_sp500_through_the_cli(tmp_path):
    """The real `data=sp500` (2 index series, NULL sectors, side tables), real CLI, catalogue."""
    from plusultra.catalogue.query import query

    res = run_cli(["plusultra.run", "data=sp500", "features=full", *TINY], tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    row = query(tmp_path / "catalogue", "SELECT * FROM runs").iloc[0]
    run_dir = Path(row["run_dir"])
    data = _data(run_dir)
    assert not set(SECTOR_COLUMNS) & set(data["features"]["columns"])
    assert row["n_symbols"] == 2 and row["n_features"] == len(data["features"]["columns"])
    assert row["data_first_date"] == "1999-01-04" and row["n_bars"] > 9000
    assert row["data.path"] == str((tmp_path / "cache" / "sp500.sqlite").resolve())
    db = Path(row["data.path"])
    res = run_cli(
        ["plusultra.cli.predict", str(run_dir), "--db", str(db), "--out", str(tmp_path / "p.pq")],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    ours = pd.read_parquet(run_dir / "predictions.parquet")
    merged = ours.merge(pd.read_parquet(tmp_path / "p.pq"), on=["symbol", "timestamp"])
    assert len(merged) == len(ours) > 0
    np.testing.assert_allclose(merged["pred_1_x"], merged["pred_1_y"], rtol=1e-5, atol=1e-7)
