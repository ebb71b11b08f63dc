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


def positions_from_signal(
    signal: np.ndarray, method: str = "rank", gross: float = 1.0
) -> np.ndarray:
    """Cross-sectional target weights from a signal panel, row by row.

    Args:
        signal: ``(T, S)`` signal per decision time and symbol (higher = more bullish); NaN
            means not tradable at that time.
        method: a key of ``POSITION_METHODS``: ``rank``, ``zscore`` or ``sign`` (see the module
            docstring for each definition).
        gross: target gross exposure ``sum_s |w[t, s]|`` per row, fraction of equity; > 0.

    Returns:
        ``(T, S)`` weights, fraction of equity, 0 where the signal is NaN; no NaN.

    Raises:
        ConfigError: if ``method`` is unknown (the message lists the valid names) or ``gross``
            is not a finite number > 0.
        DataError: if ``signal`` is not 2-D or holds an infinite value.
    """
    check_position_method(method)
    if isinstance(gross, bool) or not isinstance(gross, int | float | np.integer | np.floating):
        raise ConfigError(f"gross must be a number > 0, got {gross!r}")
    if not np.isfinite(gross) or gross <= 0:
        raise ConfigError(f"gross must be a finite number > 0, got {gross!r}")
    return POSITION_METHODS[method](as_panel(signal, "signal"), float(gross))
