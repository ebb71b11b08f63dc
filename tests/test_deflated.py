"""Deflated Sharpe ratio: the paper's example, SR0, limits and bad arguments."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.metrics.deflated import deflated_sharpe, expected_max_sharpe

NAN = float("nan")


# ---------------------------------------------------------------- deflated Sharpe


def test_deflated_sharpe_paper_example() -> None:
    """Bailey & Lopez de Prado (2014), numerical example: DSR ~ 0.9004.

    Annual Sharpe 2.5 and annual variance of trial Sharpes 0.5 over N = 100 trials, T = 1250
    daily returns (250 a year), skew -3, kurtosis 10. Per period:
    SR = 2.5 / sqrt(250) = 0.158113883, V = 0.5 / 250 = 0.002.
    Z(1 - 1/100) = 2.326347874, Z(1 - 1/(100 e)) = 2.680210445, gamma = 0.5772156649:
    SR0 = sqrt(0.002) * (0.4227843351 * 2.326347874 + 0.5772156649 * 2.680210445)
        = 0.04472135955 * 2.530611... = 0.1131720 (the paper's 0.1132).
    z = (0.158113883 - 0.1131720) * sqrt(1249)
        / sqrt(1 + 3 * 0.158113883 + 9 / 4 * 0.025) = 1.283816, Phi(z) = 0.900397.
    """
    sr, var = 2.5 / math.sqrt(250), 0.5 / 250
    sr0 = math.sqrt(0.002) * (0.4227843351 * 2.326347874 + 0.5772156649 * 2.680210445)
    assert sr0 == pytest.approx(0.1131720, abs=1e-7)
    z = (0.158113883 - sr0) * math.sqrt(1249) / math.sqrt(1 + 3 * 0.158113883 + 2.25 * 0.025)
    assert z == pytest.approx(1.283816, abs=1e-6)
    got = deflated_sharpe(
        sr, n_trials=100, sharpe_variance=var, n_periods=1250, skew=-3, kurtosis=10
    )
    assert got == pytest.approx(0.900397, abs=1e-6)
    assert got == pytest.approx(0.9004, abs=5e-5)  # the value printed in the paper
    assert got == pytest.approx(norm.cdf(z), abs=1e-6)


def test_expected_max_sharpe_is_the_papers_sr0_and_used_by_deflated_sharpe() -> None:
    assert expected_max_sharpe(100, 0.002) == pytest.approx(0.1131720, abs=1e-7)
    assert expected_max_sharpe(1, 0.5) == 0.0
    # Scales with sqrt(V): an annual variance gives an annual SR0 (x sqrt(250) here).
    assert expected_max_sharpe(100, 0.5) == pytest.approx(
        expected_max_sharpe(100, 0.002) * math.sqrt(250), rel=1e-12
    )
    sr0s = [expected_max_sharpe(n, 0.01) for n in (2, 10, 100, 1000)]
    assert sr0s == sorted(sr0s)  # more trials, higher bar
    # DSR is exactly Phi of the probabilistic Sharpe against SR0.
    sr, n_t = 0.12, 500
    z = (sr - expected_max_sharpe(20, 0.003)) * math.sqrt(n_t - 1) / math.sqrt(1 + sr**2 / 2)
    assert deflated_sharpe(sr, 20, 0.003, n_t, 0.0, 3.0) == pytest.approx(norm.cdf(z), rel=1e-12)
    with pytest.raises(ConfigError, match="n_trials"):
        expected_max_sharpe(0, 0.01)
    with pytest.raises(DataError, match="sharpe_variance"):
        expected_max_sharpe(5, -0.01)
    with pytest.raises(DataError, match="sharpe_variance"):
        expected_max_sharpe(5, NAN)


def test_deflated_sharpe_one_trial_is_probabilistic_sharpe_and_more_trials_deflate() -> None:
    # One trial: SR0 = 0; normal returns (skew 0, kurtosis 3): z = SR sqrt(T-1) / sqrt(1 + SR^2/2).
    sr, n = 0.1, 101
    expected = norm.cdf(0.1 * 10 / math.sqrt(1 + 0.01 / 2))
    assert deflated_sharpe(sr, 1, 0.01, n, 0.0, 3.0) == pytest.approx(expected, rel=1e-12)
    values = [deflated_sharpe(sr, k, 0.001, n, 0.0, 3.0) for k in (1, 10, 100, 1000)]
    assert values == sorted(values, reverse=True) and values[-1] < values[0]
    assert math.isnan(deflated_sharpe(sr, 10, 0.001, 1, 0.0, 3.0))  # T < 2
    assert math.isnan(deflated_sharpe(1.0, 10, 0.001, 100, 5.0, 3.0))  # variance term <= 0


def test_deflated_sharpe_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="n_trials"):
        deflated_sharpe(0.1, 0, 0.001, 100, 0.0, 3.0)
    with pytest.raises(DataError, match="sharpe_variance"):
        deflated_sharpe(0.1, 10, -0.001, 100, 0.0, 3.0)
    with pytest.raises(DataError, match="skew"):
        deflated_sharpe(0.1, 10, 0.001, 100, NAN, 3.0)


def test_deflated_sharpe_many_matches_the_scalar_reference():
    """The vectorised form the sweeps table uses equals the scalar functions element by element,
    NaN where they return NaN (T < 2, a variance term <= 0) or would raise."""
    from plusultra.evaluation.metrics.deflated import deflated_sharpe_many

    rng = np.random.default_rng(0)
    n = 400
    sharpe = rng.normal(0.05, 0.08, n)
    n_trials = rng.integers(1, 200, n)
    variance = rng.uniform(0, 0.01, n)
    periods = rng.integers(0, 2000, n)
    skew = rng.normal(0, 1.5, n)
    kurt = rng.uniform(1.0, 12.0, n)
    sharpe[:5] = 3.0  # with skew 2 and kurtosis 1: a variance term <= 0
    skew[:5], kurt[:5] = 2.0, 1.0
    periods[5:10] = 1  # too short
    dsr, sr0 = deflated_sharpe_many(sharpe, n_trials, variance, periods, skew, kurt)
    for i in range(n):
        ref = deflated_sharpe(
            float(sharpe[i]), int(n_trials[i]), float(variance[i]), int(periods[i]),
            float(skew[i]), float(kurt[i]),
        )  # fmt: skip
        assert sr0[i] == pytest.approx(expected_max_sharpe(int(n_trials[i]), float(variance[i])))
        if math.isnan(ref):
            assert math.isnan(dsr[i]), i
        else:
            assert dsr[i] == pytest.approx(ref, rel=1e-12, abs=1e-15), i
    assert np.isnan(dsr[:10]).all()
    bad, _ = deflated_sharpe_many([np.nan, 0.1], [3, 0], [0.1, 0.1], [100, 100], [0, 0], [3, 3])
    assert np.isnan(bad).all()  # where the scalar raises
