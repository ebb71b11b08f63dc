"""Risk guardrails: exposure, sector, factor, turnover, volatility, tail-risk and drawdown
limits on a book's target weights, applied identically by backtests
(`Guardrails.apply_path`) and the service (`Guardrails.step`). A low layer: numpy, pandas and
`plusultra.errors` only."""

from plusultra.guardrails.config import ANY_SECTOR, MARKET, RULES, GuardrailConfig
from plusultra.guardrails.core import Guardrails
from plusultra.guardrails.state import GuardrailEvent, GuardrailState, events_frame, stamp

__all__ = [
    "ANY_SECTOR",
    "MARKET",
    "RULES",
    "GuardrailConfig",
    "GuardrailEvent",
    "GuardrailState",
    "Guardrails",
    "events_frame",
    "stamp",
]
