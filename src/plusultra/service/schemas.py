"""The service's request and response models: the HTTP contract, checked by pydantic.

Every float in a request must be finite (``allow_inf_nan=False``: NaN or infinity is a 422
naming where it is). Sizes are bounded twice: here by hard ceilings that keep a request's
parsing cheap, and in `plusultra.service.model.LoadedModel.check_request` by the configured
`ServiceLimits` (max symbols, max bars per symbol), which name the limit they hit.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Hard ceilings of the schema itself (the configured limits are at most these).
MAX_SYMBOLS = 5000
MAX_BARS = 100_000
SYMBOL = Annotated[str, Field(min_length=1, max_length=64)]
FINITE = Annotated[float, Field(allow_inf_nan=False)]
OPTIONAL_FINITE = Annotated[float | None, Field(allow_inf_nan=False)]


class CorporateAction(BaseModel):
    """A split or dividend, as in the contract's `corporate_actions` table."""

    model_config = ConfigDict(extra="forbid")

    ex_date: str = Field(min_length=4, max_length=40, description="ISO-8601 ex-date")
    action: str = Field(min_length=1, max_length=32, description="split or dividend")
    value: FINITE = Field(description="split ratio, or dividend per share")


class Bars(BaseModel):
    """One symbol's recent bars, column by column (oldest first; every column as long as
    `timestamp`): raw prices and volumes as the contract's `series` table holds them, with the
    symbol's corporate actions (the loader adjusts for them as it did for the run)."""

    model_config = ConfigDict(extra="forbid")

    timestamp: list[Annotated[str, Field(min_length=4, max_length=40)]] = Field(
        min_length=1, max_length=MAX_BARS, description="ISO-8601 bar times, increasing"
    )
    open: list[OPTIONAL_FINITE] | None = Field(
        default=None, max_length=MAX_BARS, description="open prices (null: close-only data)"
    )
    high: list[OPTIONAL_FINITE] | None = Field(default=None, max_length=MAX_BARS)
    low: list[OPTIONAL_FINITE] | None = Field(default=None, max_length=MAX_BARS)
    close: list[FINITE] = Field(min_length=1, max_length=MAX_BARS, description="close prices")
    volume: list[OPTIONAL_FINITE] | None = Field(default=None, max_length=MAX_BARS)
    indicators: dict[SYMBOL, list[OPTIONAL_FINITE]] = Field(
        default_factory=dict,
        max_length=64,
        description="indicator columns the run's features read (the `indicators` table), "
        "one value per bar",
    )
    corporate_actions: list[CorporateAction] = Field(default_factory=list, max_length=10_000)

    @model_validator(mode="after")
    def _same_lengths(self) -> Bars:
        n = len(self.timestamp)
        columns = {"open": self.open, "high": self.high, "low": self.low, "close": self.close}
        columns |= {"volume": self.volume}
        columns |= {f"indicators.{k}": v for k, v in self.indicators.items()}
        wrong = {k: len(v) for k, v in columns.items() if v is not None and len(v) != n}
        if wrong:
            raise ValueError(f"every column needs {n} values (one per timestamp); got {wrong}")
        return self


class PredictRequest(BaseModel):
    """Either `bars` (recent bars per symbol, in the body) or `symbols` (read from the run's
    configured SQLite database), not both. The symbols are the book of this decision: a
    symbol of the run's universe that is not in the request has a proposed position of 0."""

    model_config = ConfigDict(extra="forbid")

    bars: dict[SYMBOL, Bars] | None = Field(
        default=None, max_length=MAX_SYMBOLS, description="symbol -> its recent bars"
    )
    symbols: list[SYMBOL] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SYMBOLS,
        description="symbols to predict from the run's own database, at its last bar",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PredictRequest:
        if (self.bars is None) == (self.symbols is None):
            raise ValueError("give exactly one of `bars` (data in the body) or `symbols`")
        if self.bars is not None and not self.bars:
            raise ValueError("`bars` is empty: give at least one symbol")
        if self.symbols is not None and len(set(self.symbols)) != len(self.symbols):
            raise ValueError("`symbols` lists a symbol twice")
        return self


class Prediction(BaseModel):
    symbol: str
    prediction: list[float] = Field(
        description="forecast forward log return of each step 1..H (a position head: its "
        "position; a PPO run: one value, the policy's position from its rollout, as "
        "plusultra-predict's pred_1)"
    )
    quantiles: dict[str, list[float]] | None = Field(
        default=None, description="level -> forecast of each step (quantile and calibrated heads)"
    )
    probabilities: dict[str, list[float]] | None = Field(
        default=None, description="down / flat / up -> probability per step (calibrated head)"
    )
    proposed_position: float = Field(
        description="the model's weight, fraction of equity (a PPO run: the policy's position "
        "capped as the run's backtest traded it)"
    )
    position: float = Field(description="the weight after the guardrails")


class Adjustment(BaseModel):
    symbol: str | None = Field(description="null: a rule on the whole book")
    rule: str
    before: float
    after: float
    detail: str


class PredictResponse(BaseModel):
    run_dir: str
    decision_timestamp: str = Field(description="the last bar: positions are decided at its close")
    timing: str = Field(description="when the positions are to be filled")
    predictions: list[Prediction]
    adjustments: list[Adjustment] = Field(description="every guardrail intervention")
    drift_warnings: list[str] = Field(default_factory=list)


class Health(BaseModel):
    status: str
    run_dir: str
    loaded_at: str


class ReloadResponse(BaseModel):
    run_dir: str
    reloaded: bool
    loaded_at: str
