"""Market arrays of the trading environment, aligned by decision bar and moved to torch once.

`EnvMarket.build` takes the (T, S) panels a data module has (features, prices, tradable mask,
volume, volatility) and turns them into what a step reads at decision bar ``t``: the execution
return of a position decided at ``t`` (``plusultra.execution.execution_returns``: filled at bar
``t + lag``, earning its fill price to the next one's), whether the symbol can be held over that
interval, and the square-root impact factor of the fill bar (the realistic simulator's impact,
``plusultra.sim.realistic``). Nothing here runs in the step loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from plusultra.data.datasets.windows import valid_window_mask
from plusultra.errors import DataError
from plusultra.execution import execution_returns, fill_lag, fill_prices, resolve_execution


@dataclass
class EnvMarket:
    """Per-decision-bar tensors on one device (T bars, S symbols, F features).

    Attributes:
        features: (S, T, F) float32 normalised features, NaN -> 0 (symbol-major for the window
            gather).
        observable: (T, S) bool, tradable at t with a complete feature window ending at t (known
            at t's close: the observation's mask).
        returns: (T, S) float32 simple return of a position decided at t, from its fill to the
            next fill; 0 where it cannot be held.
        holdable: (T, S) bool, observable at t, tradable at the fill bar and with a finite
            return over the holding (a target elsewhere is forced flat).
        impact: (T, S) float32 ``impact_coef * volatility_f / sqrt(price_f * volume_f)`` of the
            fill bar f (also charged on a forced close); the impact cost of trading ``dw`` of
            equity ``X`` (currency) is ``impact * dw^1.5 * sqrt(X)`` as a fraction of equity; 0
            where volume is unknown or 0.
        execution: the resolved execution mode; lag: its fill lag (bars).
        window: W, the window length ``observable`` was built for.
    """

    features: torch.Tensor
    observable: torch.Tensor
    returns: torch.Tensor
    holdable: torch.Tensor
    impact: torch.Tensor
    execution: str
    lag: int
    window: int

    @property
    def n_bars(self) -> int:
        return self.returns.shape[0]

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        close: np.ndarray,
        window: int,
        open_: np.ndarray | None = None,
        tradable: np.ndarray | None = None,
        volume: np.ndarray | None = None,
        volatility: np.ndarray | None = None,
        execution: str | None = None,
        impact_coef: float = 0.0,
        device: torch.device | str = "cpu",
    ) -> EnvMarket:
        """Align and move the panels (see the class docstring).

        Args:
            features: (T, S, F) normalised features; NaN where unknown.
            close: (T, S) adjusted closes; NaN where no bar.
            window: W, bars per observation window.
            open_: (T, S) adjusted opens, or None (close-only data).
            tradable: (T, S) bool (default: has a close).
            volume, volatility: (T, S) bar volume (shares) and per-bar volatility; needed when
                ``impact_coef > 0``.
            execution: fill timing (``plusultra.execution``); None: by data.
            impact_coef: square-root impact coefficient (0: none).
            device: where the tensors live.

        Raises:
            DataError: shapes that do not match, or impact asked without volume/volatility.
            ConfigError: an unknown execution mode.
        """
        feats = np.asarray(features, dtype=np.float32)
        close = np.asarray(close, dtype=float)
        if feats.ndim != 3 or close.shape != feats.shape[:2]:
            raise DataError(
                f"env: features must be (T, S, F) and close (T, S) over the same bars and "
                f"symbols, got {feats.shape} and {close.shape}"
            )
        for name, arr in (("open", open_), ("tradable", tradable), ("volume", volume)):
            if arr is not None and np.shape(arr) != close.shape:
                raise DataError(f"env: {name} has shape {np.shape(arr)}, close {close.shape}")
        mode = resolve_execution(execution, open_, close)
        lag = fill_lag(mode)
        tradable = np.isfinite(close) if tradable is None else np.asarray(tradable, bool)
        observable = tradable & valid_window_mask(feats, window)
        ret = execution_returns(mode, open_, close)  # (T, S), NaN where not holdable
        at_fill = np.zeros_like(tradable)
        at_fill[: len(tradable) - lag] = tradable[lag:]
        holdable = observable & at_fill & np.isfinite(ret)
        impact = np.zeros(close.shape)
        if impact_coef > 0:
            if volume is None or volatility is None:
                raise DataError("env: impact_coef > 0 needs the volume and volatility panels")
            price = fill_prices(mode, open_, close)
            vol, sig = np.asarray(volume, float), np.asarray(volatility, float)
            with np.errstate(divide="ignore", invalid="ignore"):
                k = impact_coef * sig / np.sqrt(price * vol)  # (T, S) at each bar as a fill bar
            k[~np.isfinite(k)] = 0.0  # unknown or zero volume: no impact (as the simulator)
            impact[: len(k) - lag] = k[lag:]

        def put(x: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(x)).to(device=device, dtype=dtype)

        return cls(
            features=put(np.nan_to_num(feats.transpose(1, 0, 2), nan=0.0), torch.float32),
            observable=put(observable, torch.bool),
            returns=put(np.where(holdable, ret, 0.0), torch.float32),
            holdable=put(holdable, torch.bool),
            impact=put(impact, torch.float32),
            execution=mode,
            lag=lag,
            window=int(window),
        )

    @classmethod
    def from_datamodule(
        cls,
        dm,
        execution: str | None,
        impact_coef: float,
        columns: list[int] | None = None,
        device: torch.device | str = "cpu",
    ) -> EnvMarket:
        """The market over a set-up `SQLiteDataModule`'s whole calendar: its normalised
        features, closes (and opens, volume where present), `tradable` mask and 20-bar
        volatility, for the symbols at ``columns`` (default all), with the fill timing
        ``execution`` and square-root impact ``impact_coef``."""
        cols = slice(None) if columns is None else list(columns)
        fields = dm.panel.fields

        def pick(a):
            return None if a is None else a[:, cols]

        return cls.build(
            dm.features[:, cols],
            fields["close"][:, cols],
            dm.window,
            open_=pick(fields.get("open")),
            tradable=dm.tradable[:, cols],
            volume=pick(fields.get("volume")),
            volatility=pick(dm.context()["volatility"]),
            execution=execution,
            impact_coef=impact_coef,
            device=device,
        )
