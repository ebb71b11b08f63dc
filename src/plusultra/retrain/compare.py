"""The promotion decision: challenger vs champion on the validation window, never on test.

`decide` receives validation figures only (`validation_only` drops every other key before it
is called), so a test figure cannot influence a promotion; the test figures are reported
beside the decision by the report step.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from plusultra.errors import ConfigError


@dataclass(frozen=True)
class Decision:
    """Whether to promote, and why.

    Attributes:
        promote: True to point the champion pointer at the challenger.
        metric: the compared `val_*` metric; direction: maximize or minimize.
        challenger, champion: their values on the challenger's validation window (champion
            None: there is no champion yet).
        margin: the required improvement, in the metric's units.
        improvement: challenger minus champion, signed so that positive is better (None
            without a champion).
        reason: one sentence.
    """

    promote: bool
    metric: str
    direction: str
    challenger: float | None
    champion: float | None
    margin: float
    improvement: float | None
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def validation_only(metrics: dict) -> dict:
    """The `val_*` entries of a metrics dict (what a decision may read)."""
    return {k: v for k, v in metrics.items() if k.startswith("val_")}


def _value(metrics: dict, metric: str, who: str) -> float:
    if metric not in metrics:
        raise ConfigError(
            f"--metric {metric}: the {who} has no such validation backtest metric (the "
            "champion is re-scored by backtest: use one of its metrics, e.g. val_sharpe, "
            "val_annual_return, val_max_drawdown)"
        )
    value = metrics[metric]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise ConfigError(f"--metric {metric}: the {who}'s value {value!r} is not a number")
    return float(value)


def decide(
    metric: str,
    direction: str,
    margin: float,
    challenger_val: dict,
    champion_val: dict | None,
) -> Decision:
    """Promote when the challenger beats the champion on `metric` by more than `margin`.

    Args:
        metric: a `val_*` metric name.
        direction: maximize or minimize.
        margin: required improvement (>= 0), in the metric's units.
        challenger_val, champion_val: validation figures on the same window (`val_*` keys;
            anything else is refused); champion_val None: no champion, the challenger is
            promoted (if its value is a number).

    Raises:
        ConfigError: a non-validation key or metric, or the metric missing from a side.
    """
    if not metric.startswith("val_"):
        raise ConfigError(f"--metric {metric}: promotion is decided on a val_* metric")
    for figures in (challenger_val, champion_val or {}):
        other = [k for k in figures if not k.startswith("val_")]
        if other:
            raise ConfigError(f"promotion reads validation figures only; got {other[:3]}")
    new = _value(challenger_val, metric, "challenger")
    args = dict(metric=metric, direction=direction, challenger=new, margin=float(margin))
    if not math.isfinite(new):
        return Decision(False, champion=None, improvement=None, **args,
                        reason=f"the challenger's {metric} is not finite ({new})")  # fmt: skip
    if champion_val is None:
        return Decision(True, champion=None, improvement=None, **args,
                        reason="no champion yet: the first challenger is promoted")  # fmt: skip
    old = _value(champion_val, metric, "champion")
    sign = 1.0 if direction == "maximize" else -1.0
    if not math.isfinite(old):
        return Decision(True, champion=old, improvement=None, **args,
                        reason=f"the champion's {metric} is not finite here ({old})")  # fmt: skip
    gain = sign * (new - old)
    better = gain > margin
    verb = "beats" if better else "does not beat"
    reason = (
        f"the challenger's {metric} {new:.4g} {verb} the champion's {old:.4g} by more than "
        f"the margin {margin:g} ({'higher' if sign > 0 else 'lower'} is better; "
        f"improvement {gain:+.4g})"
    )
    return Decision(better, champion=old, improvement=gain, reason=reason, **args)
