"""data=sp500_stocks: 20 real stocks (adjusted closes only) built offline from skfolio's files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from plusultra.data.datasets.datamodule import SQLiteDataModule
from plusultra.data.datasets.panel import load_panel
from plusultra.data.features.altdata import load_alternative, specs_from_config
from plusultra.data.features.pipeline import FeaturePipeline
from plusultra.data.io import sp500_stocks
from plusultra.data.io.sp500_stocks import (
    SP500_STOCKS_ALTERNATIVE,
    STOCKS,
    build_sp500_stocks_database,
)
from plusultra.data.validation.checks import ValidationRules, validate_database
from plusultra.errors import DataError
from plusultra.run import CONF_DIR
from tests.conftest import REPO, TINY, compose_config

DEFAULT_FEATURES = OmegaConf.load(f"{CONF_DIR}/features/default.yaml").names


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return build_sp500_stocks_database(tmp_path_factory.mktemp("stocks") / "stocks.sqlite")


@pytest.fixture(scope="module")
def panel(db):
    return load_panel(db)  # validation on: the real data must pass the contract's checks


def _query(db, sql):
    with sqlite3.connect(db) as con:
        return pd.read_sql_query(sql, con)


def test_twenty_stocks_1990_to_2022_close_only(db, panel):
    assets = _query(db, "SELECT * FROM assets ORDER BY symbol").set_index("symbol")
    assert list(assets.index) == sorted(STOCKS) and len(assets) == 20
    assert assets.loc["AAPL", "name"] == "Apple Inc." and assets.loc["XOM", "sector"] == "Energy"
    assert assets["sector"].nunique() == 7 and assets["delisted"].isna().all()
    counts = _query(
        db,
        "SELECT COUNT(*) n, COUNT(open) o, COUNT(high) h, COUNT(low) l, COUNT(volume) v, "
        "COUNT(close) c, MIN(timestamp) a, MAX(timestamp) b FROM series",
    ).iloc[0]
    assert counts["n"] == counts["c"] == 20 * 8313
    assert counts[["o", "h", "l", "v"]].sum() == 0  # close only
    assert (counts["a"], counts["b"]) == ("1990-01-02", "2022-12-28")
    assert _query(db, "SELECT COUNT(*) n FROM corporate_actions")["n"][0] == 0
    # values as shipped in sp500_dataset.csv.gz (first and last rows)
    closes = _query(db, "SELECT symbol, timestamp, close FROM series").set_index(
        ["symbol", "timestamp"]
    )["close"]
    assert closes[("AAPL", "1990-01-02")] == 0.264 and closes[("XOM", "2022-12-28")] == 106.627
    assert panel.shape == (8313, 20) and np.isfinite(panel.fields["close"]).all()
    for field in ("open", "high", "low", "volume"):
        assert np.isnan(panel.fields[field]).all()
    assert validate_database(db, ValidationRules(max_gap_days=7)).ok  # 9/11: 7 days closed


def test_default_features_skip_what_needs_open_high_low_volume(panel):
    pipe = FeaturePipeline(DEFAULT_FEATURES, ["sentiment"])
    x, names = pipe.compute(panel)
    # the bar features lack open/high/low/volume; the database has no sentiment indicator
    assert set(pipe.skipped) == {"range_hl", "gap_open", "volume_z_20", "ind_sentiment"}
    assert names == [n for n in DEFAULT_FEATURES if n not in pipe.skipped]
    assert np.isfinite(x[100:]).all()  # no gap anywhere in the data: defined after warm-up


def test_factor_returns_join_one_bar_late(db, panel):
    specs = specs_from_config(SP500_STOCKS_ALTERNATIVE)
    alt = load_alternative(db, specs, panel.dates, panel.symbols)
    assert sorted(alt) == ["etf_mtum", "etf_qual", "etf_size", "etf_usmv", "etf_vlue"]
    table = _query(db, "SELECT * FROM factor_returns ORDER BY timestamp").set_index("timestamp")
    assert table.index[0] == "2014-01-03" and table.index[-1] == "2022-12-28"
    prices = pd.read_csv(sp500_stocks.skfolio_data_file("factors_dataset.csv.gz"), index_col=0)
    want = np.log(prices.loc["2014-01-06", "MTUM"] / prices.loc["2014-01-03", "MTUM"])
    assert table.loc["2014-01-06", "mtum"] == pytest.approx(want, rel=1e-12)
    dates = pd.DatetimeIndex(panel.dates)
    mtum = pd.Series(alt["etf_mtum"][:, 0], index=dates)
    np.testing.assert_array_equal(alt["etf_mtum"], np.repeat(alt["etf_mtum"][:, :1], 20, 1))
    # dated Friday 2014-01-03, usable from Monday's bar; Monday's own return on Tuesday
    assert np.isnan(mtum[:"2014-01-03"]).all()
    assert mtum["2014-01-06"] == table.loc["2014-01-03", "mtum"]
    assert mtum["2014-01-07"] == table.loc["2014-01-06", "mtum"]
    assert mtum["2022-12-28"] == table.loc["2022-12-27", "mtum"]
    index = _query(db, "SELECT * FROM sp500_index ORDER BY timestamp")
    assert len(index) == 8313 and index["sp500"].iloc[0] == 359.69


def test_conf_matches_the_recommended_lag():
    conf = OmegaConf.load(f"{CONF_DIR}/data/sp500_stocks_factors.yaml")
    assert OmegaConf.to_container(conf.alternative) == SP500_STOCKS_ALTERNATIVE


def test_skfolio_is_read_not_imported(tmp_path):
    """Building reads the csv.gz files; skfolio's __init__ (cvxpy, scikit-learn) never runs."""
    code = (
        "import sys\n"
        "from plusultra.data.io.sp500_stocks import build_sp500_stocks_database\n"
        f"build_sp500_stocks_database({str(tmp_path / 'x.sqlite')!r})\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('skfolio', 'sklearn', 'cvxpy', 'plotly')]\n"
        "assert not heavy, heavy\n"
    )
    env_path = f"{REPO / 'src'}"
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr[-2000:]


def test_missing_skfolio_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(sp500_stocks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'plusultra\[stocks\]'"):
        build_sp500_stocks_database(tmp_path / "x.sqlite")
    assert not (tmp_path / "x.sqlite").exists()


def test_datamodule_on_the_conf_splits(db):
    """The data side of a run with conf/data/sp500_stocks.yaml: every symbol in every segment."""
    conf = OmegaConf.load(f"{CONF_DIR}/data/sp500_stocks.yaml")
    dm = SQLiteDataModule(
        str(db),
        FeaturePipeline(DEFAULT_FEATURES, ["sentiment"]),
        window=16,
        horizon=2,
        target=conf.target,
        train_end=conf.train_end,
        val_end=conf.val_end,
        embargo=conf.embargo,
    )
    dm.setup()
    assert dm.feature_names == ["log_return", "return_5", "return_20", "volatility_20", "rsi_14"]
    assert set(dm.pipeline.skipped) == {"range_hl", "gap_open", "volume_z_20", "ind_sentiment"}
    assert dm.segment_dates() == {
        "train": ["1990-01-23", "2012-12-27"],  # the last label (2 bars) ends by train_end
        "val": ["2013-05-24", "2016-12-28"],
        "test": ["2017-05-25", "2022-12-28"],
    }
    for segment in ("train", "val", "test"):
        lo, hi = getattr(dm.segments, segment)
        ok = (dm.input_ok & dm.target_ok)[lo : hi + 1]  # (bars, 20)
        assert ok.any(axis=0).all(), f"a symbol has no labelled window in {segment}"
    assert np.isnan(dm.context()["volume"]).all()  # simulators see no volume: no volume cap


def test_datamodule_with_factor_etfs(db):
    """conf/data/sp500_stocks_factors.yaml: 2014-2022 with the factor returns as inputs."""
    conf = OmegaConf.load(f"{CONF_DIR}/data/sp500_stocks_factors.yaml")
    dm = SQLiteDataModule(
        str(db),
        FeaturePipeline(["log_return"]),
        window=16,
        horizon=2,
        train_end=conf.train_end,
        val_end=conf.val_end,
        embargo=100,
        start=conf.start,
        alternative=OmegaConf.to_container(conf.alternative),
    )
    dm.setup()
    etf = [f"alt_etf_{n}" for n in ("mtum", "qual", "size", "usmv", "vlue")]
    assert dm.feature_names == ["log_return", *etf, "alt_available_factor_returns"]
    assert str(dm.panel.dates[0])[:10] == "2014-01-02"
    flag = dm.features[..., -1]
    assert (flag[:2] == 0).all() and (flag[2:] == 1).all()  # first return known on 2014-01-06
    assert dm.sizes()["train_samples"] > 0


@pytest.mark.slow  # ~20-30 s on a shared 2-core machine
def test_tiny_run_on_sp500_stocks(tmp_path):
    """data=sp500_stocks end to end on 2010-2015, shrunk: builds the database on first use."""
    from tests.test_run import run_in_process

    cfg = compose_config(
        [
            *TINY,
            "data=sp500_stocks",
            "data.start=2010-01-04",  # train 2010-2012 (config), val 2013-2014, test 2015
            "data.val_end=2014-12-31",
            "data.end=2015-12-31",
            "evaluation.bootstrap=0",
        ]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    value, run_dir = run_in_process(cfg)
    assert np.isfinite(value)
    assert (tmp_path / "cache" / "sp500_stocks.sqlite").is_file()
    data = json.loads((run_dir / "data.json").read_text())
    assert data["features"]["columns"] == [
        "log_return",
        "return_5",
        "return_20",
        "volatility_20",
        "rsi_14",
    ]
    assert (
        data["segment_dates"]["train"][0] >= "2009" and data["segment_dates"]["test"][1] <= "2019"
    )
    predictions = pd.read_parquet(run_dir / "predictions.parquet")
    assert predictions["symbol"].nunique() == 20
    assert (run_dir / "metrics.json").is_file()


def test_cli_builds_prices_only(tmp_path, capsys):
    from plusultra.cli.data import main

    main(["sp500_stocks", "--path", str(tmp_path / "s.sqlite"), "--no-alternative"])
    assert f"wrote {tmp_path / 's.sqlite'}" in capsys.readouterr().out
    tables = set(_query(tmp_path / "s.sqlite", "SELECT name FROM sqlite_master")["name"])
    assert {"assets", "series"} <= tables and not {"factor_returns", "sp500_index"} & tables
