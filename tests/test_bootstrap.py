"""Stationary bootstrap: a loop reference with the same draws, intervals, coverage, arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.metrics import bootstrap
from plusultra.evaluation.metrics.bootstrap import (
    annual_return_interval,
    sharpe_interval,
    stationary_bootstrap,
)
from plusultra.evaluation.metrics.performance import compute_metrics

NAN = float("nan")


# ---------------------------------------------------------------- naive loop references


def bootstrap_indices_ref(rng: np.random.Generator, n_t: int, mean_block: float) -> list[int]:
    """One replicate: 2 * T scalar draws (T block tests, then T starts), then walk the blocks."""
    test = [rng.random() for _ in range(n_t)]
    start = [rng.random() for _ in range(n_t)]
    idx = []
    for t in range(n_t):
        if t == 0 or test[t] < 1.0 / mean_block:
            i = min(int(start[t] * n_t), n_t - 1)  # a new block at a uniform position
        else:
            i = (idx[-1] + 1) % n_t  # the block runs on, wrapping around
        idx.append(i)
    return idx


def quantile_ref(values: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default method)."""
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def stationary_bootstrap_ref(returns, statistic, n_boot, mean_block, level, seed):
    """Python loop over replicates with the same random draws as the vectorised version."""
    r = np.asarray(returns, dtype=float)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = bootstrap_indices_ref(rng, r.size, mean_block)
        value = float(statistic(r[idx][None, :])[0])
        if math.isfinite(value):
            stats.append(value)
    point = float(statistic(r[None, :])[0])
    return point, quantile_ref(stats, (1 - level) / 2), quantile_ref(stats, (1 + level) / 2)


def _mean_stat(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


def _random_returns(seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_t(4, size=n) * 0.01 + 0.0003


# ---------------------------------------------------------------- stationary bootstrap


@pytest.mark.parametrize("mean_block", [1, 2.5, 7, 40])
def test_resample_indices_match_loop_with_same_draws(mean_block: float) -> None:
    n_t, n_boot = 30, 25
    rng = np.random.default_rng(3)
    fast = bootstrap._resample_indices(rng.random((n_boot, 2, n_t)), 1.0 / mean_block)
    rng = np.random.default_rng(3)
    slow = np.array([bootstrap_indices_ref(rng, n_t, mean_block) for _ in range(n_boot)])
    np.testing.assert_array_equal(fast, slow)


def test_resample_indices_blocks_wrap_around_and_have_geometric_mean_length() -> None:
    n_t = 50
    idx = bootstrap._resample_indices(np.random.default_rng(0).random((400, 2, n_t)), 1 / 8)
    runs_on = (np.diff(idx, axis=1) % n_t) == 1  # (B, T - 1) continuation of a block
    assert ((idx[:, :-1] == n_t - 1) & (idx[:, 1:] == 0)).any()  # some block wraps
    # A new block starts with probability 1/8 at each t >= 1 (geometric lengths, mean 8); one
    # landing exactly on the next index (chance 1/T) looks like a continuation.
    assert (~runs_on).mean() == pytest.approx(1 / 8 * (1 - 1 / n_t), rel=0.05)


@pytest.mark.parametrize("chunk", [1, 97, 10_000_000])
def test_stationary_bootstrap_matches_loop_reference(monkeypatch, chunk: int) -> None:
    """Same draws and the same answer whatever the chunking of the replicates."""
    monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", chunk)
    r = _random_returns(1, 60)
    stat = bootstrap._sharpe_stat(252)
    got = stationary_bootstrap(r, stat, n_boot=150, mean_block=4, level=0.9, seed=11)
    ref = stationary_bootstrap_ref(r, stat, 150, 4, 0.9, 11)
    assert got == ref  # identical draws, identical samples: exact, not approximate
    got = stationary_bootstrap(r, _mean_stat, n_boot=150, seed=5)  # default block: 60**(1/3) -> 4
    assert got == stationary_bootstrap_ref(r, _mean_stat, 150, 4, 0.95, 5)


def test_stationary_bootstrap_is_seeded_and_nan_when_undefined() -> None:
    r = _random_returns(2, 100)
    assert stationary_bootstrap(r, _mean_stat, 200, seed=1) == stationary_bootstrap(
        r, _mean_stat, 200, seed=1
    )
    assert stationary_bootstrap(r, _mean_stat, 200, seed=1) != stationary_bootstrap(
        r, _mean_stat, 200, seed=2
    )
    assert all(math.isnan(v) for v in stationary_bootstrap(np.array([]), _mean_stat))
    point, lo, hi = sharpe_interval(np.full(10, 0.01), n_boot=50)  # flat: Sharpe undefined
    assert math.isnan(point) and math.isnan(lo) and math.isnan(hi)


def test_interval_points_equal_compute_metrics() -> None:
    r = _random_returns(4, 400)
    m = compute_metrics(r, 252)
    point, lo, hi = sharpe_interval(r, 252, n_boot=300)
    assert point == pytest.approx(m["sharpe"], rel=1e-12)
    assert lo < point < hi
    point, lo, hi = annual_return_interval(r, 252, n_boot=300)
    assert point == pytest.approx(m["annual_return"], rel=1e-12)
    assert lo < point < hi


def test_sharpe_interval_covers_truth_and_shrinks_with_length() -> None:
    # iid normal returns, mean 0.0005 and std 0.01 per day: true annual Sharpe 0.05 * sqrt(252).
    true_sharpe = 0.05 * math.sqrt(252)
    rng = np.random.default_rng(2024)
    covered, n_series = 0, 20
    for _ in range(n_series):
        r = rng.normal(0.0005, 0.01, size=1000)
        _, lo, hi = sharpe_interval(r, n_boot=400, seed=1)
        covered += lo <= true_sharpe <= hi
    assert covered >= 16  # nominal 95 %: 19 of 20 expected, 16 allows for chance
    widths = {}
    for n_t in (500, 4000):
        r = rng.normal(0.0005, 0.01, size=n_t)
        _, lo, hi = sharpe_interval(r, n_boot=500, seed=1)
        assert lo <= true_sharpe <= hi
        widths[n_t] = hi - lo
    # The width scales like 1 / sqrt(T): about sqrt(8) ~ 2.8 times narrower.
    assert 2.0 < widths[500] / widths[4000] < 4.0


def test_stationary_bootstrap_large_input_is_chunked() -> None:
    r = _random_returns(9, 5000)
    point, lo, hi = sharpe_interval(r, n_boot=2000)
    assert lo < point < hi
    assert bootstrap._CHUNK_ELEMENTS < 5000 * 2000  # the run above needed several chunks


def test_stationary_bootstrap_bad_arguments() -> None:
    r = _random_returns(0, 20)
    with pytest.raises(ConfigError, match="n_boot"):
        stationary_bootstrap(r, _mean_stat, n_boot=0)
    with pytest.raises(ConfigError, match="mean_block"):
        stationary_bootstrap(r, _mean_stat, mean_block=0.5)
    with pytest.raises(ConfigError, match="level"):
        stationary_bootstrap(r, _mean_stat, level=1.0)
    with pytest.raises(DataError, match="finite"):
        stationary_bootstrap(np.array([0.1, NAN]), _mean_stat)
