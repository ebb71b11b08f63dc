"""Feature registry and the configured feature pipeline (kernels: `plusultra.data.indicators`).

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

from plusultra.data import regimes
from plusultra.data.indicators import (
    FFT_BANDS,
    atr,
    bollinger_width,
    fft_band_energy,
    log_returns,
    macd,
    realised_vol,
    rolling_skew_kurt,
    rolling_zscores,
    rsi,
    sigmoid,
    zscore,
)
from plusultra.data.panel import Panel
from plusultra.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Panel fields a feature may depend on; any other key of `Panel.fields` works too.
FIELDS = ("open", "high", "low", "close", "volume", "close_raw")


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
