"""Qlib's Alpha158 factor set as registered `FeatureSpec`s (`ALPHA158_FEATURES`, 158 specs).

Provenance: the expressions of ``Alpha158DL.get_feature_config`` in Qlib's
``qlib/contrib/data/loader.py`` with its default config (kbar, price fields OPEN/HIGH/LOW/VWAP
at lag 0, and 29 rolling operators x windows 5, 10, 20, 30, 60), under Qlib's names and in
Qlib's order; each spec's description quotes its Qlib expression. Operators follow
``qlib/data/ops.py``: ``Std`` has ddof 1, ``Quantile`` interpolates linearly, ``Rank`` is the
average-tie percentile rank of the newest value, ``IdxMax``/``IdxMin`` the 1-based position of
the first extreme counted from the oldest bar of the window, ``Slope``/``Rsquare``/``Resi`` an
OLS on the time index, and ``Corr``/``Rsquare`` are NaN where a rolling std is within 2e-5 of
zero. Denominators keep Qlib's ``+1e-12``.

Deliberate differences (also in docs/data.md, section "Alpha158 (Qlib)"):

- A rolling window that is not full or contains a missing bar is NaN (Qlib: ``min_periods=1``,
  NaN skipped), so each factor starts after its `lookback`, the library's convention.
- ``Ref(x, 1)`` across a missing bar is NaN, and so are the comparisons ``$close >
  Ref($close, 1)`` of CNTP/CNTN/CNTD on it (Qlib counts a comparison with NaN as false).
- ``$volume / Ref($volume, 1)`` in CORD is NaN when the previous volume is 0 (Qlib: inf).
- Values come out as float32 like every feature; infinities become NaN.

Kernels: `plusultra.data.features.alpha158_kernels`. Shared intermediates (the regression of
each window, the rolling high/low, the sums of up and down moves) are computed once per panel
through `FeatureInputs.cached`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from plusultra.data.features.alpha158_kernels import (
    divide,
    rolling,
    rolling_corr,
    rolling_idxmax,
    rolling_idxmin,
    rolling_rank,
    rolling_regression,
    shift,
)
from plusultra.data.features.registry import FeatureInputs, FeatureSpec

WINDOWS = (5, 10, 20, 30, 60)  # Qlib's rolling windows, in bars
EPS = 1e-12  # Qlib's guard added to denominators
Fn = Callable[[FeatureInputs], np.ndarray]
OP, H, L, C, V = "open", "high", "low", "close", "volume"


# ----------------------------------------------------------------------------- shared parts
def _delta(x: FeatureInputs, field: str) -> np.ndarray:
    """``$field - Ref($field, 1)``, NaN across a missing bar."""
    return x.cached(f"alpha158_delta_{field}", lambda: x[field] - shift(x[field]))


def _moves(x: FeatureInputs, field: str, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rolling sums over d bars of the up moves, down moves and absolute moves of `field`."""

    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        delta = _delta(x, field)
        return (
            rolling(np.maximum(delta, 0.0), d, "sum"),
            rolling(np.maximum(-delta, 0.0), d, "sum"),
            rolling(np.abs(delta), d, "sum"),
        )

    return x.cached(f"alpha158_moves_{field}_{d}", make)


def _counts(x: FeatureInputs, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Shares of the last d bars whose close rose / fell (NaN where a change is undefined)."""

    def make() -> tuple[np.ndarray, np.ndarray]:
        delta = _delta(x, C)
        undefined = np.isnan(delta)
        up = np.where(undefined, np.nan, (delta > 0).astype(np.float64))
        down = np.where(undefined, np.nan, (delta < 0).astype(np.float64))
        return rolling(up, d, "mean"), rolling(down, d, "mean")

    return x.cached(f"alpha158_counts_{d}", make)


def _regression(x: FeatureInputs, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return x.cached(f"alpha158_regression_{d}", lambda: rolling_regression(x[C], d))


def _range(x: FeatureInputs, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``Max($high, d)`` and ``Min($low, d)``."""
    return x.cached(
        f"alpha158_range_{d}", lambda: (rolling(x[H], d, "max"), rolling(x[L], d, "min"))
    )


def _index(x: FeatureInputs, d: int) -> tuple[np.ndarray, np.ndarray]:
    """``IdxMax($high, d)`` and ``IdxMin($low, d)``."""
    return x.cached(
        f"alpha158_index_{d}", lambda: (rolling_idxmax(x[H], d), rolling_idxmin(x[L], d))
    )


def _cord_inputs(x: FeatureInputs) -> tuple[np.ndarray, np.ndarray]:
    """``$close/Ref($close,1)`` and ``Log($volume/Ref($volume,1)+1)``."""

    def make() -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(divide="ignore", invalid="ignore"):
            return x[C] / shift(x[C]), np.log(divide(x[V], shift(x[V])) + 1.0)

    return x.cached("alpha158_cord_inputs", make)


def _weighted_moves(x: FeatureInputs) -> np.ndarray:
    """``Abs($close/Ref($close, 1)-1)*$volume``."""
    return x.cached("alpha158_weighted_moves", lambda: np.abs(x[C] / shift(x[C]) - 1.0) * x[V])


# ----------------------------------------------------------------------------- kbar and price
def _body(x: FeatureInputs) -> tuple[np.ndarray, np.ndarray]:
    """``Greater($open, $close)`` and ``Less($open, $close)``."""
    return np.maximum(x[OP], x[C]), np.minimum(x[OP], x[C])


def _span(x: FeatureInputs) -> np.ndarray:
    return x[H] - x[L] + EPS


KBAR: tuple[tuple[str, Fn, tuple[str, ...], str, str], ...] = (
    ("KMID", lambda x: (x[C] - x[OP]) / x[OP], (OP, C), "($close-$open)/$open", "candle body"),
    ("KLEN", lambda x: (x[H] - x[L]) / x[OP], (OP, H, L), "($high-$low)/$open", "candle range"),
    (
        "KMID2",
        lambda x: (x[C] - x[OP]) / _span(x),
        (OP, H, L, C),
        "($close-$open)/($high-$low+1e-12)",
        "body as a share of the range",
    ),
    (
        "KUP",
        lambda x: (x[H] - _body(x)[0]) / x[OP],
        (OP, H, C),
        "($high-Greater($open, $close))/$open",
        "upper shadow",
    ),
    (
        "KUP2",
        lambda x: (x[H] - _body(x)[0]) / _span(x),
        (OP, H, L, C),
        "($high-Greater($open, $close))/($high-$low+1e-12)",
        "upper shadow as a share of the range",
    ),
    (
        "KLOW",
        lambda x: (_body(x)[1] - x[L]) / x[OP],
        (OP, L, C),
        "(Less($open, $close)-$low)/$open",
        "lower shadow",
    ),
    (
        "KLOW2",
        lambda x: (_body(x)[1] - x[L]) / _span(x),
        (OP, H, L, C),
        "(Less($open, $close)-$low)/($high-$low+1e-12)",
        "lower shadow as a share of the range",
    ),
    (
        "KSFT",
        lambda x: (2 * x[C] - x[H] - x[L]) / x[OP],
        (OP, H, L, C),
        "(2*$close-$high-$low)/$open",
        "close relative to the range's middle",
    ),
    (
        "KSFT2",
        lambda x: (2 * x[C] - x[H] - x[L]) / _span(x),
        (H, L, C),
        "(2*$close-$high-$low)/($high-$low+1e-12)",
        "close relative to the range's middle, as a share of the range",
    ),
)


def _price(field: str) -> Fn:
    return lambda x: x[field] / x[C]


# ----------------------------------------------------------------------------- rolling operators
def _on(d: int, fn: Callable[[FeatureInputs, int], np.ndarray]) -> Fn:
    return lambda x: fn(x, d)


def _sum_ratio(field: str, part: int) -> Callable[[FeatureInputs, int], np.ndarray]:
    """SUMP/SUMN/SUMD (part 0/1/2) of `field`: up, down or net moves / (absolute moves + eps)."""

    def fn(x: FeatureInputs, d: int) -> np.ndarray:
        up, down, total = _moves(x, field, d)
        return (up, down, up - down)[part] / (total + EPS)

    return fn


def _sums(field: str) -> dict[str, str]:
    """Qlib's expressions of the three move sums of `field` over {d} bars."""
    f = f"${field}"
    return {
        "up": f"Sum(Greater({f}-Ref({f}, 1), 0), {{d}})",
        "down": f"Sum(Greater(Ref({f}, 1)-{f}, 0), {{d}})",
        "abs": f"(Sum(Abs({f}-Ref({f}, 1)), {{d}})+1e-12)",
    }


SC, SV = _sums(C), _sums(V)
WEIGHTED = "Abs($close/Ref($close, 1)-1)*$volume"
CORD_EXPR = "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), {d})"
CNT_UP, CNT_DOWN = "Mean($close>Ref($close, 1), {d})", "Mean($close<Ref($close, 1), {d})"
NOT_FLAT = "NaN where a std is < 2e-5"


def _rsv(x: FeatureInputs, d: int) -> np.ndarray:
    high, low = _range(x, d)
    return (x[C] - low) / (high - low + EPS)


def _wvma(x: FeatureInputs, d: int) -> np.ndarray:
    moves = _weighted_moves(x)
    return rolling(moves, d, "std") / (rolling(moves, d, "mean") + EPS)


# operator -> (fn(x, d), lookback - d, dependencies, Qlib expression with {d}, meaning)
ROLLING: dict[str, tuple[Callable[[FeatureInputs, int], np.ndarray], int, tuple, str, str]] = {
    "ROC": (
        lambda x, d: shift(x[C], d) / x[C],
        0,
        (C,),
        "Ref($close, {d})/$close",
        "rate of change",
    ),
    "MA": (
        lambda x, d: rolling(x[C], d, "mean") / x[C],
        -1,
        (C,),
        "Mean($close, {d})/$close",
        "moving average",
    ),
    "STD": (
        lambda x, d: rolling(x[C], d, "std") / x[C],
        -1,
        (C,),
        "Std($close, {d})/$close",
        "std of the close (ddof 1)",
    ),
    "BETA": (
        lambda x, d: _regression(x, d)[0] / x[C],
        -1,
        (C,),
        "Slope($close, {d})/$close",
        "OLS slope of the close on time, per bar",
    ),
    "RSQR": (
        lambda x, d: _regression(x, d)[1],
        -1,
        (C,),
        "Rsquare($close, {d})",
        f"R^2 of that regression ({NOT_FLAT})",
    ),
    "RESI": (
        lambda x, d: _regression(x, d)[2] / x[C],
        -1,
        (C,),
        "Resi($close, {d})/$close",
        "residual of the newest bar in that regression",
    ),
    "MAX": (
        lambda x, d: _range(x, d)[0] / x[C],
        -1,
        (H, C),
        "Max($high, {d})/$close",
        "highest high",
    ),
    "MIN": (lambda x, d: _range(x, d)[1] / x[C], -1, (L, C), "Min($low, {d})/$close", "lowest low"),
    "QTLU": (
        lambda x, d: rolling(x[C], d, "quantile", 0.8) / x[C],
        -1,
        (C,),
        "Quantile($close, {d}, 0.8)/$close",
        "80% quantile (linear)",
    ),
    "QTLD": (
        lambda x, d: rolling(x[C], d, "quantile", 0.2) / x[C],
        -1,
        (C,),
        "Quantile($close, {d}, 0.2)/$close",
        "20% quantile (linear)",
    ),
    "RANK": (
        lambda x, d: rolling_rank(x[C], d),
        -1,
        (C,),
        "Rank($close, {d})",
        "percentile rank of the close in its window, ties averaged, in (0, 1]",
    ),
    "RSV": (
        _rsv,
        -1,
        (H, L, C),
        "($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)",
        "position of the close in the window's range",
    ),
    "IMAX": (
        lambda x, d: _index(x, d)[0] / d,
        -1,
        (H,),
        "IdxMax($high, {d})/{d}",
        "1-based position of the first highest high from the oldest bar ({d} = newest)",
    ),
    "IMIN": (
        lambda x, d: _index(x, d)[1] / d,
        -1,
        (L,),
        "IdxMin($low, {d})/{d}",
        "1-based position of the first lowest low from the oldest bar ({d} = newest)",
    ),
    "IMXD": (
        lambda x, d: (_index(x, d)[0] - _index(x, d)[1]) / d,
        -1,
        (H, L),
        "(IdxMax($high, {d})-IdxMin($low, {d}))/{d}",
        "bars from the low to the high / {d}",
    ),
    "CORR": (
        lambda x, d: rolling_corr(x[C], np.log(x[V] + 1.0), d),
        -1,
        (C, V),
        "Corr($close, Log($volume+1), {d})",
        f"price-volume correlation ({NOT_FLAT})",
    ),
    "CORD": (
        lambda x, d: rolling_corr(*_cord_inputs(x), d),
        0,
        (C, V),
        CORD_EXPR,
        f"correlation of price and volume changes ({NOT_FLAT} or the previous volume is 0)",
    ),
    "CNTP": (
        lambda x, d: _counts(x, d)[0],
        0,
        (C,),
        CNT_UP,
        "share of up bars (a bar after a missing one is NaN, not a non-move)",
    ),
    "CNTN": (
        lambda x, d: _counts(x, d)[1],
        0,
        (C,),
        CNT_DOWN,
        "share of down bars (a bar after a missing one is NaN, not a non-move)",
    ),
    "CNTD": (
        lambda x, d: _counts(x, d)[0] - _counts(x, d)[1],
        0,
        (C,),
        f"{CNT_UP}-{CNT_DOWN}",
        "up share minus down share (a bar after a missing one is NaN, not a non-move)",
    ),
    "SUMP": (
        _sum_ratio(C, 0),
        0,
        (C,),
        f"{SC['up']}/{SC['abs']}",
        "gains / total moves (RSI-like)",
    ),
    "SUMN": (_sum_ratio(C, 1), 0, (C,), f"{SC['down']}/{SC['abs']}", "losses / total moves"),
    "SUMD": (
        _sum_ratio(C, 2),
        0,
        (C,),
        f"({SC['up']}-{SC['down']})/{SC['abs']}",
        "(gains - losses) / total moves",
    ),
    "VMA": (
        lambda x, d: rolling(x[V], d, "mean") / (x[V] + EPS),
        -1,
        (V,),
        "Mean($volume, {d})/($volume+1e-12)",
        "volume moving average / volume",
    ),
    "VSTD": (
        lambda x, d: rolling(x[V], d, "std") / (x[V] + EPS),
        -1,
        (V,),
        "Std($volume, {d})/($volume+1e-12)",
        "volume std (ddof 1) / volume",
    ),
    "WVMA": (
        _wvma,
        0,
        (C, V),
        f"Std({WEIGHTED}, {{d}})/(Mean({WEIGHTED}, {{d}})+1e-12)",
        "coefficient of variation of volume-weighted absolute returns",
    ),
    "VSUMP": (
        _sum_ratio(V, 0),
        0,
        (V,),
        f"{SV['up']}/{SV['abs']}",
        "volume increases / total volume changes",
    ),
    "VSUMN": (
        _sum_ratio(V, 1),
        0,
        (V,),
        f"{SV['down']}/{SV['abs']}",
        "volume decreases / total volume changes",
    ),
    "VSUMD": (
        _sum_ratio(V, 2),
        0,
        (V,),
        f"({SV['up']}-{SV['down']})/{SV['abs']}",
        "(increases - decreases) / total volume changes",
    ),
}


def _window_note(op: str, d: int) -> str:
    if op == "ROC":
        return f"NaN unless bars t and t-{d} are present"
    extra = ROLLING[op][1]
    return (
        f"NaN unless all {d + extra + 1} bars t-{d + extra}..t are present (Qlib: partial windows)"
    )


SOURCE = "Qlib Alpha158"
ALPHA158_FEATURES: tuple[FeatureSpec, ...] = (
    *(
        FeatureSpec(name, fn, 0, f"{SOURCE} `{expr}`: {meaning}", deps, ("alpha158", "kbar"))
        for name, fn, deps, expr, meaning in KBAR
    ),
    *(
        FeatureSpec(
            f"{field.upper()}0",
            _price(field),
            0,
            f"{SOURCE} `${field}/$close`"
            + (": needs a `vwap` column in table series" if field == "vwap" else ""),
            (field, C),
            ("alpha158", "price"),
        )
        for field in ("open", "high", "low", "vwap")
    ),
    *(
        FeatureSpec(
            f"{op}{d}",
            _on(d, fn),
            d + extra,
            f"{SOURCE} `{expr.format(d=d)}`: {meaning.format(d=d)}; {_window_note(op, d)}",
            deps,
            ("alpha158", "rolling"),
        )
        for op, (fn, extra, deps, expr, meaning) in ROLLING.items()
        for d in WINDOWS
    ),
)
