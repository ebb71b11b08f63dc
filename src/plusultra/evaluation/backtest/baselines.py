"""Baseline strategies as target-weight panels for the same simulator as the model.

Every function returns ``(T, S)`` weights, fractions of equity, decided at close ``t`` (the
convention of ``sim.frictionless``) and filled like the model's by the simulator's execution
mode (``plusultra.execution``: next bar's open or close, or the same close): feed them to
``FrictionlessSimulator.run(weights, returns)`` with the returns each decision earns, or to
either simulator with prices. Row ``t`` uses only data known at close ``t``
(closes up to ``t``, returns up to ``t - 1``, ``tradable`` up to ``t``), except ``ridge``, whose
rows ``t <= train_end`` are in-sample. A symbol that is not tradable at ``t`` gets weight 0,
never NaN.

Common inputs:

- ``tradable``: ``(T, S)`` bool, True where the symbol can be held from close ``t`` (it has a bar
  at ``t`` and is not delisted; see ``docs/evaluation.md``).
- ``returns``: ``(T, S)`` simple returns earned by a position decided at ``t`` (from close ``t`` to
  ``t + 1`` under ``same_close``, from its fill to the next fill otherwise), NaN = not holdable.
- ``close``: ``(T, S)`` adjusted closes (a missing bar carries the last close), NaN before
  listing.

The long/short baselines (``momentum``, ``mean_reversion``) rank a row's valid signals, go long
the top ``k`` and short the bottom ``k`` with ``k = min(n // 2, max(1, floor(quantile * n)))``
(``n`` valid symbols; ``quantile * n`` rounded to 9 decimals first), ``+0.5 / k`` and ``-0.5 / k``
each: gross 1, dollar neutral. Ties are broken by column order (the lower column counts as the
lower signal). A row with fewer than 2 valid signals, or all equal, is all zero.
"""

from __future__ import annotations

import math

import numpy as np

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest.positions import (
    as_panel,
    check_position_method,
    positions_from_signal,
)


def _check_tradable(tradable: np.ndarray, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``tradable`` as a 2-D bool array, of ``shape`` when given, else ``DataError``."""
    m = np.asarray(tradable)
    if m.dtype != bool:
        raise DataError(f"tradable must be a bool (T, S) array, got dtype {m.dtype}")
    if m.ndim != 2 or (shape is not None and m.shape != shape):
        want = "(T, S)" if shape is None else str(shape)
        raise DataError(f"tradable must have shape {want}, got {m.shape}")
    return m


def _check_quantile(quantile: float) -> float:
    if isinstance(quantile, bool) or not isinstance(
        quantile, int | float | np.integer | np.floating
    ):
        raise ConfigError(f"quantile must be a number in (0, 0.5], got {quantile!r}")
    if not 0.0 < quantile <= 0.5:
        raise ConfigError(f"quantile must be in (0, 0.5], got {quantile!r}")
    return float(quantile)


def _check_int(value: int, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _long_short(signal: np.ndarray, quantile: float) -> np.ndarray:
    """Long the top, short the bottom ``quantile`` of each row's signal (module docstring).

    Args:
        signal: ``(T, S)`` signal, higher = more bullish; NaN = not tradable.
        quantile: share of the valid symbols in each leg, in (0, 0.5].

    Returns:
        ``(T, S)`` weights: ``+0.5 / k`` long, ``-0.5 / k`` short, 0 elsewhere.
    """
    q = _check_quantile(quantile)
    valid = ~np.isnan(signal)  # (T, S)
    n = valid.sum(axis=1)  # (T,)
    k = np.minimum(n // 2, np.maximum(1, np.floor(np.round(q * n, 9)).astype(int)))  # (T,)
    hi = np.where(valid, signal, -np.inf).max(axis=1, initial=-np.inf)
    lo = np.where(valid, signal, np.inf).min(axis=1, initial=np.inf)
    active = (n >= 2) & (hi > lo)  # (T,) rows with a cross-section
    order = np.argsort(np.where(valid, signal, np.inf), axis=1, kind="stable")  # NaN last
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(signal.shape[1])[None, :], axis=1)  # 0 = lowest
    k_col, n_col = k[:, None], n[:, None]
    short = valid & (rank < k_col)
    long = valid & (rank >= n_col - k_col)
    half = 0.5 / np.maximum(k_col, 1)
    return np.where(active[:, None], np.where(long, half, 0.0) - np.where(short, half, 0.0), 0.0)


def buy_and_hold_weights(returns: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """Equal weight at the first bar, then drifting with returns; sold for cash at delisting.

    At close 0 the book buys ``1 / n`` of equity in each of the ``n`` symbols tradable at 0. A
    position's value compounds with its returns while held; it is held at ``t`` while the symbol
    has been tradable at every bar ``0..t``, and once it is not it is sold at its last value and
    the cash (0 return) stays in the book, never reinvested. Simulated on ``returns`` with
    ``tradable = ~isnan(returns)`` this reproduces ``baselines.buy_and_hold_returns``.

    Args:
        returns: ``(T, S)`` simple returns from close ``t`` to ``t + 1``; row ``t`` is used only
            for rows after ``t``, and must be finite where a position is held.
        tradable: ``(T, S)`` bool, True where the symbol can be held from close ``t``.

    Returns:
        ``(T, S)`` weights: position value / book value (cash included); 0 where not held, and
        in every row once the book's value is 0.

    Raises:
        DataError: on bad shapes, no symbol tradable at ``t = 0`` (with ``T > 0``), or a NaN
            return of a held position.
    """
    r = as_panel(returns, "returns")
    held = _check_tradable(tradable, r.shape)
    n_t, n_s = r.shape
    if n_t == 0:
        return np.zeros((0, n_s))
    if not held[0].any():
        raise DataError(
            "buy_and_hold_weights: no symbol is tradable at t=0 (tradable[0] all False)"
        )
    held = np.cumprod(held, axis=0).astype(bool)  # (T, S) held from 0 through t
    missing = held[:-1] & np.isnan(r[:-1])
    if missing.any():
        t, s = np.argwhere(missing)[0]
        raise DataError(f"returns[{t}, {s}] is NaN while the position is held (tradable)")
    growth = np.where(held[:-1], 1.0 + np.where(held[:-1], r[:-1], 0.0), 1.0)  # (T - 1, S)
    value = np.cumprod(np.concatenate([np.ones((1, n_s)), growth]), axis=0)  # (T, S) at close t
    value = np.where(held[:1], value, 0.0)  # only symbols bought at 0 hold value / cash
    book = value.sum(axis=1, keepdims=True)  # (T, 1) positions + cash from sales
    safe = np.where(book != 0.0, book, 1.0)
    return np.where(held & (book != 0.0), value / safe, 0.0)


def equal_weight_weights(tradable: np.ndarray) -> np.ndarray:
    """``1 / n`` in each of the ``n`` symbols tradable at ``t``, rebalanced every bar.

    Args:
        tradable: ``(T, S)`` bool, True where the symbol can be held from close ``t``.

    Returns:
        ``(T, S)`` weights, each tradable row summing to 1; a row with nothing tradable is 0.

    Raises:
        DataError: if ``tradable`` is not a 2-D bool array.
    """
    m = _check_tradable(tradable)
    n = m.sum(axis=1, keepdims=True)  # (T, 1)
    return np.where(m, 1.0 / np.maximum(n, 1), 0.0)


def _past_return(close: np.ndarray, tradable: np.ndarray, start: int, end: int) -> np.ndarray:
    """``close[t - end] / close[t - start] - 1``, NaN where undefined or not tradable at ``t``."""
    n_t, n_s = close.shape
    out = np.full((n_t, n_s), np.nan)
    if n_t > start:
        first = close[: n_t - start]  # close[t - start] for t >= start
        last = close[start - end : n_t - end]  # close[t - end]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start:] = np.where((first > 0) & (last > 0), last / first - 1.0, np.nan)
    return np.where(tradable, out, np.nan)


def momentum_weights(
    close: np.ndarray,
    tradable: np.ndarray,
    lookback: int = 252,
    skip: int = 21,
    quantile: float = 0.2,
) -> np.ndarray:
    """12-1 cross-sectional momentum: long past winners, short past losers.

    The signal at ``t`` is ``close[t - skip] / close[t - lookback] - 1`` (the return over the
    last year leaving out the last month, by default), NaN for ``t < lookback``, a non-positive
    or NaN close, or a symbol not tradable at ``t``.

    Args:
        close: ``(T, S)`` adjusted closes, NaN before listing.
        tradable: ``(T, S)`` bool, True where the symbol can be held from close ``t``.
        lookback: bars back to the start of the formation period, > ``skip``.
        skip: most recent bars left out, >= 0.
        quantile: share of the valid symbols in each leg, in (0, 0.5].

    Returns:
        ``(T, S)`` long/short weights, gross 1 and net 0 where the row has a cross-section.

    Raises:
        ConfigError: on a bad ``lookback``, ``skip`` or ``quantile``.
        DataError: on bad shapes or an infinite close.
    """
    skip = _check_int(skip, "skip", 0)
    lookback = _check_int(lookback, "lookback", skip + 1)
    c = as_panel(close, "close")
    m = _check_tradable(tradable, c.shape)
    return _long_short(_past_return(c, m, lookback, skip), quantile)


def mean_reversion_weights(
    close: np.ndarray, tradable: np.ndarray, lookback: int = 5, quantile: float = 0.2
) -> np.ndarray:
    """Short-term reversal: long the recent losers, short the recent winners.

    The signal at ``t`` is ``-(close[t] / close[t - lookback] - 1)``, NaN for ``t < lookback``,
    a non-positive or NaN close, or a symbol not tradable at ``t``.

    Args:
        close: ``(T, S)`` adjusted closes, NaN before listing.
        tradable: ``(T, S)`` bool, True where the symbol can be held from close ``t``.
        lookback: bars over which the past return is measured, >= 1.
        quantile: share of the valid symbols in each leg, in (0, 0.5].

    Returns:
        ``(T, S)`` long/short weights, gross 1 and net 0 where the row has a cross-section.

    Raises:
        ConfigError: on a bad ``lookback`` or ``quantile``.
        DataError: on bad shapes or an infinite close.
    """
    lookback = _check_int(lookback, "lookback", 1)
    c = as_panel(close, "close")
    m = _check_tradable(tradable, c.shape)
    return _long_short(-_past_return(c, m, lookback, 0), quantile)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge regression with an unpenalised intercept.

    Minimises ``sum_i (y_i - b - x_i . w) ** 2 + alpha * |w| ** 2`` (a sum, not a mean, over
    samples) by solving ``(Xc' Xc + alpha I) w = Xc' yc`` on centred data (least squares, so a
    singular system with ``alpha = 0`` gives the minimum-norm solution).

    Args:
        x: ``(N, F)`` features.
        y: ``(N,)`` targets.
        alpha: penalty, >= 0.

    Returns:
        ``(w, b)``: ``(F,)`` coefficients and the intercept.
    """
    x_mean, y_mean = x.mean(axis=0), y.mean()
    xc, yc = x - x_mean, y - y_mean  # (N, F), (N,)
    gram = xc.T @ xc + alpha * np.eye(x.shape[1])  # (F, F)
    w = np.linalg.lstsq(gram, xc.T @ yc, rcond=None)[0]  # (F,)
    return w, float(y_mean - x_mean @ w)


def walk_forward_ridge_weights(
    features: np.ndarray,
    targets: np.ndarray,
    tradable: np.ndarray,
    refits: list[tuple[int, int, int, int]],
    alpha: float = 1.0,
    method: str = "rank",
) -> np.ndarray:
    """``ridge_weights`` refitted block by block, as the model is in a walk-forward evaluation.

    Args:
        features, targets, tradable, alpha, method: as for ``ridge_weights``.
        refits: ``(fit_lo, fit_hi, lo, hi)`` per block: rows ``lo..hi`` come from a ridge fitted
            on the samples with ``fit_lo <= t <= fit_hi`` (causal when every label of those
            samples is known at ``lo``, the caller's contract).

    Returns:
        ``(T, S)`` weights, zero outside the blocks.
    """
    out = np.zeros(np.shape(tradable), dtype=float)
    for fit_lo, fit_hi, lo, hi in refits:
        w = ridge_weights(features, targets, tradable, fit_hi, alpha, method, train_start=fit_lo)
        out[lo : hi + 1] = w[lo : hi + 1]
    return out


def sample_mask(
    features: np.ndarray, targets: np.ndarray, tradable: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Checked inputs of a learned baseline: ``(x, y, tradable, has_x)``.

    Args:
        features: ``(T, S, F)`` normalised features known at close ``t``; NaN = missing.
        targets: ``(T, S)`` forward returns from ``t`` (the model's label), NaN = unknown.
        tradable: ``(T, S)`` bool, True where the symbol can be held from close ``t``.

    Returns:
        ``x`` ``(T, S, F)`` and ``y`` ``(T, S)`` as floats, ``tradable`` as bools, and
        ``has_x`` ``(T, S)``: True where every feature is finite.

    Raises:
        DataError: on bad shapes or infinite values.
    """
    x = np.asarray(features, dtype=float)
    if x.ndim != 3:
        raise DataError(f"features must be a 3-D (T, S, F) array, got shape {x.shape}")
    if np.isinf(x).any():
        raise DataError("features must be finite or NaN; found an infinite value")
    y = as_panel(targets, "targets")
    if y.shape != x.shape[:2]:
        raise DataError(f"targets.shape={y.shape} must match features (T, S)={x.shape[:2]}")
    m = _check_tradable(tradable, y.shape)
    return x, y, m, np.isfinite(x).all(axis=2)


def ridge_predictions(
    features: np.ndarray,
    targets: np.ndarray,
    tradable: np.ndarray,
    train_end: int,
    alpha: float = 1.0,
    train_start: int = 0,
) -> np.ndarray:
    """The forecasts of ``ridge_weights``: ``(T, S)``, NaN where not tradable or a feature is
    NaN (arguments and errors as there)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.integer | np.floating):
        raise ConfigError(f"alpha must be a number >= 0, got {alpha!r}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ConfigError(f"alpha must be a finite number >= 0, got {alpha!r}")
    x, y, m, has_x = sample_mask(features, targets, tradable)
    n_t = y.shape[0]
    train_end = _check_int(train_end, "train_end", 0)
    if train_end >= n_t:
        raise ConfigError(f"train_end={train_end} must be < T={n_t}")
    train_start = _check_int(train_start, "train_start", 0)
    if train_start > train_end:
        raise ConfigError(f"train_start={train_start} must be <= train_end={train_end}")

    train = has_x & np.isfinite(y) & m
    train[train_end + 1 :] = False
    train[:train_start] = False
    if not train.any():
        raise DataError(
            f"ridge_weights: no training sample ({train_start} <= t <= {train_end}) with "
            "features+target"
        )
    w, b = fit_ridge(x[train], y[train], float(alpha))  # (F,), scalar
    pred = np.where(has_x, np.where(has_x[..., None], x, 0.0) @ w + b, np.nan)  # (T, S)
    return np.where(m, pred, np.nan)


def ridge_weights(
    features: np.ndarray,
    targets: np.ndarray,
    tradable: np.ndarray,
    train_end: int,
    alpha: float = 1.0,
    method: str = "rank",
    train_start: int = 0,
) -> np.ndarray:
    """Ridge regression of forward returns on the model's features, traded cross-sectionally.

    Fits one pooled ridge (``fit_ridge``) on the samples ``(t, s)`` with
    ``train_start <= t <= train_end`` that
    are tradable and have finite features and target, predicts every ``(t, s)`` with finite
    features (``ridge_predictions``), and turns the predictions into weights row by row with
    ``positions_from_signal(pred, method)`` (gross 1). Rows ``t >= train_end`` use only
    ``features[t]`` and the fit, so they are causal provided the label of ``train_end`` is known
    at ``train_end`` (the caller's contract); rows before it are in-sample.

    Args:
        features: ``(T, S, F)`` normalised features known at close ``t``; NaN = missing.
        targets: ``(T, S)`` forward returns from ``t`` (the model's label), NaN = unknown.
        tradable: ``(T, S)`` bool, True where the symbol can be held from close ``t``.
        train_end: last bar whose label is known at fit time, ``0 <= train_end < T``.
        alpha: ridge penalty, >= 0 (features are normalised, so one scale fits all).
        method: position method, a key of ``positions.POSITION_METHODS``.
        train_start: first bar of the training samples, ``0 <= train_start <= train_end``.

    Returns:
        ``(T, S)`` weights; 0 where not tradable or a feature is NaN.

    Raises:
        ConfigError: on a bad ``train_end``, ``alpha`` or ``method``.
        DataError: on bad shapes, infinite values, or no training sample.
    """
    check_position_method(method)
    pred = ridge_predictions(features, targets, tradable, train_end, alpha, train_start)
    return positions_from_signal(pred, method)
