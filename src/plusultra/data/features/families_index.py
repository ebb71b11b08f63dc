"""Market features against a joined index: the index's return, and each symbol's beta to it.

The market of `families_context` is the universe's equal-weight return. When a data config
joins an index level as alternative data, these features measure the same things against the
index instead: ``data=sp500_stocks_index`` joins the S&P 500 level of the ``sp500_index`` side
table as the indicator ``ind_index_sp500`` (`INDEX_INDICATOR`). A panel without it skips them
with the registry's reason ("needs indicator 'index_sp500' ...").

Timing: the features read the index level at bar t as the close of t, the join's
``publication_lag: 0D``. The index close is a weighted sum of its members' closing prices at
t, the same closes that the symbol's own features and the equal-weight market use at t, so it
is known at the decision close (a config that lags it would regress r_t on the index return of
t-1). Gaps: the index return at t is ``log(level_t / level_{t-1})`` only where both levels are
positive and finite; a missing level (NaN) gives NaN at t and t+1, never a return across the
gap. The join can not tell a carried-forward level from a new one, so the data config joins
the index with ``ffill_limit: 0``: a day without an index close is NaN rather than a stale
level (which would read as a 0 return followed by a two-day return).

Beta, correlation and residual vol are `family_kernels.rolling_regression` of the symbol's
log return on the index return over the n bars ending at t, as the ``_mkt_`` features: any
missing bar of either side in the window makes it NaN. Every feature is NaN on bars where the
symbol has no bar.
"""

from __future__ import annotations

import numpy as np

from plusultra.data.features import family_kernels as K
from plusultra.data.features.families_context import MARKET_WINDOWS, Fn
from plusultra.data.features.indicators import TRADING_DAYS
from plusultra.data.features.registry import FeatureInputs, FeatureSpec

INDEX_INDICATOR = "index_sp500"  # ind_<name> as joined by conf/data/sp500_stocks_index.yaml
IND = f"ind_{INDEX_INDICATOR}"
TAGS = ("altdata", "market", "index")  # altdata first: skipped without the side table


def index_return(level: np.ndarray) -> np.ndarray:
    """Bar-to-bar log return of an index level, (T,) or (T, S) -> same shape.

    ``log(level_t / level_{t-1})`` where both levels are finite and > 0, else NaN (NaN at
    t = 0): no return spans a missing level.
    """
    level = np.asarray(level, dtype=np.float64)
    level = np.where(np.isfinite(level) & (level > 0), level, np.nan)
    return np.log(level / K.shift(level, 1))


def _index_return(x: FeatureInputs) -> np.ndarray:
    """(T, S) index log return (the joined level is broadcast to every symbol)."""
    return x.cached("index_return", lambda: index_return(x[IND]))


def _on_bars(x: FeatureInputs, values: np.ndarray) -> np.ndarray:
    return np.where(K.listed(x["close"]), values, np.nan)


def _regression(x: FeatureInputs, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return x.cached(
        f"index_reg_{n}", lambda: K.rolling_regression(x["log_return"], _index_return(x), n)
    )


def _reg(n: int, i: int, scale: float = 1.0) -> Fn:
    return lambda x: _on_bars(x, _regression(x, n)[i] * scale)


DEPS = (IND, "log_return", "close")

INDEX_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "index_return",
        lambda x: _on_bars(x, _index_return(x)),
        1,
        "log return of the joined index level (ind_index_sp500): log(level_t / level_{t-1}), "
        "NaN where either level is missing",
        (IND, "close"),
        (*TAGS, "returns"),
    ),
    *(
        spec
        for n in MARKET_WINDOWS
        for spec in (
            FeatureSpec(
                f"beta_idx_{n}",
                _reg(n, 0),
                n,
                f"OLS beta of the symbol's log return to the index's over {n} bars",
                DEPS,
                TAGS,
            ),
            FeatureSpec(
                f"corr_idx_{n}",
                _reg(n, 1),
                n,
                f"correlation of the symbol's log return with the index's over {n} bars",
                DEPS,
                TAGS,
            ),
            FeatureSpec(
                f"idio_vol_idx_{n}",
                _reg(n, 2, float(np.sqrt(TRADING_DAYS))),
                n,
                f"annualised residual vol of the {n}-bar index regression: "
                "std (ddof 1) of the OLS residuals x sqrt(252)",
                DEPS,
                (*TAGS, "volatility"),
            ),
        )
    ),
)
