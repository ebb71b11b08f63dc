"""What the guardrails record: one intervention (`GuardrailEvent`), the memory of one book
between bars (`GuardrailState`), and the events as a table."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class GuardrailEvent:
    """One intervention of one rule at one bar.

    Attributes:
        timestamp: the decision bar (ISO-8601 date or date-time); None when not given.
        symbol: the symbol it changed, or None for a book-level or sector rule.
        rule: a name of `RULES`.
        before, after: the limited quantity before and after the rule (a weight for
            ``symbol_cap``; a factor's beta exposure for ``factor_cap``; gross, net, turnover,
            a sector's gross, annualised volatility or CVaR (loss per bar) for the others;
            the proposed gross for ``drawdown_kill``).
        detail: one plain sentence.
    """

    timestamp: str | None
    symbol: str | None
    rule: str
    before: float
    after: float
    detail: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class GuardrailState:
    """What the rules remember between bars (one book).

    Attributes:
        weights: (S,) guarded targets of the last step (the book held over the next bar).
        returns: (K, S) trailing asset returns, newest last, K <= the longest lookback in use.
        factors: (K, F) trailing returns of the supplied factors
            (`GuardrailConfig.factor_series`), rows aligned with `returns`; F = 0 without any.
        equity: the guarded book's value marked to close, before costs (starts at 1.0).
        peak: its running maximum.
        killed: whether the drawdown kill switch has fired; killed_at: the bar it fired.
        steps: bars stepped.
    """

    weights: np.ndarray
    returns: np.ndarray
    factors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    equity: float = 1.0
    peak: float = 1.0
    killed: bool = False
    killed_at: str | None = None
    steps: int = field(default=0)


def stamp(value) -> str | None:
    """A bar's timestamp as ISO-8601 text: the date alone for a midnight timestamp."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.date().isoformat() if ts == ts.normalize() else ts.isoformat()


def events_frame(events: list[GuardrailEvent]) -> pd.DataFrame:
    """The events as a table: timestamp, symbol, rule, before, after, detail."""
    columns = ["timestamp", "symbol", "rule", "before", "after", "detail"]
    return pd.DataFrame([e.as_dict() for e in events], columns=columns).astype(
        {"before": float, "after": float}
    )
