"""The guardrails' settings (the ``guardrails`` config group), checked on creation.

Every rule is off when its key is null (``sector_caps``: empty), so ``GuardrailConfig()`` (and
``conf/guardrails/off.yaml``) changes nothing. The rules run in the fixed order of `RULES`
(see `plusultra.guardrails.core` for why).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from plusultra.errors import ConfigError

# The rules in the order they apply to one bar's proposed weights (each is a metric name suffix,
# `<segment>_guardrail_<rule>`, and the `rule` of its events).
RULES = (
    "drawdown_kill",
    "vol_target",
    "cvar_cap",
    "symbol_cap",
    "sector_cap",
    "factor_cap",
    "net_cap",
    "gross_cap",
    "turnover_cap",
)
ANY_SECTOR = "*"  # sector_caps key: the cap of every sector not named
MARKET = "market"  # factor_caps key: the equal-weight mean return of the book's symbols


def _positive(key: str, value, upper: float | None = None) -> float | None:
    """`value` as a finite float > 0 (and < `upper`), or None; else ConfigError naming the key."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"guardrails.{key}={value!r} must be a number > 0 or null")
    value = float(value)
    if not math.isfinite(value) or value <= 0 or (upper is not None and value >= upper):
        bound = f" and < {upper:g}" if upper is not None else ""
        raise ConfigError(f"guardrails.{key}={value!r} must be a finite number > 0{bound} or null")
    return value


def _mapping(key: str, value) -> dict:
    """`value` as a dict (None: empty); else ConfigError naming the key."""
    value = {} if value is None else value
    if not isinstance(value, Mapping):
        raise ConfigError(f"guardrails.{key}={value!r} must be a mapping factor -> value (or {{}})")
    return {str(k): v for k, v in value.items()}


def _factor_caps(caps) -> dict[str, float]:
    """factor -> cap > 0, names non-empty; else ConfigError naming ``factor_caps.<name>``."""
    out = {}
    for name, cap in _mapping("factor_caps", caps).items():
        if not name.strip():
            raise ConfigError(f"guardrails.factor_caps has an empty factor name {name!r}")
        value = _positive(f"factor_caps.{name}", cap)
        if value is None:
            raise ConfigError(f"guardrails.factor_caps.{name}=null must be a number > 0")
        out[name] = value
    return out


def _factor_lags(lags, caps: dict[str, float]) -> dict[str, int]:
    """factor -> lag in bars (an integer >= 0) of a capped factor; ``market`` only 0."""
    out = {}
    for name, lag in _mapping("factor_lags", lags).items():
        where = f"guardrails.factor_lags.{name}={lag!r}"
        if name not in caps:
            raise ConfigError(f"{where}: no factor cap of that name; capped: {sorted(caps)}")
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 0:
            raise ConfigError(f"{where} must be an integer >= 0 (bars)")
        if name == MARKET and lag:
            raise ConfigError(f"{where}: the market factor is built from the same bar's returns")
        out[name] = lag
    return out


@dataclass(frozen=True)
class GuardrailConfig:
    """Risk limits applied to a book's target weights at every decision bar.

    Weights are fractions of equity; every cap scales weights down, never up.

    Attributes:
        gross_cap: cap on ``sum_s |w_s|`` per bar (the book scaled down to it).
        net_cap: cap on ``|sum_s w_s|`` per bar (the book scaled down to it).
        symbol_cap: cap on ``|w_s|`` of every symbol (each clipped to it).
        sector_caps: sector -> cap on the sector's ``sum |w_s|`` (its symbols scaled down
            together); the key ``"*"`` caps every sector not named. Sectors are the assets
            table's ``sector`` column; a symbol without one is not sector-capped.
        factor_caps: factor -> cap on ``|sum_s w_s * beta_s|``, the book's exposure to the
            factor, with ``beta_s`` the OLS beta (intercept included) of symbol ``s``'s returns
            on the factor's returns over the last `factor_lookback` bars; above a cap the book
            is scaled down to it. ``"market"`` is the equal-weight mean return of the symbols
            with a return at each bar; any other name is a return series supplied with the
            data (`plusultra.guardrails.factors`).
        factor_lookback: bars of trailing returns for the betas of `factor_caps` (>= 2).
        factor_lags: factor -> bars by which its series trails the asset returns (its value at
            bar t is the factor's return of bar t - lag, e.g. 1 for a series joined one bar
            late); a factor not named has lag 0; ``"market"`` always has lag 0.
        turnover_cap: cap on ``sum_s |w_s,t - w_s,t-1|`` per step against the previous bar's
            guarded targets (the trade moved toward the target by that budget).
        vol_target: annualised ex-ante volatility of the book, as a cap: the book is scaled
            down when the std of its returns over the last `vol_lookback` bars of asset
            returns (today's weights held over them) exceeds it.
        vol_lookback: bars of trailing asset returns for `vol_target` (>= 2).
        cvar_cap: cap on the historical CVaR of the book: the mean loss, fraction of equity
            per bar, of its worst `cvar_alpha` share of returns over the last `cvar_lookback`
            bars (today's weights held over them).
        cvar_alpha: tail share of `cvar_cap`, in (0, 1).
        cvar_lookback: bars of trailing asset returns for `cvar_cap` (>= 2).
        drawdown_kill: once the guarded book's drawdown from its peak (marked to close,
            before costs) reaches this fraction, in (0, 1), the book is flat for good.

    Raises:
        ConfigError: on an invalid value; the message names ``guardrails.<key>``.
    """

    gross_cap: float | None = None
    net_cap: float | None = None
    symbol_cap: float | None = None
    sector_caps: dict[str, float] = field(default_factory=dict)
    factor_caps: dict[str, float] = field(default_factory=dict)
    factor_lookback: int = 63
    factor_lags: dict[str, int] = field(default_factory=dict)
    turnover_cap: float | None = None
    vol_target: float | None = None
    vol_lookback: int = 63
    cvar_cap: float | None = None
    cvar_alpha: float = 0.05
    cvar_lookback: int = 252
    drawdown_kill: float | None = None

    def __post_init__(self) -> None:
        def put(key: str, value) -> None:
            object.__setattr__(self, key, value)

        for key in ("gross_cap", "net_cap", "symbol_cap", "turnover_cap", "vol_target"):
            put(key, _positive(key, getattr(self, key)))
        put("cvar_cap", _positive("cvar_cap", self.cvar_cap))
        put("drawdown_kill", _positive("drawdown_kill", self.drawdown_kill, upper=1.0))
        alpha = _positive("cvar_alpha", self.cvar_alpha, upper=1.0)
        if alpha is None:
            raise ConfigError("guardrails.cvar_alpha=null must be a number in (0, 1)")
        put("cvar_alpha", alpha)
        for key in ("vol_lookback", "cvar_lookback", "factor_lookback"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"guardrails.{key}={value!r} must be an integer >= 2")
        caps = {} if self.sector_caps is None else self.sector_caps
        if not isinstance(caps, Mapping):
            raise ConfigError(
                f"guardrails.sector_caps={caps!r} must be a mapping sector -> cap (or {{}})"
            )
        put("sector_caps", {str(k): _positive(f"sector_caps.{k}", v) for k, v in caps.items()})
        if any(v is None for v in self.sector_caps.values()):
            bad = next(k for k, v in self.sector_caps.items() if v is None)
            raise ConfigError(f"guardrails.sector_caps.{bad}=null must be a number > 0")
        put("factor_caps", _factor_caps(self.factor_caps))
        put("factor_lags", _factor_lags(self.factor_lags, self.factor_caps))

    @classmethod
    def from_mapping(cls, mapping: Mapping | None) -> GuardrailConfig:
        """From a plain mapping, e.g. the ``guardrails`` node of a run's resolved
        ``config.yaml`` (its ``_target_`` is ignored); None: every rule off.

        Raises:
            ConfigError: an unknown key (named ``guardrails.<key>``, with the valid keys) or a
                bad value.
        """
        values = {k: v for k, v in dict(mapping or {}).items() if k != "_target_"}
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            valid = ", ".join(sorted(known))
            raise ConfigError(f"guardrails.{unknown[0]} is not a guardrails key; valid: {valid}")
        return cls(**values)

    @property
    def factor_series(self) -> tuple[str, ...]:
        """The capped factors other than ``"market"``, in config order: the columns of the
        factor returns a caller supplies (`Guardrails.step`'s ``factor_returns``)."""
        return tuple(name for name in self.factor_caps if name != MARKET)

    @property
    def active_rules(self) -> tuple[str, ...]:
        """The rules that are on, in the order they apply (a subset of `RULES`)."""
        on = {
            "drawdown_kill": self.drawdown_kill,
            "vol_target": self.vol_target,
            "cvar_cap": self.cvar_cap,
            "symbol_cap": self.symbol_cap,
            "sector_cap": self.sector_caps or None,
            "factor_cap": self.factor_caps or None,
            "net_cap": self.net_cap,
            "gross_cap": self.gross_cap,
            "turnover_cap": self.turnover_cap,
        }
        return tuple(r for r in RULES if on[r] is not None)
