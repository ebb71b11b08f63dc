"""Feature registry, vectorised indicator kernels and the configured feature pipeline.

Every feature is a causal function of a :class:`~plusultra.data.panel.Panel`: its value at time
``t`` uses bars up to ``t`` only (``tests/test_features.py`` perturbs every bar after ``t`` for
every registered feature and checks the past is bit-identical). Kernels work on whole ``(T, S)``
arrays at once: pandas rolling/ewm (Cython, no ``rolling.apply``) across all symbols, or numpy
over sliding windows processed in memory-bounded blocks of symbols. Each kernel has a naive
loop reference in the tests; RSI, MACD, Bollinger width and ATR are also checked against `ta`.

Conventions:

- ``NaN`` marks "undefined": before a feature's lookback is filled, on bars a symbol does not
  have, and where a denominator is zero. Rolling windows that contain a missing bar are
  undefined; exponential averages skip missing bars (their state carries over) and are NaN on
  them.
- ``lookback`` is the number of bars before ``t`` a feature needs: on a gap-free series its
  first defined value is at index ``lookback``.
- Units: returns are log returns (per bar unless stated); price-valued indicators (ATR, MACD)
  are divided by the close so they are comparable across symbols; oscillators and
  probabilities are bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from plusultra.data import regimes
from plusultra.data.panel import Panel
from plusultra.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TRADING_DAYS = 252
# Panel fields a feature may depend on; any other key of `Panel.fields` works too.
FIELDS = ("open", "high", "low", "close", "volume", "close_raw")
# rfft bins (inclusive) of each FFT band for a 32-bar window: periods 32-8, 6.4-4, 3.6-2 bars.
FFT_BANDS = {"low": (1, 4), "mid": (5, 8), "high": (9, 16)}
BLOCK_ELEMENTS = 1 << 22  # elements of one block of sliding windows (32 MiB in float64)


# ----------------------------------------------------------------------------- kernels
def _frame(x: np.ndarray) -> pd.DataFrame:
    """(T,) or (T, S) array as a (T, S') DataFrame (no copy for float64)."""
    return pd.DataFrame(np.asarray(x, dtype=np.float64).reshape(len(x), -1))


def _rolling(x: np.ndarray, n: int) -> pd.core.window.Rolling:
    return _frame(x).rolling(n, min_periods=n)


def _back(frame: pd.DataFrame, like: np.ndarray) -> np.ndarray:
    return frame.to_numpy().reshape(np.shape(like))


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is zero or undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / den, np.nan)


def log_returns(close: np.ndarray, k: int = 1) -> np.ndarray:
    """k-bar log return ``log(close_t / close_{t-k})``; (T, S) -> (T, S), NaN for t < k."""
    lc = np.log(np.asarray(close, dtype=np.float64))
    out = np.full_like(lc, np.nan)
    out[k:] = lc[k:] - lc[:-k]
    return out


def ewm_mean(x: np.ndarray, alpha: float, min_periods: int = 0) -> np.ndarray:
    """Exponential average ``y_t = (1 - alpha) y_{t-1} + alpha x_t`` seeded with the first x.

    Missing inputs are skipped (state carried over) and give NaN; the output is NaN until
    `min_periods` inputs have been seen. Same recursion as pandas ``ewm(adjust=False)``.

    Args:
        x: (T,) or (T, S) values.
        alpha: smoothing factor in (0, 1]; ``2 / (span + 1)`` or ``1 / n`` for Wilder.
        min_periods: number of observed inputs before the first defined output.
    """
    x = np.asarray(x, dtype=np.float64)
    data = pd.Series(x) if x.ndim == 1 else _frame(x)  # a Series is cheaper for one column
    ewm = data.ewm(alpha=alpha, adjust=False, ignore_na=True, min_periods=min_periods)
    out = ewm.mean().to_numpy().reshape(x.shape)
    missing = np.isnan(x)
    if missing.any():
        out[missing] = np.nan
    return out


def rsi(close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's RSI in [0, 100] from close-to-close changes; 100 when the average loss is 0.

    Average gain and loss are Wilder averages (alpha = 1/n) seeded with the first change, so
    the first value is at index n. `ta` differs only in its warm-up: it counts a zero change
    on the first bar, a difference that decays as ``(1 - 1/n)^t`` (< 1e-6 after ~250 bars).

    Args:
        close: (T,) or (T, S) prices.
        n: averaging length in bars.
    """
    close = np.asarray(close, dtype=np.float64)
    delta = np.full_like(close, np.nan)
    delta[1:] = close[1:] - close[:-1]
    gain = ewm_mean(np.clip(delta, 0.0, None), 1.0 / n, n)
    loss = ewm_mean(np.clip(-delta, 0.0, None), 1.0 / n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(loss == 0, 100.0, 100.0 - 100.0 / (1.0 + gain / loss))
    out[np.isnan(gain)] = np.nan
    return out


def macd(
    close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MACD line, signal line and histogram, in price units (same definition as `ta`).

    ``line = EMA_fast(close) - EMA_slow(close)`` (EMAs with alpha = 2/(span+1) seeded with the
    first close, defined after `fast` / `slow` bars), ``signal = EMA_signal(line)`` seeded with
    the first defined line value, ``hist = line - signal``. First histogram at index
    ``slow + signal - 2``.

    Args:
        close: (T,) or (T, S) prices.
        fast, slow, signal: EMA spans in bars.

    Returns:
        line, signal, hist: each shaped like `close`.
    """
    line = ewm_mean(close, 2.0 / (fast + 1.0), fast) - ewm_mean(close, 2.0 / (slow + 1.0), slow)
    sig = ewm_mean(line, 2.0 / (signal + 1.0), signal)
    return line, sig, line - sig


def bollinger_width(close: np.ndarray, n: int = 20, k: float = 2.0, ddof: int = 0) -> np.ndarray:
    """Bollinger band width ``(upper - lower) / middle = 2 k std / mean`` as a fraction.

    Bollinger's (and `ta`'s) bands use the population std (``ddof=0``); `ta` reports the width
    in percent (x100). First value at index n - 1.

    Args:
        close: (T,) or (T, S) prices.
        n: window in bars (including t).
        k: band half-width in standard deviations.
        ddof: delta degrees of freedom of the std.
    """
    roll = _rolling(close, n)
    return _div(2.0 * k * _back(roll.std(ddof=ddof), close), _back(roll.mean(), close))


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """``max(high - low, |high - c_prev|, |low - c_prev|)`` in price units.

    ``c_prev`` is the symbol's last available close before t (so a missing day does not hide
    a gap); on a symbol's first bar the true range is ``high - low`` (as in `ta`).
    """
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    prev = _back(_frame(close).ffill().shift(1), close)
    hl = high - low
    return np.where(
        np.isnan(prev), hl, np.maximum(hl, np.maximum(np.abs(high - prev), np.abs(low - prev)))
    )


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's average true range in price units (same definition as `ta`).

    Seeded with the mean of a symbol's first n true ranges at its n-th bar, then
    ``atr_t = ((n - 1) atr_{t-1} + tr_t) / n``; bars without data are skipped. First value at
    index n - 1. `ta` fills the warm-up with 0 instead of NaN.

    Args:
        high, low, close: (T,) or (T, S) prices.
        n: averaging length in bars.
    """
    tr = true_range(high, low, close)
    valid = ~np.isnan(tr)
    count = np.cumsum(valid, axis=0)
    seed = valid & (count == n)
    x = np.where(count > n, tr, np.nan)
    x[seed] = np.cumsum(np.where(valid, tr, 0.0), axis=0)[seed] / n
    out = ewm_mean(x, 1.0 / n)
    out[~valid] = np.nan
    return out


def _windowed(
    x: np.ndarray, n: int, fn: Callable[[np.ndarray], np.ndarray], n_out: int, dtype: type
) -> np.ndarray:
    """Apply `fn` to every trailing n-bar window of x (T, S) in memory-bounded blocks.

    `fn` maps windows (rows, cols, n) to (rows, cols, n_out). Blocks hold at most
    `BLOCK_ELEMENTS` window values, whatever T and S. Returns (T, S, n_out), NaN for t < n - 1.
    """
    t_len, s_len = x.shape
    out = np.full((t_len, s_len, n_out), np.nan, dtype=dtype)
    cols = int(np.clip(BLOCK_ELEMENTS // max(t_len * n, 1), 1, s_len))
    rows = max(BLOCK_ELEMENTS // (cols * n), 1)
    for c0 in range(0, s_len, cols):  # blocks of symbols, then of time
        for t0 in range(n - 1, t_len, rows):
            t1 = min(t0 + rows, t_len)
            win = sliding_window_view(x[t0 - n + 1 : t1, c0 : c0 + cols], n, axis=0)
            out[t0:t1, c0 : c0 + cols] = fn(win)
    return out


def _moments(win: np.ndarray) -> np.ndarray:
    """Sample skewness and excess kurtosis (pandas' bias-corrected G1, G2) of each window."""
    n = win.shape[-1]
    d = win - win.mean(axis=-1, keepdims=True)  # (rows, cols, n)
    d2 = d * d
    m2 = d2.sum(axis=-1) / n
    m3 = np.einsum("...i,...i->...", d2, d) / n
    m4 = np.einsum("...i,...i->...", d2, d2) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        m2 = np.where(m2 > 0, m2, np.nan)
        skew = np.sqrt(n * (n - 1.0)) / (n - 2.0) * m3 / m2**1.5
        kurt = (n - 1.0) / ((n - 2.0) * (n - 3.0)) * ((n + 1.0) * m4 / m2**2 - 3.0 * (n - 1.0))
    return np.stack([skew, kurt], axis=-1)


def rolling_skew_kurt(x: np.ndarray, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Rolling sample skewness and excess kurtosis of x over n bars including t.

    Same bias-corrected estimators as pandas ``rolling().skew()/.kurt()``, computed two-pass on
    each window (pandas shifts the data by its global mean first, which makes the past depend
    bit-wise on the future). NaN where the window has a missing value or zero variance.

    Args:
        x: (T, S) values, e.g. log returns.
        n: window length (>= 4).

    Returns:
        skew, kurt: (T, S) float64 each.
    """
    out = _windowed(np.asarray(x, dtype=np.float64), n, _moments, 2, np.float64)
    return out[..., 0], out[..., 1]


def _dft_band_matrices(n: int, bands: Mapping[str, tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """Real DFT basis (n, 2K) as [cos | -sin] and the (K, B) one-sided band weights."""
    k = np.arange(n // 2 + 1)
    angle = 2.0 * np.pi * np.outer(np.arange(n), k) / n
    basis = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1).astype(np.float32)
    one_sided = np.where((k > 0) & (2 * k < n), 2.0, 1.0)  # bins mirrored in the full DFT
    weights = np.zeros((len(k), len(bands)), dtype=np.float32)
    for b, (lo, hi) in enumerate(bands.values()):
        weights[lo : hi + 1, b] = one_sided[lo : hi + 1]
    total = np.zeros((len(k), 1), dtype=np.float32)
    total[1:, 0] = one_sided[1:]
    return basis, weights, total


def fft_band_energy(
    x: np.ndarray, n: int = 32, bands: Mapping[str, tuple[int, int]] = FFT_BANDS
) -> np.ndarray:
    """Share of a trailing window's spectral energy in each frequency band, in [0, 1].

    For each t the window ``x[t-n+1 .. t]`` is transformed (rectangular window, no taper);
    energy ``|X_k|^2`` is counted one-sided (bins 1..n/2 - 1 twice) and divided by the total
    over bins 1..n/2, so the DC bin (the window's mean) is excluded and the shares of bands
    covering 1..n/2 sum to 1. The DFT is a float32 matrix product with a (n, n + 2) cos/sin
    basis (for n = 32 faster than batched ``np.fft.rfft``); blocks of symbols keep memory at
    a few tens of MB. NaN where the window has a missing value or no variation.

    Args:
        x: (T, S) values, e.g. log returns.
        n: window length in bars.
        bands: name -> inclusive (first, last) rfft bin.

    Returns:
        (T, S, B) float32 shares in the order of `bands`.
    """
    basis, weights, total = _dft_band_matrices(n, bands)
    n_bins = basis.shape[1] // 2

    def shares(win: np.ndarray) -> np.ndarray:
        spec = win @ basis  # (rows, cols, 2K)
        power = spec[..., :n_bins] ** 2 + spec[..., n_bins:] ** 2  # (rows, cols, K)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (power @ weights) / (power @ total)

    return _windowed(np.asarray(x, dtype=np.float32), n, shares, len(bands), np.float32)


def rolling_zscores(x: np.ndarray, n: int, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rolling z-scores of x against the n bars ending at t and against the n bars before t.

    Args:
        x: (T,) or (T, S) values.
        n: window length in bars.
        ddof: delta degrees of freedom of the std.

    Returns:
        current: ``(x_t - mean(x_{t-n+1..t})) / std(...)``, first value at index n - 1.
        anomaly: ``(x_t - mean(x_{t-n..t-1})) / std(...)``: the bar is not part of its own
            baseline, so a spike is not damped by itself; first value at index n.
        Both NaN where the std is 0.
    """
    roll = _rolling(x, n)
    mean, std = _back(roll.mean(), x), _back(roll.std(ddof=ddof), x)
    prev_mean, prev_std = np.full_like(mean, np.nan), np.full_like(std, np.nan)
    prev_mean[1:], prev_std[1:] = mean[:-1], std[:-1]
    return _div(x - mean, std), _div(x - prev_mean, prev_std)


def zscore(x: np.ndarray, n: int, ddof: int = 1) -> np.ndarray:
    """Rolling z-score ``(x_t - mean) / std`` over the n bars ending at t; NaN where std is 0."""
    roll = _rolling(x, n)
    return _div(x - _back(roll.mean(), x), _back(roll.std(ddof=ddof), x))


def realised_vol(returns: np.ndarray, n: int) -> np.ndarray:
    """Annualised realised volatility: sample std of n returns (incl. t) x sqrt(252)."""
    return _back(_rolling(returns, n).std(), returns) * np.sqrt(TRADING_DAYS)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``; NaN stays NaN."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class FeatureSpec:
    """A registered feature: a causal (T, S) column computed from a panel.

    Attributes:
        name: unique name used in config (`features.names`) and as the output column.
        fn: ``FeatureInputs -> (T, S)`` array; reads columns and other features through its
            argument (``x["close"]``, ``x["ind_sentiment"]``, ``x["log_return"]``). Must be
            causal and vectorised across symbols.
        lookback: bars before t the feature needs (first defined index on a gap-free series).
        description: one line for docs: definition and units.
        dependencies: what `fn` reads: panel fields (``close``, ``volume``, ...), indicators as
            ``ind_<name>``, or features registered earlier. A feature whose dependency is
            absent from a panel is skipped with a logged reason.
        tags: groups for selection by `features.tags` (e.g. ``momentum``).
    """

    name: str
    fn: Callable[[FeatureInputs], np.ndarray]
    lookback: int
    description: str
    dependencies: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "dependencies", tuple(self.dependencies))
        object.__setattr__(self, "tags", tuple(self.tags))
        if not self.name or not self.name.replace("_", "").isalnum():
            raise ValueError(f"feature name {self.name!r}: use letters, digits and underscores")
        if self.name.startswith("ind_"):
            raise ValueError(f"feature name {self.name!r}: the prefix ind_ is for indicators")
        if int(self.lookback) != self.lookback or self.lookback < 0:
            raise ValueError(f"feature {self.name}: lookback={self.lookback} must be an int >= 0")


class FeatureInputs:
    """Memoised access to a panel's columns and to other features during one computation.

    ``x[name]`` returns a panel field (``close``), an indicator (``ind_<name>``) or a
    registered feature, each (T, S); ``x.cached(key, make)`` shares an intermediate result
    (e.g. the three MACD lines) between features.
    """

    def __init__(self, panel: Panel, registry: FeatureRegistry, keep: Iterable[str] = ()) -> None:
        self.panel = panel
        self._registry = registry
        self._keep = set(keep)  # features to memoise (dependencies of other features)
        self._cache: dict[str, Any] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._cache:
            return self._cache[name]
        if name in self._registry:
            value = self._registry[name].fn(self)
            if name in self._keep:
                self._cache[name] = value
            return value
        if name.startswith("ind_") and name[4:] in self.panel.indicators:
            return self.panel.indicators[name[4:]]
        return self.panel.fields[name]

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """Return ``make()``, computed once per panel under `key`."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


class FeatureRegistry(Mapping[str, FeatureSpec]):
    """Named feature specs, in registration order; dict-like (``name in``, ``[name]``, iter)."""

    def __init__(self, specs: Iterable[FeatureSpec] = ()) -> None:
        self._specs: dict[str, FeatureSpec] = {}
        for spec in specs:
            self.register(spec)

    def __getitem__(self, name: str) -> FeatureSpec:
        return self._specs[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs)

    def __len__(self) -> int:
        return len(self._specs)

    def register(self, spec: FeatureSpec) -> FeatureSpec:
        """Add `spec`; raises ValueError if its name is taken. Returns `spec`."""
        if spec.name in self._specs:
            raise ValueError(f"feature {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        return spec

    @property
    def tags(self) -> list[str]:
        """Every tag used by a registered feature, sorted."""
        return sorted({t for spec in self._specs.values() for t in spec.tags})

    def select(self, names: list[str] | None = None, tags: list[str] | None = None) -> list[str]:
        """Feature names chosen by name and/or tag, without duplicates.

        Args:
            names: names in output order; None (with `tags` None) selects every feature.
            tags: add every feature carrying any of these tags, in registration order.

        Raises:
            ConfigError: unknown name (`features.names`) or tag (`features.tags`).
        """
        unknown = [n for n in names or [] if n not in self._specs]
        if unknown:
            raise ConfigError(
                f"features.names: unknown feature(s) {unknown}; valid names: {sorted(self)}"
            )
        bad_tags = [t for t in tags or [] if t not in self.tags]
        if bad_tags:
            raise ConfigError(f"features.tags: unknown tag(s) {bad_tags}; valid tags: {self.tags}")
        if names is None and tags is None:
            return list(self._specs)
        chosen = list(dict.fromkeys(names or []))
        wanted = set(tags or [])
        chosen += [n for n, s in self._specs.items() if wanted & set(s.tags) and n not in chosen]
        return chosen

    def missing(self, name: str, panel: Panel, _empty: dict[str, bool] | None = None) -> str | None:
        """Why feature `name` cannot be computed on `panel`, or None if it can."""
        empty = {} if _empty is None else _empty  # field -> absent or all NaN
        for dep in self._specs[name].dependencies:
            if dep in self._specs:
                why = self.missing(dep, panel, empty)
                if why:
                    return f"needs feature '{dep}', which {why}"
            elif dep.startswith("ind_"):
                if dep[4:] not in panel.indicators:
                    return f"needs indicator '{dep[4:]}', which the panel does not have"
            else:
                if dep not in empty:
                    empty[dep] = dep not in panel.fields or np.isnan(panel.fields[dep]).all()
                if empty[dep]:
                    return f"needs column '{dep}', which the panel does not have (or is all NaN)"
        return None

    def requirements(self, names: Iterable[str]) -> set[str]:
        """Features that the features `names` read, directly or indirectly."""
        out: set[str] = set()
        todo = [d for n in names for d in self._specs[n].dependencies]
        while todo:
            dep = todo.pop()
            if dep in self._specs and dep not in out:
                out.add(dep)
                todo.extend(self._specs[dep].dependencies)
        return out


REGISTRY = FeatureRegistry()


def register(spec: FeatureSpec) -> FeatureSpec:
    """Add `spec` to the default registry (ValueError if the name is taken)."""
    return REGISTRY.register(spec)


# ----------------------------------------------------------------------------- default set
def _log_close(x: FeatureInputs) -> np.ndarray:
    return x.cached("log_close", lambda: np.log(x["close"]))


def _macd(x: FeatureInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return x.cached("macd_12_26_9", lambda: macd(x["close"], 12, 26, 9))


def _macd_signal_diff(x: FeatureInputs) -> np.ndarray:
    sig = _macd(x)[1]
    step = np.full_like(sig, np.nan)
    step[1:] = sig[1:] - sig[:-1]
    return step / x["close"]


def _gap_open(x: FeatureInputs) -> np.ndarray:
    prev = np.full_like(x["close"], np.nan)
    prev[1:] = x["close"][:-1]
    return np.log(x["open"] / prev)


def _volume_stats(x: FeatureInputs, n: int) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of log(1 + volume) over n bars including t and vs the previous n bars."""
    return x.cached(f"volume_z_{n}", lambda: rolling_zscores(np.log1p(x["volume"]), n))


def _skew_kurt(x: FeatureInputs) -> tuple[np.ndarray, np.ndarray]:
    return x.cached("moments_20", lambda: rolling_skew_kurt(x["log_return"], 20))


def _fft(x: FeatureInputs) -> np.ndarray:
    return x.cached("fft_32", lambda: fft_band_energy(x["log_return"], 32))


def _velocity(k: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: log_returns(x["close"], k) / k


def _log_return(k: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: log_returns(x["close"], k)


def _vol(n: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: realised_vol(x["log_return"], n)


def _bull(n: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: sigmoid(zscore(_log_close(x), n))


def _band(b: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: _fft(x)[..., b]


C, HLC, V, R = ("close",), ("high", "low", "close"), ("volume",), ("log_return",)
for _spec in (
    FeatureSpec("log_return", _log_return(1), 1, "log(close_t / close_{t-1})", C, ("returns",)),
    FeatureSpec(
        "return_5", _log_return(5), 5, "log(close_t / close_{t-5})", C, ("returns", "momentum")
    ),
    FeatureSpec(
        "return_20", _log_return(20), 20, "log(close_t / close_{t-20})", C, ("returns", "momentum")
    ),
    *(
        FeatureSpec(
            f"velocity_{k}",
            _velocity(k),
            k,
            f"price velocity: log(close_t / close_{{t-{k}}}) / {k}, log return per bar",
            C,
            ("momentum", "trend"),
        )
        for k in (3, 10, 40)
    ),
    FeatureSpec(
        "gap_open",
        _gap_open,
        1,
        "log(open_t / close_{t-1}), overnight gap",
        ("open", "close"),
        ("returns",),
    ),
    FeatureSpec(
        "range_hl",
        lambda x: np.log(x["high"] / x["low"]),
        0,
        "log(high / low) of the bar",
        ("high", "low"),
        ("volatility",),
    ),
    *(
        FeatureSpec(
            f"volatility_{n}",
            _vol(n),
            n,
            f"annualised realised vol: std (ddof 1) of {n} log returns x sqrt(252)",
            R,
            ("volatility",),
        )
        for n in (20, 60)
    ),
    FeatureSpec(
        "atr_14",
        lambda x: atr(x["high"], x["low"], x["close"], 14) / x["close"],
        13,
        "Wilder ATR(14) / close_t: average true range as a fraction of price",
        HLC,
        ("volatility",),
    ),
    FeatureSpec(
        "bb_width_20",
        lambda x: bollinger_width(x["close"], 20, 2.0),
        19,
        "Bollinger width (upper - lower) / middle, 20 bars, 2 std (ddof 0), fraction",
        C,
        ("volatility",),
    ),
    FeatureSpec(
        "skew_20",
        lambda x: _skew_kurt(x)[0],
        20,
        "sample skewness (G1) of 20 log returns",
        R,
        ("distribution",),
    ),
    FeatureSpec(
        "kurt_20",
        lambda x: _skew_kurt(x)[1],
        20,
        "sample excess kurtosis (G2) of 20 log returns",
        R,
        ("distribution",),
    ),
    FeatureSpec(
        "rsi_14",
        lambda x: (rsi(x["close"], 14) - 50.0) / 50.0,
        14,
        "Wilder RSI(14) scaled to [-1, 1]: (RSI - 50) / 50",
        C,
        ("momentum",),
    ),
    FeatureSpec(
        "macd_hist",
        lambda x: _macd(x)[2] / x["close"],
        33,
        "MACD(12, 26, 9) histogram (line - signal) / close_t",
        C,
        ("momentum", "trend"),
    ),
    FeatureSpec(
        "macd_signal_diff",
        _macd_signal_diff,
        34,
        "one-bar change of the MACD(12, 26, 9) signal line / close_t (its slope)",
        C,
        ("momentum", "trend"),
    ),
    *(
        FeatureSpec(
            f"bull_prob_{n}",
            _bull(n),
            n - 1,
            f"soft bull regime: sigmoid of the z-score of log close vs its {n}-bar "
            "mean and std (ddof 1); bear = 1 - bull",
            C,
            ("regime", "trend"),
        )
        for n in (20, 50)
    ),
    FeatureSpec(
        "volume_z_20",
        lambda x: _volume_stats(x, 20)[0],
        19,
        "z-score of log(1 + volume) over 20 bars including t",
        V,
        ("volume",),
    ),
    FeatureSpec(
        "volume_anomaly_20",
        lambda x: np.clip(_volume_stats(x, 20)[1], -5.0, 5.0),
        20,
        "z-score of log(1 + volume_t) vs the previous 20 bars, clipped to [-5, 5]",
        V,
        ("volume",),
    ),
    *(
        FeatureSpec(
            f"fft_{band}_32",
            _band(b),
            32,
            f"share of the energy of the last 32 log returns in FFT bins {lo}-{hi} "
            f"(periods {32 / lo:.3g}-{32 / hi:.2g} bars), in [0, 1]",
            R,
            ("spectral",),
        )
        for b, (band, (lo, hi)) in enumerate(FFT_BANDS.items())
    ),
):
    register(_spec)


def registry_markdown(registry: FeatureRegistry = REGISTRY) -> str:
    """docs/features.md: every registered feature with tags, lookback, dependencies, meaning."""
    lines = [
        "# Features",
        "",
        "Generated by `plusultra-data features --markdown` from the registry in "
        "`src/plusultra/data/features.py`; do not edit by hand.",
        "",
        "- **Causal.** A feature's value at bar *t* uses bars up to *t* only; a test perturbs "
        "every bar after *t* for every registered feature and checks the past is bit-identical.",
        "- **Lookback** is the number of bars before *t* a feature needs: on a gap-free series "
        "its first value is at index *lookback*. Before that, on bars a symbol lacks, and where "
        "a window contains a missing bar, the value is NaN.",
        "- **Units.** Returns are log returns; price-valued indicators (ATR, MACD) are divided "
        "by the close; oscillators and probabilities are bounded. All columns are z-scored "
        "with train-segment statistics afterwards.",
        "- A feature whose dependencies are absent (e.g. no volume) is skipped with a warning.",
        "- Select with `features.names` and/or `features.tags`; `ind_<name>` columns come from "
        "`features.indicators`.",
        "",
        "| name | tags | lookback | dependencies | description |",
        "|---|---|---|---|---|",
    ]
    for spec in registry.values():
        deps = ", ".join(f"`{d}`" for d in spec.dependencies) or "-"
        lines.append(
            f"| `{spec.name}` | {', '.join(spec.tags) or '-'} | {spec.lookback} | {deps} | "
            f"{spec.description.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- pipeline
def _label(fn: Callable[[Panel], np.ndarray]) -> Callable[[Panel], np.ndarray]:
    """An int8 regime label (-1 = undefined) as a float column (NaN = undefined)."""

    def column(panel: Panel) -> np.ndarray:
        labels = fn(panel).astype(np.float64)
        labels[labels < 0] = np.nan
        return labels

    return column


# Regime columns (plusultra.data.regimes), computed from the panel with default parameters.
REGIME_FEATURES: dict[str, Callable[[Panel], np.ndarray]] = {
    "volatility": _label(regimes.volatility_regime),
    "liquidity": _label(regimes.liquidity_regime),
    "sector_strength": regimes.sector_rotation,
    "sector_rank": regimes.sector_rank,
}


class FeaturePipeline:
    """Computes the configured features and raw indicator columns as one (T, S, F) array.

    Args:
        names: registered feature names (see `REGISTRY`), in output order; None together with
            `tags` None selects every registered feature.
        indicators: names from the `indicators` table appended as raw ``ind_<name>`` columns.
        skip_missing_indicators: when an indicator is absent from the database, skip it with a
            logged warning (True) or fail (False). Inference always uses the run's saved list
            strictly. Features whose dependencies are absent are always skipped with a warning.
        tags: also select every feature carrying any of these tags.
        regimes: market-regime columns appended as ``regime_<name>`` (see `REGIME_FEATURES`):
            volatility / liquidity labels (0, 1, 2; NaN during their ~270-bar warm-up) and
            sector relative strength / rank. Opt-in because of that warm-up.

    Raises:
        ConfigError: unknown name or tag, or nothing selected.
    """

    def __init__(
        self,
        names: list[str] | None = None,
        indicators: list[str] | None = None,
        skip_missing_indicators: bool = True,
        tags: list[str] | None = None,
        regimes: list[str] | None = None,
        registry: FeatureRegistry = REGISTRY,
    ) -> None:
        self.registry = registry
        self.names = registry.select(
            None if names is None else list(names), None if tags is None else list(tags)
        )
        self.indicators = list(indicators or [])
        self.skip_missing_indicators = skip_missing_indicators
        self.tags = list(tags) if tags is not None else None
        self.regimes = list(regimes or [])
        unknown = [r for r in self.regimes if r not in REGIME_FEATURES]
        if unknown:
            raise ConfigError(
                f"features.regimes: unknown {unknown}; valid: {sorted(REGIME_FEATURES)}"
            )
        self.skipped: dict[str, str] = {}  # feature -> reason, from the last compute()
        if not self.names and not self.indicators and not self.regimes:
            raise ConfigError("features: select at least one feature or indicator")

    @property
    def lookback(self) -> int:
        """Bars of history needed before all features are defined."""
        return max((self.registry[n].lookback for n in self.names), default=0)

    def compute(self, panel: Panel) -> tuple[np.ndarray, list[str]]:
        """Return features (T, S, F) float32 (NaN where undefined) and their column names."""
        self.skipped = {}
        names, empty = [], {}
        for name in self.names:
            why = self.registry.missing(name, panel, empty)
            if why:
                log.warning("features.names: skipping feature '%s': it %s", name, why)
                self.skipped[name] = why
            else:
                names.append(name)
        for ind in self.indicators:
            if ind not in panel.indicators:
                msg = (
                    f"features.indicators: indicator '{ind}' not in the database's indicators "
                    f"table (has {sorted(panel.indicators) or 'none'})"
                )
                if not self.skip_missing_indicators:
                    raise DataError(msg)
                log.warning("%s; skipped", msg)
                continue
            names.append(f"ind_{ind}")
        names += [f"regime_{r}" for r in self.regimes]
        keep = self.registry.requirements(n for n in names if n in self.registry)
        inputs = FeatureInputs(panel, self.registry, keep)
        out = np.empty((*panel.shape, len(names)), dtype=np.float32)  # (T, S, F)
        for j, name in enumerate(names):
            if name.startswith("regime_"):
                col = REGIME_FEATURES[name[len("regime_") :]](panel)
            else:
                col = inputs[name] if name in self.registry else panel.indicators[name[4:]]
            with np.errstate(invalid="ignore", over="ignore"):
                col = np.asarray(col, dtype=np.float32)
            out[..., j] = np.where(np.isfinite(col), col, np.float32(np.nan))
        return out, names
