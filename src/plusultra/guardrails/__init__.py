"""Risk guardrails: exposure, sector, turnover, volatility, tail-risk and drawdown limits on a
book's target weights, applied identically by backtests (`Guardrails.apply_path`) and the
service (`Guardrails.step`). A low layer: numpy, pandas and `plusultra.errors` only."""

from plusultra.guardrails.config import ANY_SECTOR, RULES, GuardrailConfig
from plusultra.guardrails.core import (
    GuardrailEvent,
    Guardrails,
    GuardrailState,
    events_frame,
    stamp,
)

__all__ = [
    "ANY_SECTOR",
    "RULES",
    "GuardrailConfig",
    "GuardrailEvent",
    "GuardrailState",
    "Guardrails",
    "events_frame",
    "stamp",
]
