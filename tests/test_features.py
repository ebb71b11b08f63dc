"""Feature registry and kernels: naive references, `ta` agreement, causality, selection.

Every vectorised kernel is compared with a plain loop over time per symbol (the ``*_ref``
functions below) on a small random panel with a late listing, a delisting and missing days.
Tolerances: float64 kernels 1e-9 relative (observed <= 5e-11) with 1e-12 absolute; the float32
FFT band shares 1e-6 absolute (observed <= 2e-7).
"""

from __future__ import annotations

import logging
import math
import statistics

import numpy as np
import pandas as pd
import pytest
import ta
from scipy import stats

from plusultra.data.datasets.panel import Panel
from plusultra.data.features import indicators as F
from plusultra.data.features.library import BUILTIN_FEATURES
from plusultra.data.features.pipeline import REGISTRY, FeaturePipeline, register, registry_markdown
from plusultra.data.features.registry import FeatureInputs, FeatureRegistry, FeatureSpec
from plusultra.errors import ConfigError, DataError

T, S, CUT = 300, 4, 200


def make_panel(t_len: int = T, s_len: int = S, seed: int = 0, gaps: bool = True) -> Panel:
    """Random OHLCV panel; with `gaps`: a late listing, a delisting and two missing days."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.standard_t(4, (t_len, s_len)) * 0.01, axis=0))
    open_ = close * np.exp(rng.normal(0, 0.004, close.shape))
    high = np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, close.shape)))
    low = np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, close.shape)))
    volume = rng.lognormal(12, 0.6, close.shape)
    fields = {"open": open_, "high": high, "low": low, "close": close, "volume": volume}
    fields["vwap"] = (high + low + close) / 3  # optional column (Alpha158's VWAP0)
    if gaps:
        for f in fields.values():
            f[:40, 1] = np.nan  # listed late
            f[-30:, 2] = np.nan  # delisted
            f[[120, 121, 180], 3] = np.nan  # missing days
    fields["close_raw"] = close.copy()
    sentiment = rng.normal(size=close.shape)
    side = market_side_series(rng, t_len, s_len)
    if gaps:
        side["index_sp500"][30] = np.nan  # a day without an index close
    return Panel(
        dates=pd.bdate_range("2020-01-01", periods=t_len).to_numpy(),
        symbols=[f"S{i}" for i in range(s_len)],
        fields=fields,
        indicators={"sentiment": sentiment, **side},
    )


def market_side_series(rng: np.random.Generator, t_len: int, s_len: int) -> dict[str, np.ndarray]:
    """Market-wide side series as the alternative-data join serves them (broadcast to S):
    VIX and WTI levels, a monthly core CPI step series, five factor ETF returns and an index
    level (`index_sp500`, a random walk)."""
    walk = np.cumsum(rng.normal(0, 0.02, (2, t_len)), axis=1)
    month = np.arange(t_len) // 21
    cpi = 250.0 * np.exp(np.cumsum(rng.normal(0.002, 0.001, month[-1] + 1))[month])
    out = {"vix": 18.0 * np.exp(walk[0]), "wti": 60.0 * np.exp(walk[1]), "core_cpi": cpi}
    for etf in ("mtum", "qual", "size", "usmv", "vlue"):
        out[f"etf_{etf}"] = rng.normal(0, 0.01, t_len)
    out["index_sp500"] = 3000.0 * np.exp(np.cumsum(rng.normal(0, 0.01, t_len)))
    return {k: np.repeat(v[:, None], s_len, axis=1) for k, v in out.items()}


# ----------------------------------------------------------------------------- references
def _cols(panel: Panel, *names: str):
    return [panel.fields[n] for n in names]


def _each(shape, fn):
    """(T, S) array filled by fn(t, s) for every cell (NaN where fn returns None)."""
    out = np.full(shape, np.nan)
    for s in range(shape[1]):
        for t in range(shape[0]):
            v = fn(t, s)
            out[t, s] = np.nan if v is None else v
    return out


def _window(x, t, s, n, offset=0):
    """x[t-n+1-offset .. t-offset, s] as a list, or None if it is incomplete or has a NaN."""
    lo = t - n + 1 - offset
    if lo < 0:
        return None
    w = x[lo : t - offset + 1, s]
    return None if np.isnan(w).any() else [float(v) for v in w]


def log_return_ref(close, k):
    return _each(
        close.shape, lambda t, s: math.log(close[t, s] / close[t - k, s]) if t >= k else None
    )


def ewm_ref(x, alpha, min_periods):
    """y = (1 - alpha) y + alpha x over observed values; NaN on missing values."""
    out = np.full(x.shape, np.nan)
    for s in range(x.shape[1]):
        y, seen = None, 0
        for t in range(x.shape[0]):
            if np.isnan(x[t, s]):
                continue
            y = x[t, s] if y is None else (1 - alpha) * y + alpha * x[t, s]
            seen += 1
            if seen >= min_periods:
                out[t, s] = y
    return out


def rsi_ref(close, n):
    out = np.full(close.shape, np.nan)
    for s in range(close.shape[1]):
        gain = loss = None
        seen = 0
        for t in range(1, close.shape[0]):
            d = close[t, s] - close[t - 1, s]
            if np.isnan(d):
                continue
            g, lo = max(d, 0.0), max(-d, 0.0)
            gain = g if gain is None else (gain * (n - 1) + g) / n
            loss = lo if loss is None else (loss * (n - 1) + lo) / n
            seen += 1
            if seen >= n:
                out[t, s] = 100.0 if loss == 0 else 100.0 - 100.0 / (1.0 + gain / loss)
    return out


def macd_ref(close, fast=12, slow=26, signal=9):
    line = np.full(close.shape, np.nan)
    sig = np.full(close.shape, np.nan)
    af, asl, asg = 2 / (fast + 1), 2 / (slow + 1), 2 / (signal + 1)
    for s in range(close.shape[1]):
        ef = es = eg = None
        n_close = n_line = 0
        for t in range(close.shape[0]):
            c = close[t, s]
            if np.isnan(c):
                continue
            ef = c if ef is None else (1 - af) * ef + af * c
            es = c if es is None else (1 - asl) * es + asl * c
            n_close += 1
            if n_close < slow:
                continue
            line[t, s] = ef - es
            eg = line[t, s] if eg is None else (1 - asg) * eg + asg * line[t, s]
            n_line += 1
            if n_line >= signal:
                sig[t, s] = eg
    return line, sig, line - sig


def atr_ref(high, low, close, n):
    out = np.full(close.shape, np.nan)
    for s in range(close.shape[1]):
        prev, trs, atr = None, [], None
        for t in range(close.shape[0]):
            if np.isnan(close[t, s]):
                continue
            h, lo = high[t, s], low[t, s]
            tr = h - lo if prev is None else max(h - lo, abs(h - prev), abs(lo - prev))
            prev = close[t, s]
            trs.append(tr)
            if len(trs) == n:
                atr = sum(trs) / n
            elif len(trs) > n:
                atr = (atr * (n - 1) + tr) / n
            if atr is not None:
                out[t, s] = atr
    return out


def rolling_ref(x, n, fn, offset=0):
    """fn(window) over the n bars ending at t - offset; NaN if the window is incomplete."""

    def cell(t, s):
        w = _window(x, t, s, n, offset)
        return None if w is None else fn(w, x[t, s])

    return _each(x.shape, cell)


def zscore_ref(x, n, offset=0):
    def z(w, v):
        sd = statistics.stdev(w)
        return None if sd == 0 else (v - statistics.fmean(w)) / sd

    return rolling_ref(x, n, z, offset)


def fft_ref(r, n=32):
    out = np.full((*r.shape, 3), np.nan)
    weight = np.array([1.0] + [2.0] * (n // 2 - 1) + [1.0])
    for s in range(r.shape[1]):
        for t in range(n - 1, r.shape[0]):
            w = r[t - n + 1 : t + 1, s]
            if np.isnan(w).any():
                continue
            power = np.abs(np.fft.rfft(w)) ** 2 * weight
            total = power[1:].sum()
            for b, (lo, hi) in enumerate(F.FFT_BANDS.values()):
                out[t, s, b] = power[lo : hi + 1].sum() / total
    return out


def _sig_diff_ref(p):
    sig = macd_ref(p.fields["close"])[1]
    prev = np.vstack([np.full((1, sig.shape[1]), np.nan), sig[:-1]])
    return (sig - prev) / p.fields["close"]


def _shift(x):
    return np.vstack([np.full((1, x.shape[1]), np.nan), x[:-1]])


def _ret(p: Panel, k: int = 1) -> np.ndarray:
    return log_return_ref(p.fields["close"], k)


def _on_returns(n: int, stat):
    return lambda p: rolling_ref(_ret(p), n, lambda w, _: stat(w))


def _vol(w):
    return statistics.stdev(w) * math.sqrt(252)


def _bb(w, _):
    return 4 * statistics.pstdev(w) / statistics.fmean(w)


def _bull(n: int):
    return lambda p: 1 / (1 + np.exp(-zscore_ref(np.log(p.fields["close"]), n)))


def _fft(band: int):
    return lambda p: fft_ref(_ret(p))[..., band]


# name -> (reference on a panel, rtol; None: float32 shares, 1e-6 absolute)
REFERENCES = {
    "log_return": (_ret, 1e-12),
    "return_5": (lambda p: _ret(p, 5), 1e-12),
    "return_20": (lambda p: _ret(p, 20), 1e-12),
    "velocity_3": (lambda p: _ret(p, 3) / 3, 1e-12),
    "velocity_10": (lambda p: _ret(p, 10) / 10, 1e-12),
    "velocity_40": (lambda p: _ret(p, 40) / 40, 1e-12),
    "gap_open": (lambda p: np.log(p.fields["open"] / _shift(p.fields["close"])), 1e-12),
    "range_hl": (lambda p: np.log(p.fields["high"] / p.fields["low"]), 1e-12),
    "volatility_20": (_on_returns(20, _vol), 1e-9),
    "volatility_60": (_on_returns(60, _vol), 1e-9),
    "atr_14": (lambda p: atr_ref(*_cols(p, "high", "low", "close"), 14) / p.fields["close"], 1e-9),
    "bb_width_20": (lambda p: rolling_ref(p.fields["close"], 20, _bb), 1e-9),
    "skew_20": (_on_returns(20, lambda w: stats.skew(w, bias=False)), 1e-9),
    "kurt_20": (_on_returns(20, lambda w: stats.kurtosis(w, bias=False)), 1e-9),
    "rsi_14": (lambda p: (rsi_ref(p.fields["close"], 14) - 50) / 50, 1e-9),
    "macd_hist": (lambda p: macd_ref(p.fields["close"])[2] / p.fields["close"], 1e-9),
    "macd_signal_diff": (_sig_diff_ref, 1e-9),
    "bull_prob_20": (_bull(20), 1e-9),
    "bull_prob_50": (_bull(50), 1e-9),
    "volume_z_20": (lambda p: zscore_ref(np.log1p(p.fields["volume"]), 20), 1e-9),
    "volume_anomaly_20": (
        lambda p: np.clip(zscore_ref(np.log1p(p.fields["volume"]), 20, offset=1), -5, 5),
        1e-9,
    ),
    "fft_low_32": (_fft(0), None),
    "fft_mid_32": (_fft(1), None),
    "fft_high_32": (_fft(2), None),
}


@pytest.fixture(scope="module")
def panel() -> Panel:
    return make_panel()


def _feature(panel: Panel, name: str) -> np.ndarray:
    """A registered feature in float64, straight from its function."""
    return np.asarray(REGISTRY[name].fn(FeatureInputs(panel, REGISTRY)), dtype=np.float64)


# ----------------------------------------------------------------------------- references
def test_every_default_feature_has_a_reference():
    """Built-in features here; the families' references are in test_feature_families.py,
    Alpha158's in test_alpha158.py."""
    assert set(REFERENCES) == {spec.name for spec in BUILTIN_FEATURES}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_feature_matches_naive_reference(panel, name):
    ref_fn, rtol = REFERENCES[name]
    got, want = _feature(panel, name), ref_fn(panel)
    assert np.isfinite(want).sum() > 0.5 * want.size, "the reference must be mostly defined"
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    if rtol is None:  # float32 FFT shares in [0, 1]
        np.testing.assert_allclose(got, want, atol=1e-6, equal_nan=True)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-12, equal_nan=True)


def test_kernels_match_references(panel):
    c, h, lo = panel.fields["close"], panel.fields["high"], panel.fields["low"]
    np.testing.assert_allclose(F.ewm_mean(c, 0.2, 5), ewm_ref(c, 0.2, 5), rtol=1e-12)
    np.testing.assert_allclose(F.rsi(c, 14), rsi_ref(c, 14), rtol=1e-9)
    for got, want in zip(F.macd(c), macd_ref(c), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(F.atr(h, lo, c, 14), atr_ref(h, lo, c, 14), rtol=1e-9)
    sample_bb = rolling_ref(c, 10, lambda w, _: 3 * statistics.stdev(w) / statistics.fmean(w))
    np.testing.assert_allclose(F.bollinger_width(c, 10, 1.5, ddof=1), sample_bb, rtol=1e-9)
    # 1-D input keeps its shape
    assert F.rsi(c[:, 0], 14).shape == (T,)
    np.testing.assert_allclose(F.atr(h[:, 0], lo[:, 0], c[:, 0]), F.atr(h, lo, c)[:, 0])


def realised_vol_ref(r, n, min_periods, periods_per_year):
    """Loop: stdev of the finite returns among the n bars ending at t (partial at the start)."""

    def cell(t, s):
        w = [float(v) for v in r[max(0, t - n + 1) : t + 1, s] if np.isfinite(v)]
        if len(w) < max(min_periods, 2):
            return None
        return statistics.stdev(w) * math.sqrt(periods_per_year or 1.0)

    return _each(r.shape, cell)


@pytest.mark.parametrize("min_periods, ppy", [(None, 252), (2, None), (5, 52)])
def test_realised_vol_matches_reference(panel, min_periods, ppy):
    """The one rolling-volatility kernel, complete windows only or partial ones (after gaps)."""
    r = F.log_returns(panel.fields["close"])
    got = F.realised_vol(r, 20, min_periods=min_periods, periods_per_year=ppy)
    want = realised_vol_ref(r, 20, 20 if min_periods is None else min_periods, ppy)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    first = 20 if min_periods is None else min_periods  # returns start at bar 1
    assert np.isnan(got[:first]).all() and np.isfinite(got[first:40, 0]).all()
    assert F.realised_vol(r[:, 0], 20).shape == (T,)


def test_fft_shares_sum_to_one_and_blocking_is_exact(panel, monkeypatch):
    r = F.log_returns(panel.fields["close"])
    full = F.fft_band_energy(r)
    ok = np.isfinite(full).all(axis=-1)
    assert ok.any() and full.dtype == np.float32
    np.testing.assert_allclose(full[ok].sum(axis=-1), 1.0, atol=1e-5)
    # tiny blocks: one symbol and a few bars at a time
    monkeypatch.setattr(F, "BLOCK_ELEMENTS", 200)
    np.testing.assert_allclose(F.fft_band_energy(r), full, atol=1e-6, equal_nan=True)
    sk, ku = F.rolling_skew_kurt(r, 20)
    monkeypatch.undo()
    sk0, ku0 = F.rolling_skew_kurt(r, 20)
    np.testing.assert_allclose(sk, sk0, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ku, ku0, rtol=1e-12, equal_nan=True)


def test_pure_tone_lands_in_its_band():
    t = np.arange(200)[:, None]
    tones = np.hstack([np.sin(2 * np.pi * k * t / 32) for k in (2, 6, 12)])  # (200, 3)
    shares = F.fft_band_energy(tones)[100]  # (3 symbols, 3 bands)
    np.testing.assert_allclose(shares, np.eye(3), atol=1e-4)


# ----------------------------------------------------------------------------- ta agreement
@pytest.fixture(scope="module")
def series() -> pd.DataFrame:
    p = make_panel(600, 1, seed=7, gaps=False)
    return pd.DataFrame({k: p.fields[k][:, 0] for k in ("high", "low", "close")})


def test_rsi_agrees_with_ta_after_warm_up(series):
    """ta counts a zero change on the first bar; the effect decays as (13/14)^t."""
    ours = F.rsi(series.close.to_numpy(), 14)
    theirs = ta.momentum.RSIIndicator(series.close, 14).rsi().to_numpy()
    assert np.isnan(ours[:14]).all() and np.isfinite(ours[14:]).all()
    np.testing.assert_allclose(ours[300:], theirs[300:], atol=1e-6)
    assert np.abs(ours[14:40] - theirs[14:40]).max() > 1e-6  # the documented warm-up gap


def test_macd_matches_ta_exactly(series):
    line, sig, hist = F.macd(series.close.to_numpy(), 12, 26, 9)
    m = ta.trend.MACD(series.close, 26, 12, 9)
    for ours, theirs in ((line, m.macd()), (sig, m.macd_signal()), (hist, m.macd_diff())):
        np.testing.assert_allclose(ours, theirs.to_numpy(), atol=1e-6, rtol=0, equal_nan=True)
    assert np.isnan(hist[:33]).all() and np.isfinite(hist[33:]).all()


def test_bollinger_width_matches_ta_in_percent(series):
    ours = F.bollinger_width(series.close.to_numpy(), 20, 2.0, ddof=0) * 100.0
    theirs = ta.volatility.BollingerBands(series.close, 20, 2).bollinger_wband().to_numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6, rtol=0, equal_nan=True)
    sample = F.bollinger_width(series.close.to_numpy(), 20, 2.0, ddof=1) * 100.0
    assert np.nanmax(np.abs(sample - theirs)) > 1e-3  # ddof matters: ta uses ddof=0


def test_atr_matches_ta_after_its_zero_fill(series):
    h, lo, c = (series[k].to_numpy() for k in ("high", "low", "close"))
    ours = F.atr(h, lo, c, 14)
    theirs = ta.volatility.AverageTrueRange(series.high, series.low, series.close, 14)
    theirs = theirs.average_true_range().to_numpy()
    assert np.isnan(ours[:13]).all() and (theirs[:13] == 0).all()
    np.testing.assert_allclose(ours[13:], theirs[13:], atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- causality
def _perturb_after(panel: Panel, cut: int, seed: int = 1, explode: bool = False) -> Panel:
    """Copy of panel with every bar and indicator after `cut` changed (and a new gap).

    With `explode`, future prices grow by e^2 per bar: any statistic fitted on the whole
    series (such as the global-mean shift inside pandas' rolling skew) then moves the past.
    """
    rng = np.random.default_rng(seed)
    fields = {k: v.copy() for k, v in panel.fields.items()}
    shock = np.exp(rng.normal(0, 0.05, fields["close"][cut + 1 :].shape))
    if explode:
        shock *= np.exp(2.0 * np.arange(1, len(shock) + 1))[:, None]
    for k in ("open", "high", "low", "close", "close_raw", "vwap"):
        fields[k][cut + 1 :] *= shock * (1.01 if k == "high" else 0.99 if k == "low" else 1.0)
    fields["volume"][cut + 1 :] *= rng.uniform(0.5, 2.0, shock.shape)
    for f in fields.values():
        f[cut + 5, 0] = np.nan
    indicators = {k: v.copy() for k, v in panel.indicators.items()}
    for v in indicators.values():
        v[cut + 1 :] += 3.0
    return Panel(panel.dates, panel.symbols, fields, indicators, panel.assets)


@pytest.mark.parametrize("explode", [False, True], ids=["noise", "explode"])
@pytest.mark.parametrize("name", list(REGISTRY))
def test_feature_is_causal(panel, name, explode):
    """Changing every bar after CUT leaves the feature at t <= CUT bit-identical."""
    moved = _perturb_after(panel, CUT, explode=explode)
    pipe = FeaturePipeline([name], ["sentiment"])
    a, names = pipe.compute(panel)
    b, _ = pipe.compute(moved)
    assert names == [name, "ind_sentiment"]
    np.testing.assert_array_equal(a[: CUT + 1], b[: CUT + 1])
    assert not np.array_equal(a[CUT + 1 :, :, 0], b[CUT + 1 :, :, 0], equal_nan=True)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_lookback_is_the_first_defined_index(name):
    x = _feature(make_panel(gaps=False), name)
    first = np.argmax(np.isfinite(x), axis=0)
    assert (first == REGISTRY[name].lookback).all(), (first, REGISTRY[name].lookback)


# ----------------------------------------------------------------------------- selection
def test_select_by_name_and_tag():
    assert FeaturePipeline().names == list(REGISTRY)
    pipe = FeaturePipeline(["rsi_14", "log_return"])
    assert pipe.names == ["rsi_14", "log_return"] and pipe.lookback == 14
    spectral = FeaturePipeline(tags=["spectral"]).names
    assert spectral == ["fft_low_32", "fft_mid_32", "fft_high_32"]
    both = FeaturePipeline(["rsi_14"], tags=["volume", "spectral"]).names
    assert both == ["rsi_14", "volume_z_20", "volume_anomaly_20", *spectral]
    assert all("volatility" in REGISTRY[n].tags for n in FeaturePipeline(tags=["volatility"]).names)
    only_ind = FeaturePipeline([], ["sentiment"])
    assert only_ind.names == [] and only_ind.lookback == 0
    for tag in ("returns", "momentum", "volatility", "volume", "regime", "spectral", "trend"):
        assert tag in REGISTRY.tags


def test_unknown_names_and_tags_are_config_errors():
    with pytest.raises(ConfigError, match=r"features\.names: unknown feature.*'nope'.*rsi_14"):
        FeaturePipeline(["log_return", "nope"])
    with pytest.raises(ConfigError, match=r"features\.tags: unknown tag.*'vibes'.*spectral"):
        FeaturePipeline(tags=["vibes"])
    with pytest.raises(ConfigError, match="at least one"):
        FeaturePipeline([], [])


def test_pipeline_output_and_indicators(panel, caplog):
    pipe = FeaturePipeline(["log_return", "rsi_14"], ["sentiment", "absent"])
    with caplog.at_level(logging.WARNING):
        x, names = pipe.compute(panel)
    assert names == ["log_return", "rsi_14", "ind_sentiment"]
    assert x.shape == (T, S, 3) and x.dtype == np.float32
    assert np.isnan(x[:40, 1, :2]).all()  # before listing
    np.testing.assert_array_equal(x[..., 2], panel.indicators["sentiment"].astype(np.float32))
    assert "'absent'" in caplog.text
    with pytest.raises(DataError, match="absent"):
        FeaturePipeline(["log_return"], ["absent"], skip_missing_indicators=False).compute(panel)


# ----------------------------------------------------------------------------- dependencies
def test_missing_volume_skips_volume_features_with_a_reason(panel, caplog):
    fields = {k: v for k, v in panel.fields.items() if k != "volume"}
    no_volume = Panel(panel.dates, panel.symbols, fields, panel.indicators)
    pipe = FeaturePipeline(tags=["volume", "returns"], registry=FeatureRegistry(BUILTIN_FEATURES))
    with caplog.at_level(logging.WARNING, logger="plusultra.data.features.pipeline"):
        _, names = pipe.compute(no_volume)
    assert names == ["log_return", "return_5", "return_20", "gap_open"]
    assert set(pipe.skipped) == {"volume_z_20", "volume_anomaly_20"}
    assert "skipping feature 'volume_z_20'" in caplog.text and "'volume'" in caplog.text
    # an all-NaN column counts as absent
    nan_volume = Panel(panel.dates, panel.symbols, {**fields, "volume": np.full((T, S), np.nan)})
    assert FeaturePipeline(["volume_z_20", "log_return"]).compute(nan_volume)[1] == ["log_return"]


def test_registered_feature_with_feature_and_indicator_dependencies(panel, caplog):
    reg = FeatureRegistry(REGISTRY.values())
    spec = FeatureSpec(
        "sentiment_x_vol",
        lambda x: x["ind_sentiment"] * x["volatility_20"],
        20,
        "sentiment times realised vol",
        ("ind_sentiment", "volatility_20"),
        ("custom",),
    )
    reg.register(spec)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(spec)
    with pytest.raises(ValueError, match="already registered"):
        register(REGISTRY["rsi_14"])
    pipe = FeaturePipeline(tags=["custom"], registry=reg)
    x, names = pipe.compute(panel)
    assert names == ["sentiment_x_vol"] and pipe.lookback == 20
    want = panel.indicators["sentiment"] * _feature(panel, "volatility_20")
    np.testing.assert_allclose(x[..., 0], want.astype(np.float32), equal_nan=True)
    # the indicator is absent: skipped with the reason; a transitive reason names the chain
    bare = Panel(panel.dates, panel.symbols, panel.fields, {})
    with caplog.at_level(logging.WARNING):
        assert pipe.compute(bare)[1] == []
    assert "needs indicator 'sentiment'" in pipe.skipped["sentiment_x_vol"]
    no_close = Panel(panel.dates, panel.symbols, {"volume": panel.fields["volume"]})
    assert FeaturePipeline(["volatility_20"]).compute(no_close)[1] == []
    assert "sentiment_x_vol" not in REGISTRY
    with pytest.raises(ValueError, match="prefix ind_"):
        FeatureSpec("ind_x", lambda x: x, 0, "")


def test_registry_markdown_lists_every_feature():
    md = registry_markdown()
    assert md.startswith("# Features") and "causal" in md.lower() and "Lookback" in md
    for name, spec in REGISTRY.items():
        row = next(line for line in md.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {spec.lookback} |" in row and spec.tags[0] in row


def test_docs_features_md_is_generated_from_the_registry():
    """docs/features.md is `plusultra-data features --markdown`; regenerate it after changes."""
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "features.md"
    assert doc.read_text().strip() == registry_markdown().strip()


def test_close_only_panel_skips_bar_features_and_says_why(panel, caplog):
    """Close-only data (NULL open/high/low/volume): features=default computes what it can."""
    nan = np.full((T, S), np.nan)
    fields = {**panel.fields, "open": nan, "high": nan, "low": nan, "volume": nan}
    close_only = Panel(panel.dates, panel.symbols, fields, {})
    default = ["log_return", "return_5", "return_20", "volatility_20", "range_hl", "gap_open"]
    pipe = FeaturePipeline([*default, "volume_z_20", "rsi_14"], [])
    with caplog.at_level(logging.WARNING, logger="plusultra.data.features.pipeline"):
        x, names = pipe.compute(close_only)
    assert names == ["log_return", "return_5", "return_20", "volatility_20", "rsi_14"]
    assert pipe.skipped == {
        "range_hl": "needs column 'high', which the panel does not have (or is all NaN)",
        "gap_open": "needs column 'open', which the panel does not have (or is all NaN)",
        "volume_z_20": "needs column 'volume', which the panel does not have (or is all NaN)",
    }
    for name, reason in pipe.skipped.items():  # one logged line per skipped feature
        assert f"skipping feature '{name}': it {reason}" in caplog.text
    assert x.shape == (T, S, 5) and np.isfinite(x[260]).all()  # a bar without gaps nearby


def test_a_symbol_without_opens_skips_the_feature_for_all(panel):
    """A field some symbols lack entirely would make them lose every window: skip it."""
    open_ = panel.fields["open"].copy()
    open_[:, [0, 2]] = np.nan
    mixed = Panel(panel.dates, panel.symbols, {**panel.fields, "open": open_}, {})
    pipe = FeaturePipeline(["gap_open", "range_hl"])
    assert pipe.compute(mixed)[1] == ["range_hl"]
    assert pipe.skipped == {
        "gap_open": "needs column 'open', which 2 symbol(s) have no value of (S0, S2)"
    }
    open_[5, 0] = open_[5, 2] = 50.0  # a single value each: computed (NaN elsewhere, as any gap)
    assert pipe.compute(mixed)[1] == ["gap_open", "range_hl"] and pipe.skipped == {}
