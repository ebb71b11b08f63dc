"""Stationary-bootstrap percentile intervals of return statistics.

``r`` is the ``(T,)`` array of simple per-period portfolio returns, ``P = periods_per_year``.

Definitions:

- stationary bootstrap (Politis and Romano 1994): a replicate is a series of length ``T`` built
  from blocks of consecutive periods; each block starts at a uniform position and runs on,
  wrapping around the end of the series, and at each later period a new block starts with
  probability ``1 / mean_block`` (so block lengths are geometric with mean ``mean_block``,
  default ``max(1, round(T ** (1/3)))``; 1 gives the iid bootstrap). The resampled series is
  stationary, and serial dependence within a block is kept.
- percentile interval at ``level``: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
  (linear interpolation) of the statistic over the replicates, replicates whose statistic is NaN
  left out; the point estimate is the statistic of the original series.
- ``sharpe_interval``: the annualised Sharpe ``mean(r) / std(r, ddof=1) * sqrt(P)``;
  ``annual_return_interval``: the CAGR ``prod(1 + r) ** (P / T) - 1``; both with the definitions
  of ``evaluation.metrics.compute_metrics``, whose values their points equal. They give
  ``sharpe_lo`` / ``sharpe_hi`` and ``annual_return_lo`` / ``annual_return_hi`` of
  ``evaluation.risk.risk_metrics``.

Undefined values are NaN, never ``inf`` and never an exception. A loop reference with the same
random draws lives in ``tests/test_bootstrap.py``. The private input checks (``as_series``,
``check_level``, ``finite_or_nan``) are shared with ``evaluation.risk``.

References:
    D. N. Politis and J. P. Romano, "The Stationary Bootstrap", Journal of the American
    Statistical Association 89(428), 1303-1313, 1994.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from plusultra.errors import ConfigError
from plusultra.evaluation.metrics.performance import (
    as_series,
    check_periods_per_year,
    finite_or_nan,
)

_NAN = float("nan")
_CHUNK_ELEMENTS = 1_000_000
"""Resampled values built at once by ``stationary_bootstrap`` (bounds its memory to ~50 MB)."""


def check_level(level: float) -> float:
    """A confidence level in (0, 1), else ``ConfigError``."""
    if isinstance(level, bool) or not isinstance(level, int | float | np.integer | np.floating):
        raise ConfigError(f"level must be a number in (0, 1), got {level!r}")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    return float(level)


def _resample_indices(uniforms: np.ndarray, p_new: float) -> np.ndarray:
    """Stationary-bootstrap index arrays from uniform draws.

    Args:
        uniforms: ``(B, 2, T)`` draws in [0, 1): ``[:, 0]`` decides a new block (``u < p_new``;
            ignored at ``t = 0``, which always starts one), ``[:, 1]`` picks its start
            ``floor(u * T)``.
        p_new: probability of starting a new block, ``1 / mean_block``.

    Returns:
        ``(B, T)`` int indices into the series; a block runs on from its start, wrapping around.
    """
    n_t = uniforms.shape[-1]
    t = np.arange(n_t)
    new = uniforms[:, 0] < p_new  # (B, T)
    new[:, 0] = True
    starts = np.minimum((uniforms[:, 1] * n_t).astype(np.int64), n_t - 1)  # (B, T)
    block_t = np.maximum.accumulate(np.where(new, t, 0), axis=1)  # (B, T) time its block began
    block_start = np.take_along_axis(starts, block_t, axis=1)  # (B, T)
    return (block_start + t - block_t) % n_t


def stationary_bootstrap(
    returns: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_boot: int = 2000,
    mean_block: float | None = None,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Percentile interval of a statistic by the Politis-Romano (1994) stationary bootstrap.

    Each replicate is a series of length ``T`` built from blocks with geometric lengths (mean
    ``mean_block``) starting at uniform positions and wrapping around the end. Random draws:
    one ``numpy.random.default_rng(seed)`` gives, replicate after replicate, ``2 * T`` uniforms
    (``T`` new-block tests, then ``T`` start positions); replicates are built in chunks of about
    ``_CHUNK_ELEMENTS`` values, and the result does not depend on the chunking.

    Args:
        returns: ``(T,)`` simple per-period returns.
        statistic: maps a ``(B, T)`` array of series to ``(B,)`` values along the last axis
            (e.g. ``lambda x: x.mean(axis=-1)``); NaN for an undefined value.
        n_boot: number of bootstrap replicates, >= 1.
        mean_block: mean block length in periods, >= 1; default ``max(1, round(T ** (1/3)))``.
            1 gives the iid bootstrap.
        level: coverage of the interval in (0, 1).
        seed: seed of the random generator.

    Returns:
        ``(point, lo, hi)``: the statistic of the original series and the
        ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear interpolation) of the
        replicates, replicates with a NaN statistic left out. NaN where undefined (empty
        returns, every replicate NaN).

    Raises:
        ConfigError: if ``n_boot``, ``mean_block`` or ``level`` is out of range.
        DataError: if ``returns`` is not a finite 1-D array.
    """
    level = check_level(level)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ConfigError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    r = as_series(returns, "returns")
    n_t = r.size
    if mean_block is None:
        mean_block = max(1, round(n_t ** (1 / 3)))
    if isinstance(mean_block, bool) or not (
        isinstance(mean_block, int | float | np.integer | np.floating) and mean_block >= 1
    ):
        raise ConfigError(f"mean_block must be a number >= 1 (periods), got {mean_block!r}")
    if n_t == 0:
        return _NAN, _NAN, _NAN

    point = float(np.asarray(statistic(r[None, :]), dtype=float).reshape(-1)[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // n_t)
    stats = np.empty(n_boot)
    for b0 in range(0, n_boot, chunk):
        b1 = min(n_boot, b0 + chunk)
        idx = _resample_indices(rng.random((b1 - b0, 2, n_t)), 1.0 / mean_block)  # (B, T)
        stats[b0:b1] = np.asarray(statistic(r[idx]), dtype=float).reshape(-1)
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return finite_or_nan(point), _NAN, _NAN
    lo, hi = np.quantile(stats, [(1.0 - level) / 2, (1.0 + level) / 2])
    return finite_or_nan(point), float(lo), float(hi)


def _sharpe_stat(periods_per_year: float) -> Callable[[np.ndarray], np.ndarray]:
    """Annualised Sharpe ``mean / std(ddof=1) * sqrt(P)`` along the last axis; NaN if flat."""

    def stat(x: np.ndarray) -> np.ndarray:
        if x.shape[-1] < 2:
            return np.full(x.shape[:-1], np.nan)
        std = x.std(axis=-1, ddof=1)
        flat = x.max(axis=-1) == x.min(axis=-1)
        safe = np.where(flat, 1.0, std)
        return np.where(flat, np.nan, x.mean(axis=-1) / safe * math.sqrt(periods_per_year))

    return stat


def _cagr_stat(periods_per_year: float) -> Callable[[np.ndarray], np.ndarray]:
    """CAGR ``prod(1 + r) ** (P / T) - 1`` along the last axis; NaN if the equity went < 0."""

    def stat(x: np.ndarray) -> np.ndarray:
        base = np.prod(1.0 + x, axis=-1)
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.where(
                base >= 0, np.abs(base) ** (periods_per_year / x.shape[-1]) - 1.0, np.nan
            )
        return np.where(np.isfinite(out), out, np.nan)

    return stat


def sharpe_interval(
    returns: np.ndarray, periods_per_year: float = 252, **kw
) -> tuple[float, float, float]:
    """Annualised Sharpe ratio with a stationary-bootstrap percentile interval.

    Args:
        returns: ``(T,)`` simple per-period returns.
        periods_per_year: periods in a year.
        **kw: ``n_boot``, ``mean_block``, ``level``, ``seed`` of ``stationary_bootstrap``.

    Returns:
        ``(sharpe, lo, hi)``, unitless; the point equals ``compute_metrics(...)["sharpe"]``.
    """
    p = check_periods_per_year(periods_per_year)
    return stationary_bootstrap(returns, _sharpe_stat(p), **kw)


def annual_return_interval(
    returns: np.ndarray, periods_per_year: float = 252, **kw
) -> tuple[float, float, float]:
    """CAGR with a stationary-bootstrap percentile interval.

    Args:
        returns: ``(T,)`` simple per-period returns.
        periods_per_year: periods in a year.
        **kw: ``n_boot``, ``mean_block``, ``level``, ``seed`` of ``stationary_bootstrap``.

    Returns:
        ``(annual_return, lo, hi)``, fractions per year; the point equals
        ``compute_metrics(...)["annual_return"]``.
    """
    p = check_periods_per_year(periods_per_year)
    return stationary_bootstrap(returns, _cagr_stat(p), **kw)
