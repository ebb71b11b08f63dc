"""The feature families (`FAMILY_FEATURES`): naive references, listing masks, counts, alt data.

Every family feature is compared with a plain loop per symbol and bar (or per bar across the
symbols, for the market and cross-sectional ones) on a random panel with a late listing, a
delisting and missing days. Tolerances: 1e-8 relative and 1e-10 absolute (rolling sums and
variances in pandas against exact windows; observed <= 1e-12). The causality and lookback of
every registered feature are checked in tests/test_features.py; the long-window features get
a longer panel here.
"""

from __future__ import annotations

import calendar
import datetime as dt
import json
import math
import sqlite3
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats

from plusultra.data.datasets.datamodule import SQLiteDataModule
from plusultra.data.datasets.panel import Panel, load_panel
from plusultra.data.features.families import FAMILY_FEATURES
from plusultra.data.features.library import BUILTIN_FEATURES
from plusultra.data.features.pipeline import REGISTRY, FeaturePipeline
from plusultra.data.features.registry import FeatureInputs
from plusultra.data.io.fixture import generate_fixture
from plusultra.errors import DataError
from tests.test_features import _each, _perturb_after, _ret, _window, make_panel, zscore_ref
from tests.test_index_features import INDEX_REFERENCES

T = 420
FAMILY = [spec.name for spec in FAMILY_FEATURES]
ANNUAL = math.sqrt(252)
LN2 = math.log(2)
nan = float("nan")


@pytest.fixture(scope="module")
def panel() -> Panel:
    return make_panel(t_len=T, seed=4)


def _compute(panel: Panel, name: str) -> np.ndarray:
    return np.asarray(REGISTRY[name].fn(FeatureInputs(panel, REGISTRY)), dtype=np.float64)


# ----------------------------------------------------------------------------- loop helpers
def _f(p: Panel, name: str) -> np.ndarray:
    return p.fields[name]


def _listed(p: Panel) -> np.ndarray:
    return np.isfinite(p.fields["close"])


def _on_bars(p: Panel, a: np.ndarray) -> np.ndarray:
    a = a if a.ndim == 2 else np.repeat(a[:, None], p.fields["close"].shape[1], axis=1)
    return np.where(_listed(p), a, nan)


def _roll(x: np.ndarray, n: int, stat, offset: int = 0) -> np.ndarray:
    """stat(window) of the n values ending at t - offset (NaN if incomplete)."""
    x = x if x.ndim == 2 else x[:, None]

    def cell(t, s):
        w = _window(x, t, s, n, offset)
        return None if w is None else stat(w)

    return _each(x.shape, cell)


def _lag(x: np.ndarray, k: int = 1) -> np.ndarray:
    out = np.full(x.shape, nan)
    for t in range(k, len(x)):
        out[t] = x[t - k]
    return out


def _paired(y: np.ndarray, x: np.ndarray, n: int, stat) -> np.ndarray:
    """stat(ys, xs) over the n bars ending at t where both are finite throughout."""
    x = np.broadcast_to(x if x.ndim == 2 else x[:, None], y.shape)

    def cell(t, s):
        if t < n - 1:
            return None
        ys, xs = y[t - n + 1 : t + 1, s], x[t - n + 1 : t + 1, s]
        if np.isnan(ys).any() or np.isnan(xs).any():
            return None
        return stat([float(v) for v in ys], [float(v) for v in xs])

    return _each(y.shape, cell)


def _ols(ys, xs):
    """(beta, corr, residual std with ddof 1) by hand."""
    var_x, var_y = statistics.variance(xs), statistics.variance(ys)
    if var_x == 0 or var_y == 0:
        return None
    beta = statistics.covariance(ys, xs) / var_x
    alpha = statistics.fmean(ys) - beta * statistics.fmean(xs)
    resid = [yv - alpha - beta * xv for yv, xv in zip(ys, xs, strict=True)]
    return beta, statistics.correlation(ys, xs), statistics.stdev(resid)


def _reg(i: int, scale: float = 1.0):
    return lambda ys, xs: None if _ols(ys, xs) is None else _ols(ys, xs)[i] * scale


def _cell_map(p: Panel, fn) -> np.ndarray:
    """fn(t, s) over every cell where the symbol has a bar."""
    ok = _listed(p)
    return _each(ok.shape, lambda t, s: fn(t, s) if ok[t, s] else None)


# ----------------------------------------------------------------------------- per symbol
def _momentum_ref(p, long, skip=21):
    c = _f(p, "close")
    return _each(
        c.shape, lambda t, s: math.log(c[t - skip, s] / c[t - long, s]) if t >= long else None
    )


def _ratio_of_mean_ref(p, n):
    c = _f(p, "close")
    return np.log(c) - np.log(_roll(c, n, statistics.fmean))


def _semivol_ref(p, n, down):
    def stat(w):
        parts = [min(v, 0.0) if down else max(v, 0.0) for v in w]
        return math.sqrt(252 * sum(v * v for v in parts) / n)

    return _roll(_ret(p), n, stat)


def _range_ref(p, n, per_bar):
    o, h, lo, c = (_f(p, k) for k in ("open", "high", "low", "close"))
    bar = _each(c.shape, lambda t, s: per_bar(o[t, s], h[t, s], lo[t, s], c[t, s]))
    return _roll(bar, n, lambda w: math.sqrt(252 * max(statistics.fmean(w), 0.0)))


def _pk(o, h, lo, c):
    return math.log(h / lo) ** 2 / (4 * LN2) if not math.isnan(h + lo) else None


def _gk(o, h, lo, c):
    if math.isnan(o + h + lo + c):
        return None
    return 0.5 * math.log(h / lo) ** 2 - (2 * LN2 - 1) * math.log(c / o) ** 2


def _rs(o, h, lo, c):
    if math.isnan(o + h + lo + c):
        return None
    return math.log(h / c) * math.log(h / o) + math.log(lo / c) * math.log(lo / o)


def _yang_zhang_ref(p, n):
    o, h, lo, c = (_f(p, k) for k in ("open", "high", "low", "close"))
    k = 0.34 / (1.34 + (n + 1) / (n - 1))

    def cell(t, s):
        if t < n:
            return None
        rows = range(t - n + 1, t + 1)
        vals = [(o[i, s], h[i, s], lo[i, s], c[i, s], c[i - 1, s]) for i in rows]
        if any(math.isnan(sum(v)) for v in vals):
            return None
        var_o = statistics.variance([math.log(v[0] / v[4]) for v in vals])
        var_c = statistics.variance([math.log(v[3] / v[0]) for v in vals])
        rs = statistics.fmean(_rs(*v[:4]) for v in vals)
        return math.sqrt(252 * max(var_o + k * var_c + (1 - k) * rs, 0.0))

    return _each(c.shape, cell)


def _component_vol_ref(p, overnight):
    o, c = _f(p, "open"), _f(p, "close")
    part = np.log(o / _lag(c)) if overnight else np.log(c / o)
    return _roll(part, 20, lambda w: statistics.stdev(w) * ANNUAL)


def _amihud_ref(p, n):
    r, dv = _ret(p), _f(p, "close") * _f(p, "volume")

    def cell(t, s):
        if t < n - 1 or np.isnan(r[t - n + 1 : t + 1, s]).any():
            return None
        ratios = [abs(r[i, s]) / dv[i, s] for i in range(t - n + 1, t + 1) if dv[i, s] > 0]
        mean = statistics.fmean(ratios) if ratios else 0.0
        return math.log(1e6 * mean) if mean > 0 else None

    return _each(r.shape, cell)


def _volume_ratio_ref(p, n):
    v = _f(p, "volume")
    prev = _roll(v, n, statistics.fmean, offset=1)
    return np.where(prev > 0, v / prev, nan)


def _spread_ref(p, n):
    h, lo = _f(p, "high"), _f(p, "low")
    den = 3 - 2 * math.sqrt(2)

    def pair(t, s):
        if t < 1 or math.isnan(h[t, s] + lo[t, s] + h[t - 1, s] + lo[t - 1, s]):
            return None
        beta = math.log(h[t - 1, s] / lo[t - 1, s]) ** 2 + math.log(h[t, s] / lo[t, s]) ** 2
        gamma = math.log(max(h[t - 1, s], h[t, s]) / min(lo[t - 1, s], lo[t, s])) ** 2
        alpha = (math.sqrt(2 * beta) - math.sqrt(beta)) / den - math.sqrt(gamma / den)
        return max(2 * (math.exp(alpha) - 1) / (1 + math.exp(alpha)), 0.0)

    return _roll(_each(h.shape, pair), n, statistics.fmean)


def _vol_ref(n):
    return lambda p: _roll(_ret(p), n, lambda w: statistics.stdev(w) * ANNUAL)


# ------------------------------------------------------------------------ market, cross-section
def market_ref(p: Panel) -> np.ndarray:
    r = _ret(p)
    out = np.full(len(r), nan)
    for t in range(len(r)):
        simple = [math.expm1(v) for v in r[t] if not math.isnan(v)]
        if simple:
            out[t] = math.log1p(sum(simple) / len(simple))
    return out


def _row_values(p: Panel, x: np.ndarray, t: int) -> dict[int, float]:
    """symbol -> value at bar t, over the symbols listed at t with a finite value."""
    ok = _listed(p)
    return {s: float(x[t, s]) for s in range(x.shape[1]) if ok[t, s] and not math.isnan(x[t, s])}


def cs_rank_ref(p: Panel, x: np.ndarray) -> np.ndarray:
    out = np.full(x.shape, nan)
    for t in range(len(x)):
        vals = _row_values(p, x, t)
        ranks = stats.rankdata(list(vals.values()))
        for (s, _), rank in zip(vals.items(), ranks, strict=True):
            out[t, s] = 0.5 if len(vals) == 1 else (rank - 1) / (len(vals) - 1)
    return out


def cs_z_ref(p: Panel, x: np.ndarray) -> np.ndarray:
    out = np.full(x.shape, nan)
    for t in range(len(x)):
        vals = _row_values(p, x, t)
        if vals:
            mean, sd = statistics.fmean(vals.values()), statistics.pstdev(vals.values())
            for s, v in vals.items():
                out[t, s] = (v - mean) / sd if sd > 0 else 0.0
    return out


def _cs_stat_ref(p: Panel, x: np.ndarray, stat) -> np.ndarray:
    out = np.full(len(x), nan)
    for t in range(len(x)):
        vals = list(_row_values(p, x, t).values())
        if vals:
            out[t] = stat(vals)
    return _on_bars(p, out)


def _market_sum_ref(p, n):
    return _on_bars(p, _roll(market_ref(p), n, sum)[:, 0])


def _market_reg_ref(n, i, scale=1.0):
    return lambda p: _on_bars(p, _paired(_ret(p), market_ref(p), n, _reg(i, scale)))


# ----------------------------------------------------------------------------- calendar
def _weekdays(a: dt.date, b: dt.date) -> int:
    """Weekdays in [a, b)."""
    return sum((a + dt.timedelta(days=i)).weekday() < 5 for i in range((b - a).days))


def _calendar_ref(p: Panel, fn) -> np.ndarray:
    days = [pd.Timestamp(d).date() for d in p.dates]
    return _on_bars(p, np.array([fn(d) for d in days], dtype=float))


def _into(d: dt.date) -> int:
    return _weekdays(d.replace(day=1), d)


def _to_end(d: dt.date) -> int:
    last = d.replace(day=calendar.monthrange(d.year, d.month)[1])
    return _weekdays(d + dt.timedelta(days=1), last + dt.timedelta(days=1))


# ----------------------------------------------------------------------------- alt data
def _ind(p: Panel, name: str) -> np.ndarray:
    return p.indicators[name]


def _log_change_ref(name, k):
    def ref(p):
        v = _ind(p, name)
        out = _each(v.shape, lambda t, s: math.log(v[t, s] / v[t - k, s]) if t >= k else None)
        return _on_bars(p, out)

    return ref


def _etf_beta_ref(etf):
    return lambda p: _on_bars(p, _paired(_lag(_ret(p)), _ind(p, f"etf_{etf}"), 60, _reg(0)))


REFERENCES = {
    **{f"return_{k}": (lambda p, k=k: _ret(p, k)) for k in (2, 60, 120, 250)},
    "intraday_return": lambda p: np.log(_f(p, "close") / _f(p, "open")),
    "momentum_12_1": lambda p: _momentum_ref(p, 252),
    "momentum_6_1": lambda p: _momentum_ref(p, 126),
    "ma_gap_120": lambda p: _ratio_of_mean_ref(p, 120),
    "ma_gap_250": lambda p: _ratio_of_mean_ref(p, 250),
    "dist_high_250": lambda p: np.log(_f(p, "close") / _roll(_f(p, "close"), 250, max)),
    "dist_low_250": lambda p: np.log(_f(p, "close") / _roll(_f(p, "close"), 250, min)),
    **{f"volatility_{n}": _vol_ref(n) for n in (5, 10, 120, 250)},
    **{f"downside_vol_{n}": (lambda p, n=n: _semivol_ref(p, n, True)) for n in (20, 60, 120)},
    **{f"upside_vol_{n}": (lambda p, n=n: _semivol_ref(p, n, False)) for n in (20, 60)},
    "vol_ratio_5_60": lambda p: _vol_ref(5)(p) / _vol_ref(60)(p),
    "vol_ratio_20_250": lambda p: _vol_ref(20)(p) / _vol_ref(250)(p),
    "overnight_vol_20": lambda p: _component_vol_ref(p, True),
    "intraday_vol_20": lambda p: _component_vol_ref(p, False),
    **{f"parkinson_{n}": (lambda p, n=n: _range_ref(p, n, _pk)) for n in (10, 20, 60, 120)},
    **{f"garman_klass_{n}": (lambda p, n=n: _range_ref(p, n, _gk)) for n in (10, 20, 60, 120)},
    **{f"rogers_satchell_{n}": (lambda p, n=n: _range_ref(p, n, _rs)) for n in (10, 20, 60, 120)},
    **{f"yang_zhang_{n}": (lambda p, n=n: _yang_zhang_ref(p, n)) for n in (10, 20, 60, 120)},
    "skew_60": lambda p: _roll(_ret(p), 60, lambda w: stats.skew(w, bias=False)),
    "kurt_60": lambda p: _roll(_ret(p), 60, lambda w: stats.kurtosis(w, bias=False)),
    "max_return_20": lambda p: _roll(_ret(p), 20, max),
    "min_return_20": lambda p: _roll(_ret(p), 20, min),
    "autocorr_60": lambda p: _paired(_ret(p), _lag(_ret(p)), 60, statistics.correlation),
    "amihud_20": lambda p: _amihud_ref(p, 20),
    "amihud_60": lambda p: _amihud_ref(p, 60),
    **{f"volume_ratio_{n}": (lambda p, n=n: _volume_ratio_ref(p, n)) for n in (5, 20, 60)},
    "log_dollar_volume": lambda p: np.log1p(_f(p, "close") * _f(p, "volume")),
    **{
        f"dollar_volume_{n}": (
            lambda p, n=n: _roll(np.log1p(_f(p, "close") * _f(p, "volume")), n, statistics.fmean)
        )
        for n in (20, 60)
    },
    "hl_spread_20": lambda p: _spread_ref(p, 20),
    # market
    "market_return": lambda p: _on_bars(p, market_ref(p)),
    "market_return_5": lambda p: _market_sum_ref(p, 5),
    "market_return_20": lambda p: _market_sum_ref(p, 20),
    **{
        f"market_vol_{n}": (
            lambda p, n=n: _on_bars(p, _roll(market_ref(p), n, statistics.stdev)[:, 0] * ANNUAL)
        )
        for n in (20, 60)
    },
    **{f"beta_mkt_{n}": _market_reg_ref(n, 0) for n in (20, 60, 120, 250)},
    **{f"corr_mkt_{n}": _market_reg_ref(n, 1) for n in (20, 60, 120, 250)},
    **{f"idio_vol_{n}": _market_reg_ref(n, 2, ANNUAL) for n in (20, 60, 120, 250)},
    **{
        f"excess_return_{n}": (lambda p, n=n: _ret(p, n) - _market_sum_ref(p, n))
        for n in (5, 20, 60)
    },
    "breadth_1": lambda p: _cs_stat_ref(p, _ret(p), lambda v: sum(x > 0 for x in v) / len(v)),
    "breadth_20": lambda p: _cs_stat_ref(p, _ret(p, 20), lambda v: sum(x > 0 for x in v) / len(v)),
    "dispersion_1": lambda p: _cs_stat_ref(p, _ret(p), statistics.pstdev),
    "dispersion_20": lambda p: _cs_stat_ref(p, _ret(p, 20), statistics.pstdev),
    # calendar
    "dow_sin": lambda p: _calendar_ref(p, lambda d: math.sin(2 * math.pi * d.weekday() / 7)),
    "dow_cos": lambda p: _calendar_ref(p, lambda d: math.cos(2 * math.pi * d.weekday() / 7)),
    "month_sin": lambda p: _calendar_ref(p, lambda d: math.sin(2 * math.pi * (d.month - 1) / 12)),
    "month_cos": lambda p: _calendar_ref(p, lambda d: math.cos(2 * math.pi * (d.month - 1) / 12)),
    "bdays_into_month": lambda p: _calendar_ref(p, _into),
    "bdays_to_month_end": lambda p: _calendar_ref(p, _to_end),
    "turn_of_month": lambda p: _calendar_ref(p, lambda d: float(_to_end(d) == 0 or _into(d) < 3)),
    # alternative data
    "vix_z_60": lambda p: _on_bars(p, zscore_ref(_ind(p, "vix"), 60)),
    "vix_change_5": _log_change_ref("vix", 5),
    "vol_premium_20": lambda p: _on_bars(p, _ind(p, "vix") / 100 - _vol_ref(20)(p)),
    "wti_return_20": _log_change_ref("wti", 20),
    "core_cpi_yoy": _log_change_ref("core_cpi", 252),
    **{f"beta_etf_{e}_60": _etf_beta_ref(e) for e in ("mtum", "qual", "size", "usmv", "vlue")},
    **INDEX_REFERENCES,  # index_return, beta/corr/idio_vol_idx_* (np.polyfit)
}
CS_INPUTS = [n[len("cs_rank_") :] for n in FAMILY if n.startswith("cs_rank_")]


def _input_ref(name: str):
    if name in REFERENCES:
        return REFERENCES[name]
    return lambda p: _compute(p, name)  # a built-in feature (checked in test_features.py)


for _name in CS_INPUTS:
    REFERENCES[f"cs_rank_{_name}"] = lambda p, n=_name: cs_rank_ref(p, _input_ref(n)(p))
    REFERENCES[f"cs_z_{_name}"] = lambda p, n=_name: cs_z_ref(p, _input_ref(n)(p))


# ----------------------------------------------------------------------------- tests
def test_every_family_feature_has_a_reference_and_no_builtin_is_repeated():
    assert set(REFERENCES) == set(FAMILY)
    assert not set(FAMILY) & {spec.name for spec in BUILTIN_FEATURES}
    assert 8 <= len(CS_INPUTS) <= 12


@pytest.mark.parametrize("name", FAMILY)
def test_family_feature_matches_naive_reference(panel, name):
    got, want = _compute(panel, name), np.asarray(REFERENCES[name](panel), dtype=np.float64)
    assert got.shape == want.shape == panel.shape
    assert np.isfinite(want).sum() > 0.1 * want.size, "the reference must be partly defined"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10, equal_nan=True)


LONG = [spec.name for spec in FAMILY_FEATURES if spec.lookback >= 120]


@pytest.mark.parametrize("name", LONG)
def test_long_window_feature_is_causal(name):
    """tests/test_features.py cuts at bar 200 of 300; here the cut is after the warm-up."""
    base = make_panel(t_len=600, seed=5)
    moved = _perturb_after(base, 420)
    pipe = FeaturePipeline([name])
    a, b = pipe.compute(base)[0], pipe.compute(moved)[0]
    assert np.isfinite(a[:421]).any()
    np.testing.assert_array_equal(a[:421], b[:421])
    assert not np.array_equal(a[421:], b[421:], equal_nan=True)


def _drop(p: Panel, s: int) -> Panel:
    keep = [i for i in range(len(p.symbols)) if i != s]
    fields = {k: v[:, keep] for k, v in p.fields.items()}
    return Panel(p.dates, [p.symbols[i] for i in keep], fields, {})


def test_cross_section_and_market_use_listed_symbols_only(panel):
    """At bars where symbol 0 has no bar, the others' ranks and the market are those of the
    universe without it; symbol 0 itself gets NaN."""
    fields = {k: v.copy() for k, v in panel.fields.items()}
    off = np.arange(300, 310)
    for v in fields.values():
        v[off, 0] = np.nan
    gone = Panel(panel.dates, panel.symbols, fields, {})
    without = _drop(panel, 0)
    for name in ("cs_rank_log_return", "cs_z_log_return", "market_return", "dispersion_1"):
        a, b = _compute(gone, name), _compute(without, name)
        np.testing.assert_allclose(a[off][:, 1:], b[off], rtol=1e-12, atol=1e-15)
        assert np.isnan(a[off, 0]).all()


def test_a_cross_section_of_one_is_neutral(panel):
    one = _drop(_drop(_drop(panel, 3), 2), 1)
    ranks, z = _compute(one, "cs_rank_return_5"), _compute(one, "cs_z_return_5")
    defined = np.isfinite(_compute(one, "return_5"))
    assert (ranks[defined] == 0.5).all() and (z[defined] == 0.0).all()
    np.testing.assert_allclose(_compute(one, "beta_mkt_60")[80:], 1.0, rtol=1e-9)


def test_calendar_on_known_dates():
    dates = pd.to_datetime(["2020-01-30", "2020-01-31", "2020-02-03", "2020-02-05", "2020-02-06"])
    close = np.ones((5, 1))
    p = Panel(dates.to_numpy(), ["A"], {"close": close}, {})
    into, to_end = _compute(p, "bdays_into_month")[:, 0], _compute(p, "bdays_to_month_end")[:, 0]
    np.testing.assert_array_equal(into, [21, 22, 0, 2, 3])
    np.testing.assert_array_equal(to_end, [1, 0, 19, 17, 16])  # 29 days in Feb 2020
    np.testing.assert_array_equal(_compute(p, "turn_of_month")[:, 0], [0, 1, 1, 1, 0])


# ----------------------------------------------------------------------------- counts and config
def test_features_full_gives_at_least_128_columns_on_ohlcv(tmp_path):
    """features=full on the generated OHLCV fixture, without any alternative data: the
    registered features without Alpha158 (built-in + families) give >= 128 computed
    columns, and Alpha158 adds its 157 factors that need no vwap."""
    db = generate_fixture(tmp_path / "f.sqlite", 6, 300, seed=2)
    panel = load_panel(db)
    conf = Path(__file__).resolve().parents[1] / "conf" / "features" / "full.yaml"
    full = instantiate(OmegaConf.load(conf), _convert_="all")
    x, names = full.compute(panel)
    registered = [n for n in names if n in REGISTRY]
    ours = [n for n in registered if "alpha158" not in REGISTRY[n].tags]
    assert len(ours) >= 128 and x.shape[-1] == len(names) >= 128 + 1
    assert len(registered) - len(ours) == 157  # Alpha158 without VWAP0 (no vwap column)
    skipped = [n for n in full.skipped if n in REGISTRY]
    assert all(REGISTRY[n].tags[0] == "altdata" for n in skipped if n != "VWAP0")
    assert set(registered) >= set(FAMILY) - {n for n in FAMILY if "altdata" in REGISTRY[n].tags}


# ----------------------------------------------------------------------------- alternative data
def _side_tables(db: Path) -> Path:
    """Adds daily `vix` and `factor_returns` side tables to a fixture database."""
    dates = pd.read_sql(
        "SELECT DISTINCT timestamp FROM series ORDER BY timestamp", sqlite3.connect(db)
    )["timestamp"]
    rng = np.random.default_rng(0)
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE vix(timestamp TEXT PRIMARY KEY, vix REAL)")
        con.executemany(
            "INSERT INTO vix VALUES (?, ?)",
            zip(dates, 15 * np.exp(np.cumsum(rng.normal(0, 0.05, len(dates)))), strict=True),
        )
        con.execute("CREATE TABLE factor_returns(timestamp TEXT PRIMARY KEY, mtum REAL)")
        con.executemany(
            "INSERT INTO factor_returns VALUES (?, ?)",
            zip(dates, rng.normal(0, 0.01, len(dates)), strict=True),
        )
    return db


ALT = [
    {"table": "vix", "columns": ["vix"], "publication_lag": "1D", "ffill_limit": 5, "prefix": ""},
    {"table": "factor_returns", "columns": ["mtum"], "publication_lag": "1D", "prefix": "etf_"},
]


@pytest.fixture(scope="module")
def alt_db(tmp_path_factory) -> Path:
    return _side_tables(generate_fixture(tmp_path_factory.mktemp("alt") / "a.sqlite", 4, 300))


def test_alternative_data_reaches_the_alt_features(alt_db, tmp_path):
    """The side tables of data.alternative are visible to features as ind_<name>; without
    them the same features are skipped with the reason; the catalogue records the columns."""
    from plusultra.catalogue.rows import build_row
    from plusultra.data.datasets.statistics import with_dataset_statistics

    names = ["log_return", "vix_change_5", "vol_premium_20", "beta_etf_mtum_60"]
    dm = SQLiteDataModule(str(alt_db), FeaturePipeline(names, []), 16, 2, alternative=ALT)
    dm.setup()
    assert dm.feature_names[:4] == names and "alt_vix" in dm.feature_names
    raw = dm._compute_features()
    vix = raw[..., dm.feature_names.index("alt_vix")].astype(np.float64)
    want = np.log(vix / _lag(vix, 5))
    got = raw[..., dm.feature_names.index("vix_change_5")]
    listed = np.isfinite(dm.panel.fields["close"])
    np.testing.assert_allclose(got[listed], want[listed], rtol=1e-5, atol=1e-6)  # float32 vix
    plain = SQLiteDataModule(str(alt_db), FeaturePipeline(names, []), 16, 2)
    plain.setup()
    assert plain.feature_names == ["log_return"]
    assert plain.pipeline.skipped["vix_change_5"].startswith("needs indicator 'vix'")
    # the catalogue row names the columns the run used
    dm.save_artifacts(tmp_path)
    now = pd.Timestamp.now(tz="UTC").to_pydatetime()
    config = with_dataset_statistics({"features": {"names": None}}, tmp_path)
    row = build_row(
        run_id="r",
        run_dir=str(tmp_path),
        status="completed",
        error=None,
        started_at=now,
        finished_at=now,
        git_rev="x",
        overrides=[],
        choices={},
        config=config,
        metrics={},
    )
    assert json.loads(row["features.columns"]) == dm.feature_names
    assert row["n_features"] == len(dm.feature_names)


def test_an_alternative_column_named_like_an_indicator_is_refused(alt_db, tmp_path):
    """`vix` both in the indicators table and as a side-table column: ind_vix is ambiguous."""
    db = tmp_path / "clash.sqlite"
    with sqlite3.connect(alt_db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
        dst.execute("INSERT INTO indicators SELECT symbol, timestamp, 'vix', 1.0 FROM series")
    dm = SQLiteDataModule(str(db), FeaturePipeline(["log_return"], []), 16, 2, alternative=ALT)
    with pytest.raises(DataError, match=r"data.alternative: column\(s\) \['vix'\] are also"):
        dm.setup()


# ----------------------------------------------------------------------------- train-only choices
def test_full_feature_choice_and_normalisation_ignore_everything_after_train_end(tmp_path):
    """With every registered feature: the columns computed, the features skipped, and the
    normalisation statistics are the same when every bar after train_end is rewritten (no
    selection or statistic looks past the train segment); features up to it are identical."""
    from tests.test_data import _copy, _perturb_after

    db = generate_fixture(tmp_path / "base.sqlite", 5, 700, seed=7)

    def setup(path: Path) -> SQLiteDataModule:
        dm = SQLiteDataModule(str(path), FeaturePipeline(None, ["sentiment"]), 16, 2)
        dm.setup()
        return dm

    base = setup(db)
    end = base.segments.train_end
    (tmp_path / "moved").mkdir()
    moved_db = _copy(db, tmp_path / "moved")
    _perturb_after(moved_db, str(pd.Timestamp(base.panel.dates[end]).date()), seed=3)
    moved = setup(moved_db)
    assert len(base.feature_names) >= 128
    assert moved.feature_names == base.feature_names
    assert moved.pipeline.skipped == base.pipeline.skipped
    assert moved.norm == base.norm
    np.testing.assert_array_equal(base.features[: end + 1], moved.features[: end + 1])
    assert not np.array_equal(base.features[end + 1 :], moved.features[end + 1 :], equal_nan=True)
