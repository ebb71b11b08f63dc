"""Performance metrics: hand-computed values, edge cases, and agreement with the loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.metrics.performance import (
    METRIC_NAMES,
    compute_metrics,
    metrics_reference,
)

NAN = float("nan")
KEYS = {
    "total_return",
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "hit_rate",
    "n_periods",
}


def _check(got: dict[str, float], expected: dict[str, float]) -> None:
    for name, value in expected.items():
        if math.isnan(value):
            assert math.isnan(got[name]), f"{name}: expected NaN, got {got[name]}"
        else:
            assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), name


def _both(returns: list[float], ppy: int) -> list[dict[str, float]]:
    return [compute_metrics(np.array(returns), ppy), metrics_reference(np.array(returns), ppy)]


def test_keys_exact() -> None:
    assert set(METRIC_NAMES) == KEYS
    assert set(compute_metrics(np.array([0.01, -0.02]))) == KEYS
    assert set(compute_metrics(np.array([0.01, -0.02]), turnover=np.ones(2))) == KEYS | {"turnover"}
    assert set(metrics_reference(np.array([0.01, -0.02]))) == KEYS


def test_known_drawdown_path_hand_computed() -> None:
    # r = [+10 %, -20 %, +5 %], 3 periods per year, so T is exactly one year.
    # Equity: 1 -> 1.1 -> 0.88 -> 0.924.  Peak 1.1, trough 0.88: drawdown 0.88 / 1.1 - 1 = -0.2.
    # Mean = -0.05 / 3 = -1/60.  Deviations (1/60 units): 7, -11, 4 -> squares 49 + 121 + 16 = 186,
    # sample variance = 186 / 3600 / 2 = 186 / 7200.
    # Downside: only -0.2 counts, sqrt(0.04 / 3) = 0.2 / sqrt(3).
    expected = {
        "total_return": -0.076,
        "annual_return": -0.076,  # one year: CAGR = total
        "annual_volatility": math.sqrt(186 / 7200 * 3),
        "sharpe": -1 / 60 / math.sqrt(186 / 7200) * math.sqrt(3),
        "sortino": -1 / 60 / (0.2 / math.sqrt(3)) * math.sqrt(3),  # = -0.25
        "max_drawdown": -0.2,
        "calmar": -0.076 / 0.2,  # = -0.38
        "hit_rate": 2 / 3,
        "n_periods": 3.0,
    }
    assert expected["sortino"] == pytest.approx(-0.25)
    for got in _both([0.10, -0.20, 0.05], ppy=3):
        _check(got, expected)


def test_annual_return_is_cagr_over_fractional_years() -> None:
    # One period of +21 % with 2 periods per year is half a year: 1.21 ** 2 - 1 = 0.4641.
    for got in _both([0.21], ppy=2):
        assert got["annual_return"] == pytest.approx(0.4641)
    # +10 %, -10 % with 1 period per year: total 1.1 * 0.9 - 1 = -0.01 over two years.
    for got in _both([0.10, -0.10], ppy=1):
        assert got["total_return"] == pytest.approx(-0.01)
        assert got["annual_return"] == pytest.approx(math.sqrt(0.99) - 1)


def test_hit_rate_ignores_zero_periods() -> None:
    for got in _both([0.1, 0.0, -0.1, 0.2, 0.0], ppy=252):
        assert got["hit_rate"] == pytest.approx(2 / 3)


def test_volatility_and_sharpe_hand_computed() -> None:
    # r = [0.01, 0.03]: mean 0.02, deviations +-0.01, sample variance 2e-4 / 1, std sqrt(2)/100.
    std = math.sqrt(2) / 100
    for got in _both([0.01, 0.03], ppy=252):
        assert got["annual_volatility"] == pytest.approx(std * math.sqrt(252))
        assert got["sharpe"] == pytest.approx(0.02 / std * math.sqrt(252))
        assert math.isnan(got["sortino"])  # no negative period
        assert got["max_drawdown"] == 0.0 and math.isnan(got["calmar"])


def test_constant_positive_returns() -> None:
    expected = {
        "total_return": 1.01**5 - 1,
        "annual_return": 1.01**12 - 1,  # 5 periods of 12 a year: (1.01 ** 5) ** (12 / 5)
        "annual_volatility": 0.0,
        "sharpe": NAN,  # zero volatility
        "sortino": NAN,  # no downside
        "max_drawdown": 0.0,
        "calmar": NAN,  # no drawdown
        "hit_rate": 1.0,
        "n_periods": 5.0,
    }
    for got in _both([0.01] * 5, ppy=12):
        _check(got, expected)


def test_constant_negative_returns() -> None:
    expected = {
        "total_return": 0.99**4 - 1,
        "annual_volatility": 0.0,
        "sharpe": NAN,
        "sortino": -math.sqrt(4),  # mean -0.01 over downside deviation 0.01
        "max_drawdown": 0.99**4 - 1,  # the start is the peak
        "calmar": (0.99**4 - 1) / (1 - 0.99**4),  # one year: CAGR = total -> -1
        "hit_rate": 0.0,
    }
    for got in _both([-0.01] * 4, ppy=4):
        _check(got, expected)


def test_all_zeros() -> None:
    expected = {
        "total_return": 0.0,
        "annual_return": 0.0,
        "annual_volatility": 0.0,
        "sharpe": NAN,
        "sortino": NAN,
        "max_drawdown": 0.0,
        "calmar": NAN,
        "hit_rate": NAN,  # no nonzero period
        "n_periods": 10.0,
    }
    for got in _both([0.0] * 10, ppy=252):
        _check(got, expected)
        assert math.copysign(1.0, got["max_drawdown"]) == 1.0  # not -0.0


def test_single_period() -> None:
    up = {
        "total_return": 0.05,
        "annual_return": 1.05**12 - 1,
        "annual_volatility": NAN,  # sample std needs two periods
        "sharpe": NAN,
        "sortino": NAN,
        "max_drawdown": 0.0,
        "calmar": NAN,
        "hit_rate": 1.0,
        "n_periods": 1.0,
    }
    down = {
        "total_return": -0.1,
        "annual_return": -0.1,
        "annual_volatility": NAN,
        "sharpe": NAN,
        "sortino": -1.0,  # -0.1 / 0.1 * sqrt(1)
        "max_drawdown": -0.1,
        "calmar": -1.0,
        "hit_rate": 0.0,
    }
    for got in _both([0.05], ppy=12):
        _check(got, up)
    for got in _both([-0.1], ppy=1):
        _check(got, down)


def test_empty_input_is_all_nan() -> None:
    for got in _both([], ppy=252):
        assert got["n_periods"] == 0.0
        assert all(math.isnan(v) for k, v in got.items() if k != "n_periods")
    assert math.isnan(compute_metrics(np.zeros(0), turnover=np.zeros(0))["turnover"])


def test_wiped_out_and_negative_equity() -> None:
    for got in _both([-1.0, 0.1], ppy=2):  # equity 1 -> 0 -> 0
        assert got["total_return"] == -1.0 and got["annual_return"] == -1.0
        assert got["max_drawdown"] == -1.0 and got["calmar"] == -1.0
    for got in _both([-1.5, 0.1], ppy=2):  # equity 1 -> -0.5 -> -0.55
        assert math.isnan(got["annual_return"]) and math.isnan(got["calmar"])
        assert got["max_drawdown"] == pytest.approx(-1.55)


def test_never_inf() -> None:
    for got in _both([100.0, 100.0], ppy=252):  # CAGR 10201 ** 126 overflows
        assert not any(math.isinf(v) for v in got.values())
        assert math.isnan(got["annual_return"]) and math.isnan(got["calmar"])


def test_turnover_is_mean_when_given() -> None:
    got = compute_metrics(np.array([0.01, 0.02, -0.01]), turnover=np.array([1.0, 0.2, 0.3]))
    assert got["turnover"] == pytest.approx(0.5)
    assert "turnover" not in compute_metrics(np.array([0.01, 0.02]))


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_on_random_inputs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    r = rng.normal(0.0005, 0.015, size=n)
    r[rng.random(n) < 0.1] = 0.0
    ppy = int(rng.choice([1, 12, 52, 252]))
    fast, slow = compute_metrics(r, ppy), metrics_reference(r, ppy)
    assert set(fast) == set(slow)
    for name in fast:
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-9, atol=1e-14, err_msg=name)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"returns": np.zeros((2, 2))}, DataError, "1-D"),
        ({"returns": np.array([0.1, NAN])}, DataError, r"returns\[1\]"),
        ({"returns": np.zeros(3), "turnover": np.zeros(2)}, DataError, "turnover"),
        ({"returns": np.zeros(3), "periods_per_year": 0}, ConfigError, "periods_per_year"),
        ({"returns": np.zeros(3), "periods_per_year": -5}, ConfigError, "periods_per_year"),
    ],
)
def test_bad_input(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        compute_metrics(**kwargs)


# ---------------------------------------------------------------- information coefficient
def _ic_reference(signal, realized, rank):
    """Row by row with pandas' own correlation: the obviously-correct version."""
    import pandas as pd

    out = []
    for x, y in zip(signal, realized, strict=True):
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
            out.append(np.nan)
            continue
        method = "spearman" if rank else "pearson"
        out.append(pd.Series(x[ok]).corr(pd.Series(y[ok]), method=method))
    return np.array(out)


@pytest.mark.parametrize("rank", [False, True])
def test_information_coefficient_matches_reference(rank):
    from plusultra.evaluation.metrics.performance import information_coefficient

    rng = np.random.default_rng(3)
    signal = rng.normal(size=(60, 9))
    realized = 0.3 * signal + rng.normal(size=(60, 9))
    signal[rng.random(signal.shape) < 0.15] = np.nan
    realized[rng.random(signal.shape) < 0.1] = np.nan
    signal[5] = 1.0  # constant row -> NaN
    signal[7, :7] = np.nan  # too few symbols -> NaN
    signal[9, :4] = 0.5  # ties
    got = information_coefficient(signal, realized, rank=rank)
    np.testing.assert_allclose(got, _ic_reference(signal, realized, rank), atol=1e-12)
    assert np.isnan(got[5]) and np.isnan(got[7])


def test_ic_summary_hand_case():
    from plusultra.evaluation.metrics.performance import ic_summary

    signal = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    realized = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.4], [0.1, 0.2, 0.3]])
    out = ic_summary(signal, realized)
    ic2 = np.corrcoef([1, 2, 3], [0.1, 0.2, 0.4])[0, 1]
    assert out["ic"] == pytest.approx((1.0 + ic2 - 1.0) / 3)
    assert out["rank_ic"] == pytest.approx(1 / 3)
    per_bar = np.array([1.0, ic2, -1.0])
    assert out["ic_ir"] == pytest.approx(per_bar.mean() / per_bar.std(ddof=1))
