"""Index features (`families_index`): references, gaps, skipping, the data config end to end.

`INDEX_REFERENCES` (a loop for the index return, ``np.polyfit`` per symbol and window for the
regression) is checked against every index feature by tests/test_feature_families.py, on the
panel of tests/test_features.py, which carries the indicator ``index_sp500`` with a missing
day; tests/test_features.py also checks their causality and lookback.
"""

from __future__ import annotations

import json
import math
import sqlite3

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf, open_dict

from plusultra.data.datasets.datamodule import SQLiteDataModule
from plusultra.data.datasets.panel import Panel
from plusultra.data.features.families_index import INDEX_FEATURES, INDEX_INDICATOR
from plusultra.data.features.pipeline import REGISTRY, FeaturePipeline
from plusultra.data.features.registry import FeatureInputs
from plusultra.data.io.fixture import generate_fixture
from plusultra.errors import ConfigError
from tests.conftest import REPO, TINY, compose_config
from tests.test_features import make_panel

INDEX = [spec.name for spec in INDEX_FEATURES]
CONF = REPO / "conf" / "data" / "sp500_stocks_index.yaml"
WINDOWS = (20, 60, 120, 250)


# ----------------------------------------------------------------------------- references
def index_return_ref(p: Panel) -> np.ndarray:
    """(T, S) log(level_t / level_{t-1}) where the symbol has a bar and both levels exist."""
    level, close = p.indicators[INDEX_INDICATOR], p.fields["close"]
    out = np.full(close.shape, np.nan)
    for t in range(1, len(close)):
        for s in range(close.shape[1]):
            a, b = level[t, s], level[t - 1, s]
            if np.isfinite(close[t, s]) and a > 0 and b > 0:  # NaN > 0 is False
                out[t, s] = math.log(a / b)
    return out


_CACHE: dict[tuple[int, int], np.ndarray] = {}


def regression_ref(p: Panel, n: int) -> np.ndarray:
    """(3, T, S) beta, corr, annualised residual std (ddof 1) by np.polyfit per window."""
    key = (id(p), n)
    if key in _CACHE:
        return _CACHE[key]
    close = p.fields["close"]
    y = np.log(close / np.vstack([np.full((1, close.shape[1]), np.nan), close[:-1]]))
    level = p.indicators[INDEX_INDICATOR]
    x = np.full(level.shape, np.nan)
    x[1:] = np.log(level[1:] / level[:-1])
    out = np.full((3, *close.shape), np.nan)
    for s in range(close.shape[1]):
        for t in range(n - 1, len(close)):
            ys, xs = y[t - n + 1 : t + 1, s], x[t - n + 1 : t + 1, s]
            if not np.isfinite(close[t, s]) or np.isnan(ys).any() or np.isnan(xs).any():
                continue
            beta, alpha = np.polyfit(xs, ys, 1)
            resid = ys - (alpha + beta * xs)
            out[:, t, s] = beta, np.corrcoef(ys, xs)[0, 1], resid.std(ddof=1) * math.sqrt(252)
    _CACHE[key] = out
    return out


INDEX_REFERENCES = {
    "index_return": index_return_ref,
    **{
        f"{kind}_{n}": (lambda p, n=n, i=i: regression_ref(p, n)[i])
        for n in WINDOWS
        for i, kind in enumerate(("beta_idx", "corr_idx", "idio_vol_idx"))
    },
}


def _compute(panel: Panel, name: str) -> np.ndarray:
    return np.asarray(REGISTRY[name].fn(FeatureInputs(panel, REGISTRY)), dtype=np.float64)


# ----------------------------------------------------------------------------- tests
def test_every_index_feature_has_a_reference_and_the_tags():
    assert set(INDEX_REFERENCES) == set(INDEX) and len(INDEX) == 13
    assert all({"altdata", "market", "index"} <= set(REGISTRY[n].tags) for n in INDEX)


def test_no_index_return_across_a_missing_day():
    """make_panel drops the index close of bar 30: NaN at 30 and 31, defined at 29 and 32,
    and every window over those bars is undefined."""
    p = make_panel(t_len=320, seed=2)
    r, beta = _compute(p, "index_return"), _compute(p, "beta_idx_20")
    assert np.isnan(r[[30, 31]]).all() and np.isfinite(r[[29, 32], 0]).all()
    assert np.isnan(beta[30:51]).all() and np.isfinite(beta[51, 0])


def test_beta_to_an_index_of_the_universe_equals_the_market_beta():
    """An index built from the equal-weight market return gives the _mkt_ features."""
    p = make_panel(t_len=320, seed=3, gaps=False)
    market = _compute(p, "market_return")[:, 0]
    level = 100.0 * np.exp(np.nancumsum(market))
    side = {INDEX_INDICATOR: np.repeat(level[:, None], len(p.symbols), axis=1)}
    q = Panel(p.dates, p.symbols, p.fields, side)
    for ours, theirs in (("beta_idx_60", "beta_mkt_60"), ("idio_vol_idx_120", "idio_vol_120")):
        np.testing.assert_allclose(_compute(q, ours), _compute(q, theirs), rtol=1e-7, atol=1e-12)


def test_skipped_with_the_reason_without_the_index():
    p = make_panel(t_len=260, seed=1)
    bare = Panel(p.dates, p.symbols, p.fields, {})
    pipe = FeaturePipeline(["log_return", *INDEX], [])
    _, names = pipe.compute(bare)
    assert names == ["log_return"]
    for name in INDEX:
        assert pipe.skipped[name].startswith(f"needs indicator '{INDEX_INDICATOR}'")


# ----------------------------------------------------------------------------- the data config
@pytest.fixture(scope="module")
def index_db(tmp_path_factory):
    """Fixture database with an `sp500_index` side table missing one day."""
    db = generate_fixture(tmp_path_factory.mktemp("idx") / "i.sqlite", 4, 320, seed=1)
    with sqlite3.connect(db) as con:
        dates = [r[0] for r in con.execute("SELECT DISTINCT timestamp FROM series ORDER BY 1")]
        level = 3000 * np.exp(np.cumsum(np.random.default_rng(0).normal(0, 0.01, len(dates))))
        rows = [(d, float(v)) for i, (d, v) in enumerate(zip(dates, level, strict=True))]
        del rows[100]
        con.execute("CREATE TABLE sp500_index(timestamp TEXT PRIMARY KEY, sp500 REAL)")
        con.executemany("INSERT INTO sp500_index VALUES (?, ?)", rows)
    return db


def test_the_config_joins_the_index_for_features_only(index_db):
    """conf/data/sp500_stocks_index.yaml's join: the level reaches the features unlagged and
    unfilled (ffill_limit 0), and is no model input (model_input false)."""
    alt = OmegaConf.to_container(OmegaConf.load(CONF).alternative)
    names = ["log_return", "index_return", "beta_idx_20"]
    dm = SQLiteDataModule(str(index_db), FeaturePipeline(names, []), 16, 2, alternative=alt)
    dm.setup()
    assert dm.feature_names == names  # no alt_index_sp500, no availability flag
    raw = dm._compute_features()[..., 1].astype(np.float64)
    level = pd.read_sql("SELECT * FROM sp500_index", sqlite3.connect(index_db))["sp500"]
    want = np.log(level.to_numpy()[1:] / level.to_numpy()[:-1])  # day 100 is absent
    got = raw[:, 0]
    assert np.isnan(got[[0, 100, 101]]).all()
    np.testing.assert_allclose(np.delete(got, [0, 100, 101]), np.delete(want, [99]), 1e-6)
    alt = [{**alt[0], "model_input": True}]
    shown = SQLiteDataModule(str(index_db), FeaturePipeline(names[:1], []), 16, 2, alternative=alt)
    shown.setup()
    assert shown.feature_names == ["log_return", "alt_index_sp500", "alt_available_sp500_index"]


def test_model_input_must_be_a_boolean(index_db):
    alt = [{"table": "sp500_index", "columns": ["sp500"], "model_input": "no"}]
    with pytest.raises(ConfigError, match=r"data.alternative\[0\].model_input: must be true"):
        SQLiteDataModule(str(index_db), FeaturePipeline(["log_return"], []), 16, 2, alternative=alt)


@pytest.mark.slow  # builds the sp500_stocks database and computes features=full on 20 stocks
def test_tiny_run_on_sp500_stocks_index_with_full_features(tmp_path):
    """plusultra data=sp500_stocks_index features=full, shrunk: data.json lists the index
    features among the columns, and not the index level."""
    from tests.test_run import run_in_process

    cfg = compose_config(
        [
            *TINY,
            "data=sp500_stocks_index",
            "features=full",
            "data.start=2009-01-02",  # train 2009-2012 (config), val 2013-2014, test 2015
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
    columns = json.loads((run_dir / "data.json").read_text())["features"]["columns"]
    assert set(INDEX) <= set(columns) and {"beta_mkt_60", "corr_mkt_250"} <= set(columns)
    assert not [c for c in columns if c.startswith("alt_")]
