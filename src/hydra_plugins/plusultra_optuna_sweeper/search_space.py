"""Hydra sweep expressions to Optuna distributions, and trial values back to overrides.

``choice(a, b)`` and ``a,b`` -> categorical (a list or dict choice, e.g. a dilation schedule
``choice([1,2,4],[1,2,4,8])``, is stored as its override text); ``range(lo, hi, step)`` (hi
excluded, as in Python) -> int or stepped float; ``interval(lo, hi)`` -> float,
``tag(log, ...)`` samples it on a log scale and ``tag(int, ...)`` as an integer.
A plain value is passed unchanged to every trial.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

CATEGORICAL_TYPES = (type(None), bool, int, float, str)


def parse_overrides(lines: list[str]) -> list[Override]:
    """Parse ``key=value`` strings with Hydra's own override grammar."""
    return OverridesParser.create().parse_overrides(lines)


def distribution_of(override: Override) -> BaseDistribution:
    """The Optuna distribution of one sweep override.

    Raises:
        ValueError: a sweep Optuna cannot sample (a non-scalar choice, an empty range).
    """
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep):
        choices = list(override.sweep_iterator())
        if all(isinstance(c, CATEGORICAL_TYPES) for c in choices):
            return CategoricalDistribution(choices)
        return CategoricalDistribution([RawText(override_text(c)) for c in choices])
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ValueError(f"hydra.sweeper.params.{key}: range {value} is empty")
        low, high, step = min(values), max(values), abs(value.step)
        if all(isinstance(v, int) for v in values) and float(step).is_integer():
            return IntDistribution(int(low), int(high), step=int(step))
        return FloatDistribution(float(low), float(high), step=float(step))
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if "int" in value.tags:
            return IntDistribution(math.ceil(value.start), math.floor(value.end), log=log)
        return FloatDistribution(float(value.start), float(value.end), log=log)
    raise ValueError(f"hydra.sweeper.params.{key}: {override.input_line!r} is not a sweep")


class RawText(str):
    """A categorical value that is already override text (a list or dict), passed unquoted."""


def override_text(value: Any) -> str:
    """A parsed override value (scalar, list or dict) written back in Hydra's grammar."""
    if isinstance(value, list):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_text(v)}" for k, v in value.items()) + "}"
    return format_value(value)


def dict_distribution(name: str, spec: Mapping[str, Any]) -> BaseDistribution:
    """A distribution from the older ``search_space`` dict form.

    ``{type: float|int, low, high, step?, log?}`` or ``{type: categorical, choices: [...]}``.
    """
    kind = spec.get("type")
    if kind == "categorical":
        return CategoricalDistribution(list(spec["choices"]))
    if kind in ("float", "int"):
        cls = FloatDistribution if kind == "float" else IntDistribution
        args = {k: spec[k] for k in ("step", "log") if spec.get(k) is not None}
        if kind == "int" and "step" not in args:
            args["step"] = 1
        return cls(spec["low"], spec["high"], **args)
    raise ValueError(
        f"hydra.sweeper.search_space.{name}.type: {kind!r}; expected float, int or categorical"
    )


def split_overrides(lines: list[str]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """Sweep overrides -> {key: distribution}; the others stay as fixed override strings."""
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in parse_overrides(lines):
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution_of(override)
        else:
            fixed.append(override.input_line)
    return space, fixed


def params_lines(params: Mapping[str, Any] | None) -> list[str]:
    """``hydra.sweeper.params`` as ``key=expression`` override strings."""
    return [f"{key}={value}" for key, value in (params or {}).items()]


def format_value(value: Any) -> str:
    """A sampled value as Hydra override text (strings quoted when the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if value and all(ch.isalnum() or ch in "_-./:" for ch in value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)
