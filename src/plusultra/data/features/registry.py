"""Feature specs, their registry type and the memoised inputs a feature reads.

Every feature is a causal function of a :class:`~plusultra.data.datasets.panel.Panel`: its value at
time
``t`` uses bars up to ``t`` only (``tests/test_features.py`` perturbs every bar after ``t`` for
every registered feature and checks the past is bit-identical). The built-in features are in
`plusultra.data.features.library`; the default registry and the pipeline that computes them are
in `plusultra.data.features.pipeline`.

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

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from plusultra.data.datasets.panel import Panel
from plusultra.errors import ConfigError

# Panel fields a feature may depend on; any other key of `Panel.fields` works too.
FIELDS = ("open", "high", "low", "close", "volume", "close_raw")


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


def _field_missing(panel: Panel, field: str) -> str:
    """Why panel field `field` is unusable ('' if every symbol has a value of it somewhere)."""
    if field not in panel.fields:
        return "which the panel does not have (or is all NaN)"
    lacking = np.isnan(panel.fields[field]).all(axis=0)  # (S,)
    if lacking.all():
        return "which the panel does not have (or is all NaN)"
    if lacking.any():
        names = [str(sym) for sym, lacks in zip(panel.symbols, lacking, strict=True) if lacks]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        return f"which {len(names)} symbol(s) have no value of ({shown})"
    return ""


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

    def missing(self, name: str, panel: Panel, _empty: dict[str, str] | None = None) -> str | None:
        """Why feature `name` cannot be computed on `panel`, or None if it can.

        A panel field is missing when the panel lacks it, or when some symbol has no value of
        it at all (close-only data: NULL open/high/low/volume). Computing the feature anyway
        would make it NaN on every bar of those symbols, so that no window of theirs is
        complete and they would drop out of training; the feature is skipped instead.
        """
        empty = {} if _empty is None else _empty  # field -> reason ('' = present)
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
                    empty[dep] = _field_missing(panel, dep)
                if empty[dep]:
                    return f"needs column '{dep}', {empty[dep]}"
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
