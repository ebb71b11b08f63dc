"""Turn a cross-sectional signal panel into target portfolio weights.

Every method works row by row: the weights of decision time ``t`` depend only on ``signal[t]``
(no look-ahead across time, no statistic fitted over time). A NaN signal means the symbol is not
tradable at ``t`` and gets weight 0; the other symbols of that row are its "valid" symbols.
Weights are fractions of equity, ``gross`` is the target ``sum_s |w[t, s]|``.

Methods (``POSITION_METHODS``):

- ``rank``: cross-sectional ranks (1..n, ties get their average rank), demeaned over the valid
  symbols and scaled so ``sum|w| = gross``. Dollar neutral (``sum w = 0``).
- ``zscore``: the signal demeaned over the valid symbols and scaled so ``sum|w| = gross`` (the
  same as a z-score then scaled, since the gross scaling cancels the division by the std).
  Dollar neutral.
- ``sign``: ``sign(signal) / n_valid * gross``: long the positive, short the negative, 0 for a
  zero signal; not neutral, ``sum|w| = gross * (nonzero signals / n_valid) <= gross``.
- ``weights``: the signal *is* the weight (a policy head's position per symbol), not re-ranked:
  NaN (not tradable) -> 0, then each row is scaled down, never up, by ``cap_exposure`` so that
  ``sum|w| <= gross`` (and ``|sum w| <= net`` when a net cap is given). Relative sizes and the
  net exposure the model chose are kept. Meant for ``head=policy``; a return forecast used as
  weights trades almost nothing.

For ``rank`` and ``zscore`` a row with fewer than 2 valid symbols, or whose valid signals are all
equal, gets zero weights (there is no cross-section to trade). A row with no valid symbol is zero
for every method.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from plusultra.errors import ConfigError, DataError


def _scale_demeaned(values: np.ndarray, gross: float) -> np.ndarray:
    """Demean each row over its non-NaN entries and scale it to ``sum|w| = gross``.

    Args:
        values: ``(T, S)`` panel, NaN where not tradable.
        gross: target sum of absolute weights per row.

    Returns:
        ``(T, S)`` weights; NaN entries, and rows with < 2 valid or all-equal values, are 0.
    """
    valid = ~np.isnan(values)  # (T, S)
    n_valid = valid.sum(axis=1)  # (T,)
    filled = np.where(valid, values, 0.0)
    row_max = np.where(valid, values, -np.inf).max(axis=1, initial=-np.inf)  # (T,)
    row_min = np.where(valid, values, np.inf).min(axis=1, initial=np.inf)  # (T,)
    tradable = (n_valid >= 2) & (row_max > row_min)  # (T,) rows with a cross-section
    mean = filled.sum(axis=1) / np.maximum(n_valid, 1)  # (T,)
    centred = np.where(valid, filled - mean[:, None], 0.0)  # (T, S)
    abs_sum = np.abs(centred).sum(axis=1)  # (T,)
    scale = np.where(tradable & (abs_sum > 0), gross / np.where(abs_sum > 0, abs_sum, 1.0), 0.0)
    return centred * scale[:, None]


def cap_exposure(weights: np.ndarray, gross: float, net: float | None = None) -> np.ndarray:
    """Scale each row down, never up, so ``sum_s |w| <= gross`` and ``|sum_s w| <= net``.

    ``w[t] / max(1, sum|w[t]| / gross, |sum w[t]| / net)``: one factor per row, so relative
    sizes are kept. The training-time portfolio losses use the same formula in torch
    (``plusultra.models.losses.cap_exposure``).

    Args:
        weights: ``(T, S)`` finite weights, fraction of equity.
        gross: gross cap, > 0.
        net: net cap, > 0; None: no net cap beyond the one implied by gross.

    Returns:
        ``(T, S)`` capped weights.
    """
    factor = np.maximum(1.0, np.abs(weights).sum(axis=1) / gross)  # (T,)
    if net is not None:
        factor = np.maximum(factor, np.abs(weights.sum(axis=1)) / net)
    return weights / factor[:, None]


def cap_exposure_reference(
    weights: np.ndarray, gross: float, net: float | None = None
) -> np.ndarray:
    """Per-bar loop reference of ``cap_exposure`` (tests compare the two)."""
    out = np.zeros_like(weights, dtype=float)
    for t in range(weights.shape[0]):
        row = [float(v) for v in weights[t]]
        total_abs = sum(abs(v) for v in row)
        total = sum(row)
        scale = 1.0
        if total_abs > gross:
            scale = gross / total_abs
        if net is not None and abs(total) * scale > net:
            scale = net / abs(total)
        for s, v in enumerate(row):
            out[t, s] = v * scale
    return out


def _direct_weights(signal: np.ndarray, gross: float) -> np.ndarray:
    """The signal as weights, NaN -> 0, rows scaled down to ``sum|w| <= gross``; ``(T, S)``."""
    return cap_exposure(np.where(np.isnan(signal), 0.0, signal), gross)


def _rank_weights(signal: np.ndarray, gross: float) -> np.ndarray:
    """Demeaned average-tie cross-sectional ranks scaled to ``sum|w| = gross``; ``(T, S)``."""
    ranks = pd.DataFrame(signal).rank(axis=1, method="average", na_option="keep").to_numpy()
    return _scale_demeaned(ranks.astype(float), gross)


def _zscore_weights(signal: np.ndarray, gross: float) -> np.ndarray:
    """Demeaned signal scaled to ``sum|w| = gross``; ``(T, S)``."""
    return _scale_demeaned(signal, gross)


def _sign_weights(signal: np.ndarray, gross: float) -> np.ndarray:
    """``sign(signal) / n_valid * gross`` per row, 0 where NaN; ``(T, S)``."""
    valid = ~np.isnan(signal)
    n_valid = valid.sum(axis=1, keepdims=True)  # (T, 1)
    signs = np.where(valid, np.sign(np.where(valid, signal, 0.0)), 0.0)
    return signs * (gross / np.maximum(n_valid, 1))


POSITION_METHODS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "rank": _rank_weights,
    "zscore": _zscore_weights,
    "sign": _sign_weights,
    "weights": _direct_weights,
}
"""Method name -> ``fn(signal (T, S) with NaN = not tradable, gross) -> weights (T, S)``.

Each function must use only row ``t`` of the signal for row ``t`` of the weights and return 0
(never NaN) where the signal is NaN.
"""


def as_panel(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a 2-D ``(T, S)`` float array, finite or NaN, else ``DataError`` naming
    ``name`` (and the first infinite cell)."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 2:
        raise DataError(f"{name} must be a 2-D (T, S) panel, got shape {x.shape}")
    if np.isinf(x).any():
        t, s = np.argwhere(np.isinf(x))[0]
        raise DataError(f"{name} must be finite or NaN; {name}[{t}, {s}] = {x[t, s]}")
    return x


def check_position_method(method: str) -> str:
    """``method`` if it is a key of ``POSITION_METHODS``, else ``ConfigError`` listing them."""
    if method not in POSITION_METHODS:
        raise ConfigError(
            f"method={method!r} is not a position method; valid names: "
            f"{', '.join(sorted(POSITION_METHODS))}"
        )
    return method


def _check_cap(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def positions_from_signal(
    signal: np.ndarray, method: str = "rank", gross: float = 1.0, net: float | None = None
) -> np.ndarray:
    """Cross-sectional target weights from a signal panel, row by row.

    Args:
        signal: ``(T, S)`` signal per decision time and symbol (higher = more bullish); NaN
            means not tradable at that time.
        method: a key of ``POSITION_METHODS``: ``rank``, ``zscore``, ``sign`` or ``weights`` (see
            the module docstring for each definition).
        gross: target gross exposure ``sum_s |w[t, s]|`` per row, fraction of equity; > 0
            (a cap, not a target, for ``weights``).
        net: cap on ``|sum_s w[t, s]|`` per row, applied last with ``cap_exposure``; > 0;
            None: none (rank and zscore are dollar neutral anyway).

    Returns:
        ``(T, S)`` weights, fraction of equity, 0 where the signal is NaN; no NaN.

    Raises:
        ConfigError: if ``method`` is unknown (the message lists the valid names) or ``gross``
            or ``net`` is not a finite number > 0.
        DataError: if ``signal`` is not 2-D or holds an infinite value.
    """
    check_position_method(method)
    gross = _check_cap("gross", gross)
    weights = POSITION_METHODS[method](as_panel(signal, "signal"), gross)
    if net is None:
        return weights
    return cap_exposure(weights, gross, _check_cap("net", net))
