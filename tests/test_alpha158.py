"""Qlib's Alpha158 set: every factor against a naive per-symbol pandas reference, names,
dependencies (close-only data, no vwap) and the optional `vwap` column of table series.

`alpha158_reference` is written from Qlib's expressions (``qlib/contrib/data/loader.py``,
``Alpha158DL``) independently of the kernels: one symbol at a time, every window through
``Series.rolling(d).apply`` with a textbook numpy formula (centred OLS, counted ranks,
``np.argmax``, ``np.corrcoef``, ``np.quantile``). It follows our documented conventions where
they differ from Qlib: a window that is not full or holds a missing bar is NaN, a comparison
with a missing previous close is NaN, and ``$volume / Ref($volume, 1)`` is NaN when the
previous volume is 0. ``experiments/benchmarks/alpha158.py`` times the same reference.
Tolerance: 1e-7 relative, 1e-9 absolute (kernels use rolling sums; observed <= 1e-10).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from plusultra.data.datasets.panel import Panel, load_panel
from plusultra.data.features.alpha158 import ALPHA158_FEATURES, WINDOWS
from plusultra.data.features.pipeline import REGISTRY, FeaturePipeline
from plusultra.data.features.registry import FeatureInputs
from plusultra.data.io.fixture import generate_fixture
from plusultra.errors import DataError

EPS, FLAT = 1e-12, 2e-5
KBAR = ["KMID", "KLEN", "KMID2", "KUP", "KUP2", "KLOW", "KLOW2", "KSFT", "KSFT2"]
PRICE = ["OPEN0", "HIGH0", "LOW0", "VWAP0"]
# fmt: off
OPS = [
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "MAX", "MIN", "QTLU", "QTLD", "RANK", "RSV",
    "IMAX", "IMIN", "IMXD", "CORR", "CORD", "CNTP", "CNTN", "CNTD", "SUMP", "SUMN", "SUMD",
    "VMA", "VSTD", "WVMA", "VSUMP", "VSUMN", "VSUMD",
]
CLOSE_OPS = [  # the operators that read only the close
    "ROC", "MA", "STD", "BETA", "RSQR", "RESI", "QTLU", "QTLD", "RANK", "CNTP", "CNTN", "CNTD",
    "SUMP", "SUMN", "SUMD",
]
# fmt: on
QLIB_NAMES = KBAR + PRICE + [f"{op}{d}" for op in OPS for d in (5, 10, 20, 30, 60)]


# ----------------------------------------------------------------------------- reference
def _window_stats(w: np.ndarray) -> tuple[float, float, float]:
    """Centred OLS of w on 0..n-1: slope, R^2 (NaN if std <= 2e-5), residual of the last."""
    k = np.arange(len(w), dtype=float)
    kc, wc = k - k.mean(), w - w.mean()
    slope = (kc @ wc) / (kc @ kc)
    rsq = np.nan if np.std(w, ddof=1) <= FLAT else slope**2 * (kc @ kc) / (wc @ wc)
    return slope, rsq, w[-1] - (w.mean() + slope * kc[-1])


def _rank(w: np.ndarray) -> float:
    less, equal = np.sum(w < w[-1]), np.sum(w == w[-1])
    return (less + (equal + 1) / 2) / len(w)


def _corr(x: pd.Series, y: pd.Series, d: int) -> pd.Series:
    """Pearson correlation over each full window of d bars (NaN if a std is <= 2e-5)."""
    out = np.full(len(x), np.nan)
    xs, ys = x.to_numpy(), y.to_numpy()
    for t in range(d - 1, len(x)):
        wx, wy = xs[t - d + 1 : t + 1], ys[t - d + 1 : t + 1]
        complete = np.isfinite(wx).all() and np.isfinite(wy).all()
        if complete and min(np.std(wx, ddof=1), np.std(wy, ddof=1)) > FLAT:
            out[t] = np.corrcoef(wx, wy)[0, 1]
    return pd.Series(out, index=x.index)


def alpha158_reference(bars: pd.DataFrame) -> dict[str, pd.Series]:
    """Every Alpha158 factor of one symbol, by the slow route.

    Args:
        bars: one symbol's rows on the panel calendar (NaN on bars it lacks), columns
            open, high, low, close, volume and optionally vwap.

    Returns:
        Qlib name -> Series on the same index.
    """
    o, h, lo, c, v = (bars[k] for k in ("open", "high", "low", "close", "volume"))

    def roll(s: pd.Series, d: int, fn: Callable[[np.ndarray], float]) -> pd.Series:
        return s.rolling(d, min_periods=d).apply(fn, raw=True)

    span = h - lo + EPS
    out = {
        "KMID": (c - o) / o,
        "KLEN": (h - lo) / o,
        "KMID2": (c - o) / span,
        "KUP": (h - np.maximum(o, c)) / o,
        "KUP2": (h - np.maximum(o, c)) / span,
        "KLOW": (np.minimum(o, c) - lo) / o,
        "KLOW2": (np.minimum(o, c) - lo) / span,
        "KSFT": (2 * c - h - lo) / o,
        "KSFT2": (2 * c - h - lo) / span,
        "OPEN0": o / c,
        "HIGH0": h / c,
        "LOW0": lo / c,
    }
    if "vwap" in bars:
        out["VWAP0"] = bars["vwap"] / c
    dc, dv = c - c.shift(1), v - v.shift(1)
    up = (c > c.shift(1)).astype(float).where(dc.notna())
    down = (c < c.shift(1)).astype(float).where(dc.notna())
    prev_v = v.shift(1)
    cord_y = np.log(v / prev_v.where(prev_v != 0) + 1)
    moved = (c / c.shift(1) - 1).abs() * v
    for d in WINDOWS:
        reg = {i: roll(c, d, lambda w, i=i: _window_stats(w)[i]) for i in range(3)}
        hi, low = roll(h, d, np.max), roll(lo, d, np.min)
        imax, imin = roll(h, d, lambda w: np.argmax(w) + 1), roll(lo, d, lambda w: np.argmin(w) + 1)
        sums = {
            name: (
                roll(np.maximum(delta, 0).where(delta.notna()), d, np.sum),
                roll(np.maximum(-delta, 0).where(delta.notna()), d, np.sum),
                roll(delta.abs(), d, np.sum) + EPS,
            )
            for name, delta in (("", dc), ("V", dv))
        }
        out |= {
            f"ROC{d}": c.shift(d) / c,
            f"MA{d}": roll(c, d, np.mean) / c,
            f"STD{d}": roll(c, d, lambda w: np.std(w, ddof=1)) / c,
            f"BETA{d}": reg[0] / c,
            f"RSQR{d}": reg[1],
            f"RESI{d}": reg[2] / c,
            f"MAX{d}": hi / c,
            f"MIN{d}": low / c,
            f"QTLU{d}": roll(c, d, lambda w: np.quantile(w, 0.8)) / c,
            f"QTLD{d}": roll(c, d, lambda w: np.quantile(w, 0.2)) / c,
            f"RANK{d}": roll(c, d, _rank),
            f"RSV{d}": (c - low) / (hi - low + EPS),
            f"IMAX{d}": imax / d,
            f"IMIN{d}": imin / d,
            f"IMXD{d}": (imax - imin) / d,
            f"CORR{d}": _corr(c, np.log(v + 1), d),
            f"CORD{d}": _corr(c / c.shift(1), cord_y, d),
            f"CNTP{d}": roll(up, d, np.mean),
            f"CNTN{d}": roll(down, d, np.mean),
            f"CNTD{d}": roll(up, d, np.mean) - roll(down, d, np.mean),
            f"VMA{d}": roll(v, d, np.mean) / (v + EPS),
            f"VSTD{d}": roll(v, d, lambda w: np.std(w, ddof=1)) / (v + EPS),
            f"WVMA{d}": roll(moved, d, lambda w: np.std(w, ddof=1))
            / (roll(moved, d, np.mean) + EPS),
        }
        for prefix, (gain, loss, total) in sums.items():
            out[f"{prefix}SUMP{d}"] = gain / total
            out[f"{prefix}SUMN{d}"] = loss / total
            out[f"{prefix}SUMD{d}"] = (gain - loss) / total
    return out


def reference_panel(panel: Panel, names: list[str]) -> dict[str, np.ndarray]:
    """`alpha158_reference` of every symbol, stacked to name -> (T, S)."""
    per_symbol = [
        alpha158_reference(pd.DataFrame({k: panel.fields[k][:, s] for k in panel.fields}))
        for s in range(len(panel.symbols))
    ]
    return {n: np.stack([r[n].to_numpy() for r in per_symbol], axis=1) for n in names}


# ----------------------------------------------------------------------------- panel
def make_panel(t_len: int = 160, seed: int = 3) -> Panel:
    """Random OHLCV+vwap panel with the cases the conventions are about.

    Symbol 0 trades in whole units (ties for RANK, IMAX, quantiles); 1 lists late; 2 delists;
    3 misses three days and has zero volumes (VMA's 1e-12 guard, CORD's NaN); 4 starts with a
    flat close for 25 bars (std ~1e-6: RSQR and CORR NaN where the std is < 2e-5).
    """
    rng = np.random.default_rng(seed)
    shape = (t_len, 5)
    steps = rng.standard_t(4, shape) * 0.012
    steps[:25, 4] = 0.0
    close = 40.0 * np.exp(np.cumsum(steps, axis=0))
    close[:25, 4] += rng.normal(0, 1e-6, 25)  # std > 0 but < 2e-5
    open_ = close * np.exp(rng.normal(0, 0.004, shape))
    open_[:25, 4] = close[:25, 4]
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, shape)))
    volume = rng.lognormal(11, 0.7, shape)
    volume[[50, 90, 91], 3] = 0.0
    fields = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    for k in ("open", "high", "low", "close"):
        fields[k][:, 0] = np.round(fields[k][:, 0])
    fields["vwap"] = (fields["high"] + fields["low"] + 2 * fields["close"]) / 4
    for f in fields.values():
        f[:30, 1] = np.nan  # listed late
        f[-25:, 2] = np.nan  # delisted
        f[[70, 71, 110], 3] = np.nan  # missing days
    fields["close_raw"] = fields["close"].copy()
    dates = pd.bdate_range("2021-01-01", periods=t_len).to_numpy()
    return Panel(dates, [f"S{i}" for i in range(5)], fields)


@pytest.fixture(scope="module")
def panel() -> Panel:
    return make_panel()


@pytest.fixture(scope="module")
def reference(panel) -> dict[str, np.ndarray]:
    return reference_panel(panel, QLIB_NAMES)


# ----------------------------------------------------------------------------- tests
def test_names_are_qlibs_158_in_qlibs_order():
    names = [spec.name for spec in ALPHA158_FEATURES]
    assert names == QLIB_NAMES and len(names) == 158
    assert FeaturePipeline(tags=["alpha158"]).names == QLIB_NAMES
    for spec in ALPHA158_FEATURES:
        assert "alpha158" in spec.tags and spec.description.startswith("Qlib Alpha158 `")
        assert REGISTRY[spec.name] is spec


@pytest.mark.parametrize("name", QLIB_NAMES)
def test_factor_matches_naive_reference(panel, reference, name):
    got = np.asarray(REGISTRY[name].fn(FeatureInputs(panel, REGISTRY)), dtype=np.float64)
    want = reference[name]
    assert np.isfinite(want).sum() > 0.4 * want.size, "the reference must be mostly defined"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9, equal_nan=True)


def test_edge_cases_are_exercised(reference):
    assert np.isnan(reference["RSQR20"][24, 4]) and np.isnan(reference["CORR20"][24, 4])
    assert np.isfinite(reference["RSQR20"][24, 0]) and np.isfinite(reference["RSQR20"][60, 4])
    assert reference["VMA5"][50, 3] > 1e15  # Qlib's 1e-12 guard on a zero volume
    assert np.isnan(reference["CORD5"][51:56, 3]).all()  # previous volume 0
    ties = [np.unique(reference[f"RANK{d}"][:, 0] * d % 1) for d in (5, 10)]
    assert any(np.isclose(t, 0.5).any() for t in ties)  # half ranks: tied closes


def test_pipeline_output_is_float32_of_the_reference(panel, reference):
    pipe = FeaturePipeline(tags=["alpha158"])
    x, names = pipe.compute(panel)
    assert names == QLIB_NAMES and x.shape == (160, 5, 158) and x.dtype == np.float32
    want = np.stack([reference[n] for n in names], axis=-1)
    np.testing.assert_allclose(x, want.astype(np.float32), rtol=1e-6, atol=1e-7, equal_nan=True)
    assert pipe.lookback == 60


def test_lookback_is_the_first_defined_index():
    rng = np.random.default_rng(0)
    close = 30.0 * np.exp(np.cumsum(rng.normal(0, 0.01, (120, 2)), axis=0))
    fields = {k: close * m for k, m in (("open", 1.001), ("high", 1.01), ("low", 0.99))}
    fields |= {"close": close, "vwap": close, "volume": rng.lognormal(10, 0.5, close.shape)}
    clean = Panel(pd.bdate_range("2021-01-01", periods=120).to_numpy(), ["A", "B"], fields)
    x = FeatureInputs(clean, REGISTRY)
    for spec in ALPHA158_FEATURES:
        first = np.argmax(np.isfinite(np.asarray(spec.fn(x), dtype=float)), axis=0)
        assert (first == spec.lookback).all(), (spec.name, first, spec.lookback)


def test_close_only_data_keeps_the_close_factors(panel, caplog):
    nan = np.full(panel.shape, np.nan)
    fields = {"close": panel.fields["close"], "close_raw": panel.fields["close_raw"]}
    for extra in ({}, {"open": nan, "high": nan, "low": nan, "volume": nan, "vwap": nan}):
        pipe = FeaturePipeline(tags=["alpha158"])
        with caplog.at_level(logging.WARNING):
            _, names = pipe.compute(Panel(panel.dates, panel.symbols, {**fields, **extra}))
        assert names == [f"{op}{d}" for op in CLOSE_OPS for d in WINDOWS] and len(names) == 75
        assert set(pipe.skipped) == set(QLIB_NAMES) - set(names)
    assert "needs column 'open'" in pipe.skipped["KMID"]
    assert "needs column 'volume'" in pipe.skipped["CORR5"]


def test_without_vwap_157_factors_and_the_reason(panel):
    fields = {k: v for k, v in panel.fields.items() if k != "vwap"}
    pipe = FeaturePipeline(tags=["alpha158"])
    _, names = pipe.compute(Panel(panel.dates, panel.symbols, fields))
    assert len(names) == 157 and "VWAP0" not in names
    assert pipe.skipped == {"VWAP0": "needs column 'vwap', which the panel does not have "
                            "(or is all NaN)"}  # fmt: skip


# ----------------------------------------------------------------------------- vwap column
def _db_with_vwap(tmp_path, values: str | None) -> str:
    path = generate_fixture(tmp_path / "m.sqlite", n_symbols=3, n_days=80, seed=1)
    if values is not None:
        with sqlite3.connect(path) as con:
            con.execute("ALTER TABLE series ADD COLUMN vwap REAL")
            con.execute(f"UPDATE series SET vwap = {values}")
    return str(path)


def test_sqlite_vwap_column_is_loaded_and_adjusted(tmp_path):
    plain = load_panel(_db_with_vwap(tmp_path / "a", None))
    assert "vwap" not in plain.fields
    p = load_panel(_db_with_vwap(tmp_path / "b", "(high + low + close) / 3"))
    f = p.fields
    assert not np.allclose(f["close"], f["close_raw"], equal_nan=True)  # adjusted prices
    np.testing.assert_allclose(f["vwap"], (f["high"] + f["low"] + f["close"]) / 3, rtol=1e-9)
    assert FeaturePipeline(["VWAP0"]).compute(p)[1] == ["VWAP0"]


def test_sqlite_vwap_null_skips_and_bad_values_fail(tmp_path):
    p = load_panel(_db_with_vwap(tmp_path / "a", "NULL"))
    pipe = FeaturePipeline(["VWAP0", "KMID"])
    assert pipe.compute(p)[1] == ["KMID"] and "'vwap'" in pipe.skipped["VWAP0"]
    with pytest.raises(DataError, match=r"series.*vwap"):
        load_panel(_db_with_vwap(tmp_path / "b", "CASE WHEN rowid = 7 THEN -1 ELSE close END"))
