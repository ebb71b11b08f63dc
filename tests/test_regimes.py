"""Regime labels: naive references, causality, warm-up, and behaviour on the synthetic market."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest

from plusultra.data.datasets.panel import Panel, load_panel, tradable_mask
from plusultra.data.features.pipeline import (
    NO_SECTORS,
    REGIME_FEATURES,
    FeaturePipeline,
    regime_missing,
)
from plusultra.data.features.regimes import (
    N_CLASSES,
    REGIME_LABELS,
    liquidity_regime,
    regime_labels,
    sector_rank,
    sector_rotation,
    volatility_regime,
)
from plusultra.data.io.fixture import _regimes, generate_fixture
from plusultra.errors import ConfigError

WINDOW, HISTORY = 10, 40  # small enough for the naive loops; 39 * q is never an integer


def make_panel(
    close: np.ndarray,
    volume: np.ndarray,
    sectors: list[str | None],
    delisted: list[str | None] | None = None,
) -> Panel:
    """A hand-made Panel over business days from 2020-01-01 (close doubles as open/high/low)."""
    n_bars, n_symbols = close.shape
    symbols = [f"S{i:02d}" for i in range(n_symbols)]
    assets = pd.DataFrame(
        {"sector": sectors, "listed": None, "delisted": delisted or [None] * n_symbols},
        index=pd.Index(symbols, name="symbol"),
    )
    fields = {k: close.copy() for k in ("open", "high", "low", "close")}
    fields["volume"] = volume.copy()
    dates = pd.bdate_range("2020-01-01", periods=n_bars).to_numpy()
    return Panel(dates, symbols, fields, {}, assets)


def random_panel(n_bars: int = 160, n_symbols: int = 7, seed: int = 0) -> Panel:
    """Random walk with a late listing, an early delisting and scattered missing bars."""
    rng = np.random.default_rng(seed)
    scale = np.where(np.arange(n_bars)[:, None] % 50 < 20, 0.03, 0.01)  # vol regimes
    close = 50 * np.exp(np.cumsum(scale * rng.standard_normal((n_bars, n_symbols)), axis=0))
    volume = np.round(np.exp(rng.normal(10, 0.5, (n_bars, n_symbols))))
    volume[rng.random(volume.shape) < 0.02] = 0.0  # zero-volume bars
    close[:30, 1] = np.nan  # late listing
    close[120:, 2] = np.nan  # early delisting (last bar 119)
    close[rng.random(close.shape) < 0.01] = np.nan  # missing days
    volume[np.isnan(close)] = np.nan
    dates = pd.bdate_range("2020-01-01", periods=n_bars)
    delisted = [None, None, str(dates[119].date())] + [None] * (n_symbols - 3)
    sectors = ["A", "B", "A", "C", "B", None, "C"][:n_symbols]
    return make_panel(close, volume, sectors, delisted)


# ------------------------------------------------------------------ naive references
def label_ref(stat: np.ndarray, history: int, quantiles, min_periods: int | None) -> np.ndarray:
    """Loop over (t, s): class of stat[t, s] among the finite stat[t - history + 1 .. t, s]."""
    need = history if min_periods is None else min_periods
    out = np.full(stat.shape, -1, dtype=np.int8)
    for s in range(stat.shape[1]):
        for t in range(stat.shape[0]):
            past = stat[max(0, t - history + 1) : t + 1, s]
            past = past[np.isfinite(past)]
            if np.isnan(stat[t, s]) or past.size < need:
                continue
            thresholds = np.quantile(past, quantiles, method="linear")
            out[t, s] = int(np.sum(stat[t, s] > thresholds))
    return out


def volatility_ref(close: np.ndarray, window: int) -> np.ndarray:
    """Loop: sample std (ddof 1) of the last `window` log returns, NaN if any is missing."""
    out = np.full(close.shape, np.nan)
    for s in range(close.shape[1]):
        for t in range(window, close.shape[0]):
            c = close[t - window : t + 1, s]
            r = np.log(c[1:] / c[:-1])
            if np.all(np.isfinite(r)):
                out[t, s] = np.std(r, ddof=1)
    return out


def dollar_volume_ref(close: np.ndarray, volume: np.ndarray, window: int) -> np.ndarray:
    """Loop: mean of log(1 + close * volume) over the last `window` bars, NaN if any missing."""
    out = np.full(close.shape, np.nan)
    for s in range(close.shape[1]):
        for t in range(window - 1, close.shape[0]):
            dv = np.log1p(close[t - window + 1 : t + 1, s] * volume[t - window + 1 : t + 1, s])
            if np.all(np.isfinite(dv)):
                out[t, s] = np.mean(dv)
    return out


def sector_ref(panel: Panel, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop over bars and sectors: (relative strength, rank in [0, 1]) per symbol, (T, S)."""
    close = panel.fields["close"]
    tradable = tradable_mask(panel)
    sectors = list(panel.assets["sector"])
    names = sorted({x for x in sectors if pd.notna(x)})
    strength = np.full(close.shape, np.nan)
    rank = np.full(close.shape, np.nan)
    for t in range(window, close.shape[0]):
        rets = {}
        for s, sec in enumerate(sectors):
            r = np.log(close[t, s] / close[t - window, s])
            if pd.notna(sec) and tradable[t, s] and np.isfinite(r):
                rets.setdefault(sec, []).append(r)
        if not rets:
            continue
        universe = np.mean([r for group in rets.values() for r in group])
        rel = {k: np.mean(v) - universe for k, v in rets.items()}
        for s, sec in enumerate(sectors):
            if sec not in rel or np.isnan(close[t, s]):
                continue
            strength[t, s] = rel[sec]
            if len(rel) >= 2:
                values = np.array([rel[k] for k in names if k in rel])
                lower, equal = np.sum(values < rel[sec]), np.sum(values == rel[sec])
                rank[t, s] = (lower + (equal - 1) / 2) / (len(values) - 1)
    return strength, rank


# ------------------------------------------------------------------ vectorised == naive
@pytest.mark.parametrize("min_periods", [None, HISTORY // 2])
def test_volatility_regime_matches_reference(min_periods):
    panel = random_panel()
    got = volatility_regime(panel, WINDOW, HISTORY, min_periods=min_periods)
    vol = volatility_ref(panel.fields["close"], WINDOW)
    want = label_ref(vol, HISTORY, (1 / 3, 2 / 3), min_periods)
    assert got.dtype == np.int8 and got.shape == panel.shape
    np.testing.assert_array_equal(got, want)
    assert {0, 1, 2} <= set(np.unique(got))


@pytest.mark.parametrize("min_periods", [None, HISTORY // 2])
def test_liquidity_regime_matches_reference(min_periods):
    panel = random_panel(seed=1)
    got = liquidity_regime(panel, WINDOW, HISTORY, min_periods=min_periods)
    dv = dollar_volume_ref(panel.fields["close"], panel.fields["volume"], WINDOW)
    want = label_ref(dv, HISTORY, (1 / 3, 2 / 3), min_periods)
    np.testing.assert_array_equal(got, want)
    assert {0, 1, 2} <= set(np.unique(got))


def test_other_quantiles_give_more_classes():
    panel = random_panel(seed=2)
    q = (0.2, 0.5, 0.9)
    got = volatility_regime(panel, WINDOW, HISTORY, quantiles=q)
    want = label_ref(volatility_ref(panel.fields["close"], WINDOW), HISTORY, q, None)
    np.testing.assert_array_equal(got, want)
    assert set(np.unique(got)) == {-1, 0, 1, 2, 3}


@pytest.mark.parametrize("window", [5, 20])
def test_sector_rotation_and_rank_match_reference(window):
    panel = random_panel(seed=3)
    strength, rank = sector_ref(panel, window)
    np.testing.assert_allclose(sector_rotation(panel, window), strength, rtol=0, atol=1e-12)
    np.testing.assert_allclose(sector_rank(panel, window), rank, rtol=0, atol=1e-12)
    assert np.isfinite(rank).any()


# ------------------------------------------------------------------ causality and warm-up
FUNCTIONS = {
    "volatility": functools.partial(volatility_regime, window=WINDOW, history=HISTORY),
    "volatility_min_periods": functools.partial(
        volatility_regime, window=WINDOW, history=HISTORY, min_periods=10
    ),
    "liquidity": functools.partial(liquidity_regime, window=WINDOW, history=HISTORY),
    "sector_rotation": functools.partial(sector_rotation, window=15),
    "sector_rank": functools.partial(sector_rank, window=15),
}


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("cut", [60, 110])
def test_future_perturbation_leaves_the_past_bit_identical(name, cut):
    """Rewriting (and deleting) every bar after `cut` must not change any value at t <= cut."""
    fn = FUNCTIONS[name]
    panel = random_panel(seed=4)
    before = fn(panel)
    rng = np.random.default_rng(99)
    future = np.arange(panel.shape[0])[:, None] > cut
    noise = np.exp(0.2 * rng.standard_normal(panel.shape))
    gone = future & (rng.random(panel.shape) < 0.1)
    for key in ("open", "high", "low", "close"):
        panel.fields[key] = np.where(future, panel.fields[key] * noise, panel.fields[key])
        panel.fields[key][gone] = np.nan
    panel.fields["volume"] = np.where(
        future, panel.fields["volume"] * noise**3, panel.fields["volume"]
    )
    after = fn(panel)
    np.testing.assert_array_equal(after[: cut + 1], before[: cut + 1])
    assert not np.array_equal(after[cut + 1 :], before[cut + 1 :], equal_nan=True)


def test_warm_up_length():
    """A symbol with every bar: vol needs window + history - 1 bars, liquidity one fewer."""
    rng = np.random.default_rng(5)
    close = 10 * np.exp(np.cumsum(0.01 * rng.standard_normal((120, 2)), axis=0))
    panel = make_panel(close, np.exp(rng.normal(8, 1, close.shape)), ["A", "B"])
    vol = volatility_regime(panel, WINDOW, HISTORY)
    liq = liquidity_regime(panel, WINDOW, HISTORY)
    assert np.all(vol[: WINDOW + HISTORY - 1] == -1) and np.all(vol[WINDOW + HISTORY - 1 :] >= 0)
    assert np.all(liq[: WINDOW + HISTORY - 2] == -1) and np.all(liq[WINDOW + HISTORY - 2 :] >= 0)


def test_missing_bar_is_undefined():
    panel = random_panel(seed=6)
    missing = np.isnan(panel.fields["close"])
    for labels in regime_labels(panel).values():
        assert np.all(labels[missing] == -1)
    for fn in (sector_rotation, sector_rank):
        assert np.all(np.isnan(fn(panel, 10)[missing]))


# ------------------------------------------------------------------ sector semantics
def test_sector_rotation_ranks_a_trending_sector_first():
    n_bars = 80
    t = np.arange(n_bars)[:, None]
    drift = np.array([0.004, 0.004, 0.0, 0.0, -0.003, -0.003, 0.001])  # A A B B C C (none)
    close = 20 * np.exp(drift * t + 0.001 * np.sin(t + np.arange(7)))
    panel = make_panel(close, np.ones_like(close), ["A", "A", "B", "B", "C", "C", None])
    window = 20
    strength, rank = sector_rotation(panel, window), sector_rank(panel, window)
    assert np.all(np.isnan(strength[:window])) and np.all(np.isnan(rank[:window]))
    later = slice(window, None)
    assert np.all(strength[later, 0] > 0) and np.all(strength[later, 4] < 0)
    np.testing.assert_array_equal(rank[later, :6], np.tile([1, 1, 0.5, 0.5, 0, 0], (60, 1)))
    assert np.all(np.isnan(strength[:, 6])) and np.all(np.isnan(rank[:, 6]))
    # equal weight over symbols: the member-weighted sector strengths sum to zero
    np.testing.assert_allclose(strength[later, :6].sum(axis=1), 0.0, atol=1e-12)


def test_sector_rank_needs_two_sectors():
    close = np.exp(np.cumsum(np.full((30, 3), 0.01), axis=0))
    one_sector = make_panel(close, np.ones_like(close), ["A", "A", "A"])
    assert np.all(np.isnan(sector_rank(one_sector, 5)))
    np.testing.assert_allclose(sector_rotation(one_sector, 5)[5:], 0.0, atol=1e-15)


def test_sector_rotation_ignores_delisted_symbols():
    """After its delisting date a symbol's (would-be) bars do not move its sector."""
    n_bars = 40
    close = np.exp(np.cumsum(np.full((n_bars, 4), 0.001), axis=0))
    close[25:, 0] *= np.exp(np.arange(n_bars - 25) * 0.05)  # bars after delisting: ignored
    dates = pd.bdate_range("2020-01-01", periods=n_bars)
    delisted = [str(dates[25].date()), None, None, None]
    panel = make_panel(close, np.ones_like(close), ["A", "A", "B", "B"], delisted)
    strength = sector_rotation(panel, 5)
    np.testing.assert_allclose(strength[5:, 1:], 0.0, atol=1e-12)


# ------------------------------------------------------------------ registry
def test_registry_and_errors():
    panel = random_panel(seed=7)
    assert set(REGIME_LABELS) == set(N_CLASSES) == {"volatility", "liquidity"}
    labels = regime_labels(panel)
    assert list(labels) == list(REGIME_LABELS)
    for name, lab in labels.items():
        assert lab.dtype == np.int8 and lab.shape == panel.shape
        assert lab.min() >= -1 and lab.max() <= N_CLASSES[name] - 1
    np.testing.assert_array_equal(
        regime_labels(panel, ["liquidity"])["liquidity"], liquidity_regime(panel)
    )
    with pytest.raises(ConfigError, match=r"valid: \['liquidity', 'volatility'\]"):
        regime_labels(panel, ["volatility", "momentum"])
    for bad in ((0.5, 0.3), (0.0, 0.5), (), (0.5, 1.0)):
        with pytest.raises(ConfigError, match="quantiles"):
            volatility_regime(panel, quantiles=bad)
    with pytest.raises(ConfigError, match="window"):
        volatility_regime(panel, window=1)
    with pytest.raises(ConfigError, match="min_periods"):
        liquidity_regime(panel, history=20, min_periods=21)


# ------------------------------------------------------------------ the synthetic market
@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """24 symbols x 900 days of the synthetic market and its hidden regime path."""
    seed, n_days = 1, 900
    path = generate_fixture(tmp_path_factory.mktemp("regimes") / "m.sqlite", 24, n_days, seed)
    # generate_fixture draws the regime chain first from default_rng(seed): replay it
    return load_panel(path, validate=False), _regimes(np.random.default_rng(seed), n_days)


def _class_shares(labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Share of labels 0/1/2 over the defined labels of the given bars."""
    lab = labels[rows]
    lab = lab[lab >= 0]
    return np.bincount(lab, minlength=3) / lab.size


def test_stressed_market_is_high_volatility(market):
    panel, hidden = market
    labels = volatility_regime(panel, history=250)
    calm, stressed = _class_shares(labels, hidden == 0), _class_shares(labels, hidden == 2)
    assert stressed[2] > 0.6 and calm[2] < 0.15
    assert calm[0] > 0.5 and stressed[0] < 0.1


def test_liquidity_label_tracks_volume(market):
    panel, hidden = market
    labels = liquidity_regime(panel, history=250)
    log_volume = pd.DataFrame(np.log(panel.fields["volume"])).rolling(20).mean().to_numpy(copy=True)
    log_volume -= np.nanmean(log_volume, axis=0)  # within-symbol variation only
    means = [np.nanmean(log_volume[labels == k]) for k in range(3)]
    assert means[0] < means[1] < means[2]
    # the fixture's volume rises with |return| / vol, so stress is liquid
    assert _class_shares(labels, hidden == 2)[2] > _class_shares(labels, hidden == 0)[2] + 0.2


# ------------------------------------------------------------------ regime columns in the pipeline
def _regime_columns(panel: Panel, caplog) -> tuple[FeaturePipeline, np.ndarray, list[str]]:
    pipe = FeaturePipeline(["log_return"], regimes=list(REGIME_FEATURES))
    with caplog.at_level("WARNING", logger="plusultra.data.features.pipeline"):
        x, names = pipe.compute(panel)
    return pipe, x, names


@pytest.mark.parametrize("sectors", [[None] * 7, ["A"] * 7, ["A", None] * 3 + ["A"]])
def test_sector_columns_are_skipped_without_two_sectors(sectors, caplog):
    """NULL sectors (sp500, imported data) or one sector: skipped with the reason, not NaN."""
    base = random_panel()
    panel = Panel(base.dates, base.symbols, base.fields, {}, base.assets.assign(sector=sectors))
    pipe, _, names = _regime_columns(panel, caplog)
    assert names == ["log_return", "regime_volatility", "regime_liquidity"]
    for name in ("regime_sector_strength", "regime_sector_rank"):
        assert pipe.skipped[name] == NO_SECTORS
    assert "skipping regime 'sector_rank'" in caplog.text and "assets.sector" in caplog.text
    no_assets = Panel(base.dates, base.symbols, base.fields, {}, None)
    assert regime_missing("sector_strength", no_assets) == NO_SECTORS


def test_liquidity_is_skipped_without_volume(caplog):
    base = random_panel()
    fields = {**base.fields, "volume": np.full(base.shape, np.nan)}
    panel = Panel(base.dates, base.symbols, fields, {}, base.assets)
    pipe, _, names = _regime_columns(panel, caplog)
    assert "regime_liquidity" not in names and "'volume'" in pipe.skipped["regime_liquidity"]


def test_symbols_without_a_sector_get_neutral_sector_values(caplog):
    """Among sectored symbols, a NULL sector gets strength 0 and rank 0.5 wherever the column
    is defined for the universe and the symbol has a bar; the others are unchanged."""
    panel = random_panel(seed=3)  # S05 has no sector
    _, x, names = _regime_columns(panel, caplog)
    strength = x[..., names.index("regime_sector_strength")]
    rank = x[..., names.index("regime_sector_rank")]
    assert "1 symbol(s) without a sector" in caplog.text and "S05" in caplog.text
    kernel = {"strength": sector_rotation(panel, 60), "rank": sector_rank(panel, 60)}
    for got, want, neutral in ((strength, kernel["strength"], 0.0), (rank, kernel["rank"], 0.5)):
        others = [s for s in range(7) if s != 5]
        np.testing.assert_allclose(got[:, others], want[:, others].astype(np.float32))
        defined = np.isfinite(want[:, others]).any(axis=1) & np.isfinite(
            panel.fields["close"][:, 5]
        )
        assert defined.sum() > 50
        assert (got[defined, 5] == neutral).all() and np.isnan(got[~defined, 5]).all()
