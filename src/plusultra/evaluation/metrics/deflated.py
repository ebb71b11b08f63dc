"""The deflated Sharpe ratio: a best-of-``N`` Sharpe corrected for selection and non-normality.

Picking the best of ``N`` trials (configurations of a sweep) by Sharpe inflates that Sharpe: ``N``
trials with no skill still produce a best Sharpe near the expected maximum of ``N`` draws.

Definitions (every Sharpe figure PER PERIOD, not annualised: divide an annual Sharpe by
``sqrt(periods_per_year)`` and an annual variance by ``periods_per_year``):

- ``expected_max_sharpe``: ``SR0 = sqrt(V) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))``, the
  expected maximum Sharpe of ``N`` zero-skill trials whose Sharpe ratios have variance ``V``,
  with ``g`` the Euler-Mascheroni constant and ``Z`` the standard normal quantile; 0 for
  ``N = 1``.
- ``deflated_sharpe``:
  ``DSR = Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurtosis - 1) / 4 * SR**2))``, the
  probability that the true Sharpe of the selected strategy exceeds ``SR0``, given its ``T``
  returns and their skewness and kurtosis (NOT excess: 3 for normal returns, as
  ``evaluation.risk.return_moments`` gives them); ``Phi`` is the standard normal CDF.

Undefined values are NaN, never ``inf``. Tests against the paper's numerical example live in
``tests/test_deflated.py``; ``catalogue.sweeps`` applies both to every multirun sweep.

References:
    D. H. Bailey and M. Lopez de Prado, "The Deflated Sharpe Ratio: Correcting for Selection
    Bias, Backtest Overfitting, and Non-Normality", Journal of Portfolio Management 40(5),
    94-107, 2014.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from plusultra.errors import ConfigError, DataError

_NAN = float("nan")
_EULER_GAMMA = 0.5772156649015329


def _check_n_trials(n_trials: int) -> None:
    if isinstance(n_trials, bool) or not isinstance(n_trials, int | np.integer) or n_trials < 1:
        raise ConfigError(f"n_trials must be an integer >= 1, got {n_trials!r}")


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """``SR0``, the expected maximum Sharpe of ``n_trials`` zero-skill trials.

    Bailey and Lopez de Prado (2014):
    ``SR0 = sqrt(V) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))`` with ``g`` the
    Euler-Mascheroni constant and ``Z`` the standard normal quantile; 0 for ``N = 1``. The
    threshold ``deflated_sharpe`` tests the selected Sharpe against.

    Args:
        n_trials: number of independent trials ``N`` in the sweep, >= 1.
        sharpe_variance: variance ``V`` of the trials' Sharpe ratios, >= 0, in squared Sharpe
            units of whatever frequency they are in (per period for ``deflated_sharpe``).

    Returns:
        ``SR0`` in the units of ``sqrt(sharpe_variance)`` (per period for a per-period variance).

    Raises:
        ConfigError: if ``n_trials`` is not an integer >= 1.
        DataError: if ``sharpe_variance`` is negative or not finite.
    """
    _check_n_trials(n_trials)
    if not math.isfinite(float(sharpe_variance)) or sharpe_variance < 0:
        raise DataError(f"sharpe_variance must be finite and >= 0, got {sharpe_variance!r}")
    if n_trials == 1:
        return 0.0
    z1 = norm.ppf(1.0 - 1.0 / n_trials)
    z2 = norm.ppf(1.0 - 1.0 / (n_trials * math.e))
    return float(math.sqrt(sharpe_variance) * ((1.0 - _EULER_GAMMA) * z1 + _EULER_GAMMA * z2))


def deflated_sharpe(
    sharpe: float,
    n_trials: int,
    sharpe_variance: float,
    n_periods: int,
    skew: float,
    kurtosis: float,
) -> float:
    """Deflated Sharpe ratio of Bailey and Lopez de Prado (2014).

    The probability that the true Sharpe ratio exceeds ``SR0``, the expected maximum Sharpe of
    ``n_trials`` zero-skill trials, given the non-normality of the returns:

    ``SR0 = sqrt(V) * ((1 - g) * Z(1 - 1/N) + g * Z(1 - 1/(N e)))`` with ``g`` the
    Euler-Mascheroni constant and ``Z`` the standard normal quantile (``SR0 = 0`` for ``N = 1``;
    see ``expected_max_sharpe``), and
    ``DSR = Phi((SR - SR0) * sqrt(T - 1) / sqrt(1 - skew * SR + (kurtosis - 1) / 4 * SR**2))``.

    Every Sharpe figure is PER PERIOD, not annualised: divide an annual Sharpe by
    ``sqrt(periods_per_year)`` and an annual variance by ``periods_per_year``.

    Args:
        sharpe: the selected strategy's per-period Sharpe ratio (mean / std of period returns).
        n_trials: number of independent trials (configurations) tried in the sweep, >= 1.
        sharpe_variance: variance of the per-period Sharpe ratios across the trials, >= 0.
        n_periods: number of return periods ``T`` behind ``sharpe``.
        skew: skewness of the selected strategy's period returns (0 for normal).
        kurtosis: kurtosis of its period returns, NOT excess (3 for normal).

    Returns:
        A probability in [0, 1]; NaN when ``n_periods < 2`` or the variance term
        ``1 - skew * SR + (kurtosis - 1) / 4 * SR**2`` is <= 0.

    Raises:
        ConfigError: if ``n_trials`` is not an integer >= 1.
        DataError: if a figure is not finite or ``sharpe_variance < 0``.
    """
    _check_n_trials(n_trials)
    values = {
        "sharpe": sharpe,
        "sharpe_variance": sharpe_variance,
        "n_periods": n_periods,
        "skew": skew,
        "kurtosis": kurtosis,
    }
    for name, value in values.items():
        if not math.isfinite(float(value)):
            raise DataError(f"deflated_sharpe: {name} must be finite, got {value!r}")
    if sharpe_variance < 0:
        raise DataError(f"sharpe_variance must be >= 0, got {sharpe_variance!r}")
    if n_periods < 2:
        return _NAN
    sr0 = expected_max_sharpe(n_trials, sharpe_variance)
    var_term = 1.0 - skew * sharpe + (kurtosis - 1.0) / 4.0 * sharpe**2
    if var_term <= 0:
        return _NAN
    return float(norm.cdf((sharpe - sr0) * math.sqrt(n_periods - 1) / math.sqrt(var_term)))


def deflated_sharpe_many(
    sharpe: np.ndarray,
    n_trials: np.ndarray,
    sharpe_variance: np.ndarray,
    n_periods: np.ndarray,
    skew: np.ndarray,
    kurtosis: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """``deflated_sharpe`` and ``expected_max_sharpe`` over arrays, one element per trial.

    The catalogue's ``sweeps`` table scores every trial of every study at once; the scalar
    functions above are the reference it is tested against. Arguments are as there, as
    broadcastable (N,) arrays, all per period.

    Returns:
        ``(dsr, sr0)``: (N,) float arrays. ``dsr`` is NaN where ``deflated_sharpe`` returns NaN
        (``n_periods < 2`` or a variance term <= 0) and, instead of raising, where an input is
        not finite or ``n_trials < 1``; ``sr0`` is NaN where ``n_trials < 1`` or the variance
        is negative or not finite.
    """
    sr, n, v, t, sk, ku = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (sharpe, n_trials, sharpe_variance, n_periods,
                                               skew, kurtosis))
    )  # fmt: skip
    ok_n = np.isfinite(n) & (n >= 1)
    ok_v = np.isfinite(v) & (v >= 0)
    safe_n = np.where(ok_n & (n > 1), n, 2.0)
    z1 = norm.ppf(1.0 - 1.0 / safe_n)
    z2 = norm.ppf(1.0 - 1.0 / (safe_n * math.e))
    sr0 = np.sqrt(np.where(ok_v, v, 0.0)) * ((1.0 - _EULER_GAMMA) * z1 + _EULER_GAMMA * z2)
    sr0 = np.where(n == 1, 0.0, sr0)
    sr0 = np.where(ok_n & ok_v, sr0, np.nan)
    var_term = 1.0 - sk * sr + (ku - 1.0) / 4.0 * sr**2
    valid = ok_n & ok_v & np.isfinite(sr) & np.isfinite(t) & np.isfinite(sk) & np.isfinite(ku)
    valid &= (t >= 2) & (var_term > 0)
    scale = np.sqrt(np.where(valid, t - 1.0, 1.0) / np.where(valid, var_term, 1.0))
    z = (sr - sr0) * scale
    return np.where(valid, norm.cdf(z), np.nan), sr0
