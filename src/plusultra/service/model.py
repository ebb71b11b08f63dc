"""The served model: a finished run's forecaster or PPO policy, its inputs and its guarded book.

`LoadedModel(run_dir)` rebuilds the run's model the way `plusultra-predict` does
(`plusultra.training.run_model`: config, checkpoint loaded with ``weights_only=True``, the run's
device and precision) and its inputs with `SQLiteDataModule.for_inference` (the run's features,
normalisation and universe). A request is one decision at its last bar: the forecasts of the
requested symbols' windows ending there, the cross-sectional positions the run's backtest
would take (`Backtest.with_positions`, the run's execution mode), then the guardrails'
adjustment of that book (`Guardrails.step`, one book state for the whole service).

Timing contract: positions are decided at the close of the last bar (`decision_timestamp`)
and are to be filled at the next bar (its open, or its close for close-only data), as in the
run's backtest. Data after the last bar is never used.

Symbols read from the run's own database use a cached data module, rebuilt when the database
file changes (size or modification time), so a request costs one forward pass. Bars sent in
the body are written to a temporary contract database and featurised per request.

A run whose last curriculum stage is PPO is served by its policy (`plusultra.service.policy`):
its positions at the last bar come from `plusultra-predict`'s sequential greedy rollout over
the request's data (the run's database: rolled out once per database version and cached under
the data module's key; bars in the body: per request), ``prediction`` is the policy's position.
"""

from __future__ import annotations

import copy
import json
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from plusultra.errors import ConfigError, DataError
from plusultra.service.bars import known_assets
from plusultra.service.hooks import (
    DriftFactory,
    GuardrailsFactory,
    default_drift,
    default_guardrails,
)
from plusultra.service.policy import ServedPolicy
from plusultra.service.schemas import MAX_BARS, MAX_SYMBOLS, PredictRequest

log = logging.getLogger(__name__)

TIMING = (
    "positions are decisions at the close of decision_timestamp (the last bar), to be filled "
    "at the next bar ({fill}); they use no data after decision_timestamp"
)
FILLS = {
    "next_open": "its open",
    "next_close": "its close",
    "same_close": "this close (optimistic)",
}


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds on one request (a request past one gets a 413 naming it).

    Attributes:
        max_symbols: symbols per request.
        max_bars: bars per symbol in a request's body.
        max_body_bytes: size of a request body (bytes).
        drift_window: most recent decision rows the drift monitor compares to the train data.
    """

    max_symbols: int = 500
    max_bars: int = 5000
    max_body_bytes: int = 8_000_000
    drift_window: int = 500

    def __post_init__(self) -> None:
        for key in ("max_symbols", "max_bars", "max_body_bytes", "drift_window"):
            if getattr(self, key) < 1:
                raise ConfigError(f"service limit {key}={getattr(self, key)} must be >= 1")
        for key, ceiling in (("max_symbols", MAX_SYMBOLS), ("max_bars", MAX_BARS)):
            if getattr(self, key) > ceiling:
                raise ConfigError(f"service limit {key}={getattr(self, key)} > {ceiling}")


class RequestError(Exception):
    """A request the service refuses: HTTP `status`, a message naming what and where, and a
    short `reason` (the label of ``plusultra_predict_rejected_total``)."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason


class LoadedModel:
    """A finished run's forecaster (or a PPO run's policy), ready to serve.

    Args:
        run_dir: the run directory (has metrics.json).
        device, precision: override the run's trainer.accelerator / trainer.precision.
        limits: request bounds (None: the defaults).
        guardrails_factory: builds the run's guardrails (None: positions pass unchanged).
        drift_factory: builds the feature drift monitor (None: no drift metrics).
        compile: `torch.compile` a forecaster's forward pass for one window (batch 1, static
            shapes) at warm-up; requests of one symbol use it, larger ones the eager model,
            so no request ever waits for a compilation (a policy run is served eagerly).

    Raises:
        DataError / ConfigError: not a finished run, a checkpoint (or a PPO run's policy
            file) that does not fit or is missing.
    """

    def __init__(
        self,
        run_dir: str | Path,
        device: str | None = None,
        precision: str | None = None,
        limits: ServiceLimits | None = None,
        guardrails_factory: GuardrailsFactory = default_guardrails,
        drift_factory: DriftFactory = default_drift,
        compile: bool = False,
    ) -> None:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        from plusultra.data.features.regimes import N_CLASSES
        from plusultra.training import run_model

        self.run_dir = Path(run_dir).resolve()
        self.limits = limits or ServiceLimits()
        run_model.check_finished(self.run_dir)
        self.cfg = OmegaConf.load(self.run_dir / "config.yaml")
        if OmegaConf.select(self.cfg, "cross_asset.enabled", default=False):
            raise ConfigError(
                f"{self.run_dir}: a cross-asset run (cross_asset.enabled=true) forecasts whole "
                "cross-sections, the service per-symbol windows; use plusultra-predict"
            )
        stage = run_model.policy_stage(self.cfg)  # a PPO run's last stage, or None
        self.meta = json.loads((self.run_dir / "data.json").read_text())
        self.metrics = json.loads((self.run_dir / "metrics.json").read_text())
        self.execution = self.metrics.get("execution")
        loader = self.meta["loader"]
        self.universe: list[str] = list(loader.get("symbols") or self.meta.get("sectors") or [])
        self._universe_at = {s: i for i, s in enumerate(self.universe)}
        self.sectors: dict[str, str | None] = dict(self.meta.get("sectors") or {})
        self.columns: list[str] = list(self.meta["features"]["columns"])
        self.window = int(self.meta["window"])
        self.universe_wide = _universe_wide(self.columns)
        self.target = run_model.inference_target(
            self.cfg, device, precision, policy=stage is not None
        )
        classes = [N_CLASSES[n] + 1 for n in loader.get("conditioning") or []]
        module = run_model.build_module(self.cfg, len(self.columns), classes)
        self.policy: ServedPolicy | None = None
        if stage is not None:
            self.policy = ServedPolicy(self.run_dir, module, stage, self.target)
            self.model, self.kind = self.policy.policy, "policy"
        else:
            self.model = run_model.load_forecaster(self.run_dir, module, self.target.dtype)
            self.model.to(self.target.device)
            self.kind = self.model.kind
        self.backtest = instantiate(self.cfg.evaluation, _convert_="all")
        self.db = OmegaConf.select(self.cfg, "data.path")
        self.assets = known_assets(self.db, self.universe)  # rows for bars sent in a request
        self.periods_per_year = float(
            OmegaConf.select(self.cfg, "evaluation.periods_per_year", default=252)
        )
        self.guardrails = guardrails_factory(
            self.cfg, self.universe, self.sectors, self.periods_per_year
        )
        drift = drift_factory(self.run_dir, self.limits.drift_window)
        self.drift, self._drift_cols = None, []
        if drift is not None:
            self.drift, names = drift
            lacking = [n for n in names if n not in self.columns]
            if lacking:
                raise DataError(
                    f"{self.run_dir}/drift_reference.parquet: features {lacking} are not model "
                    f"inputs of the run ({self.columns})"
                )
            self._drift_cols = [self.columns.index(n) for n in names]
        self._book = (None, None, None if self.guardrails is None else self.guardrails.new_state())
        self._drift_view: tuple[list[str], pd.DataFrame | None] = ([], None)
        self._compiled = None  # the one-window forward pass, when compiled
        self._compile = compile and self.policy is None
        self._lock = threading.Lock()
        self._cache: tuple[tuple, object] | None = None
        self.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
        self.warm_up()

    # ------------------------------------------------------------------ model
    def warm_up(self) -> None:
        """One forward pass on a zero window (allocations, lazy init) before the first request,
        and the run's own database featurised when it is readable here (a failure is logged
        and answered per request: bars sent in the body are still served); a policy run rolls
        its policy out over that database instead (the rollout requests by symbol reuse)."""
        if self.db and Path(self.db).is_file():
            try:
                key, dm = self._own_data()
                if self.policy is not None:  # the rollout of the run's database, cached
                    with self._lock:
                        self.policy.last_bar(dm, key)
            except (DataError, ConfigError) as exc:
                log.warning("%s: requests by symbol will fail: %s", self.db, exc)
        if self.policy is not None:
            return
        x = torch.zeros(1, self.window, len(self.columns))
        inputs = [x]
        if self.model.embedding is not None:
            n = len(self.meta["loader"]["conditioning"])
            inputs.append(torch.zeros(1, self.window, n, dtype=torch.int64))
        if self._compile:
            compiled = torch.compile(self.model, dynamic=False)
            try:
                with torch.inference_mode(), self.target.context():
                    compiled(*(self.target.put(i) for i in inputs))  # compiles here
            except Exception as exc:  # noqa: BLE001 - any compiler failure, named for the user
                raise ConfigError(
                    f"--compile: torch.compile of {self.run_dir}'s model failed "
                    f"({type(exc).__name__}: {str(exc)[:300]}); serve without --compile"
                ) from None
            self._compiled = compiled
        self._forward(inputs)

    def _forward(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """The head's output for (x, [labels]) and the seconds the pass took."""
        one = self._compiled is not None and len(inputs[0]) == 1
        model = self._compiled if one else self.model
        start = time.perf_counter()
        with torch.inference_mode(), self.target.context():
            out = model(*(self.target.put(i) for i in inputs)).float().cpu()
        return out, time.perf_counter() - start

    def describe(self) -> dict:
        """Config, data range and metrics of the served run (GET /model)."""
        from omegaconf import OmegaConf

        metrics = {k: v for k, v in self.metrics.items() if isinstance(v, (int, float, str))}
        return {
            "run_dir": str(self.run_dir),
            "run_id": _read(self.run_dir / "run_id.txt"),
            "loaded_at": self.loaded_at,
            "head": self.kind,
            "window": self.window,
            "horizon": int(self.meta["horizon"]),
            "features": self.columns,
            "universe": self.universe,
            "execution": self.execution,
            "database": self.db,
            "data_range": self._data_range(),
            "guardrails": self.guardrails is not None
            and bool(getattr(self.guardrails, "active", True)),
            "drift": self.drift is not None,
            "compiled": self._compiled is not None,
            "metrics": metrics,
            "config": OmegaConf.to_container(self.cfg, resolve=False),
        }

    def _data_range(self) -> dict:
        """The run's data: first and last date read, segment dates, sizes (data.json)."""
        stats = self.meta.get("statistics") or {}
        keep = ("data_first_date", "data_last_date", "n_symbols", "n_dates", "n_bars")
        return {
            **{k: stats[k] for k in keep if k in stats},
            "segments": self.meta.get("segment_dates"),
            "loader_start": self.meta["loader"].get("start"),
        }

    # ---------------------------------------------------------------- predict
    def check_request(self, request: PredictRequest) -> list[str]:
        """The requested symbols, after the configured limits and the universe are checked."""
        symbols = list(request.bars) if request.bars is not None else list(request.symbols)
        if len(symbols) > self.limits.max_symbols:
            raise RequestError(
                413,
                f"{len(symbols)} symbols > the limit of {self.limits.max_symbols} per request",
                "too_many_symbols",
            )
        for symbol, bars in (request.bars or {}).items():
            if len(bars.timestamp) > self.limits.max_bars:
                raise RequestError(
                    413,
                    f"bars.{symbol}: {len(bars.timestamp)} bars > the limit of "
                    f"{self.limits.max_bars} per symbol",
                    "too_many_bars",
                )
        unknown = [s for s in symbols if s not in self.universe]
        if unknown:
            raise RequestError(
                422,
                f"unknown symbol(s) {unknown[:20]}: the model's universe is {self.universe[:50]}",
                "unknown_symbol",
            )
        sent = set(symbols) if request.bars is not None and self.universe_wide else None
        lacking = [] if sent is None else [s for s in self.universe if s not in sent]
        if lacking:
            raise RequestError(
                422,
                f"bars: the run's features {self.universe_wide[:10]} are computed across the "
                f"whole universe (market or cross-sectional); bars for {lacking[:20]} are "
                "missing: send every symbol's bars, or request by `symbols`",
                "partial_universe",
            )
        return symbols

    def predict(self, request: PredictRequest) -> dict:
        """One decision for the requested symbols at their last bar (see the module doc)."""
        symbols = self.check_request(request)
        if request.symbols is not None:
            return self._decide(*self._own_data(), symbols)
        from plusultra.data.datasets.datamodule import SQLiteDataModule
        from plusultra.service.bars import bars_database

        try:
            with bars_database(request.bars, self.sectors, self.assets) as path:
                dm = SQLiteDataModule.for_inference(
                    str(path), self.run_dir, symbols=symbols, start=None, end=None
                )
        except (DataError, ConfigError, ValueError, sqlite3.Error) as exc:
            raise RequestError(422, f"bars: {exc}", "bad_bars") from None
        return self._decide(None, dm, symbols)

    def _own_data(self) -> tuple[tuple, object]:
        """The run's own database as a data module, rebuilt when the file changes, and its
        cache key (the file's modification time and size)."""
        from plusultra.data.datasets.datamodule import SQLiteDataModule

        try:
            stat = Path(self.db).stat()
        except (OSError, TypeError):
            raise RequestError(
                409,
                f"the run's database data.path={self.db} is not readable here; send bars",
                "no_database",
            ) from None
        key = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if self._cache is None or self._cache[0] != key:
                self._cache = (key, SQLiteDataModule.for_inference(self.db, self.run_dir))
            return self._cache

    def _decide(self, key: tuple | None, dm, symbols: list[str]) -> dict:
        """The response for `symbols` at `dm`'s last bar (`key`: `dm`'s cache key, or None)."""
        last = len(dm.panel.dates) - 1
        when = pd.Timestamp(dm.panel.dates[last])
        where = {s: i for i, s in enumerate(dm.panel.symbols)}
        cols = np.array([where.get(s, -1) for s in symbols], dtype=np.int64)
        short = [s for s, c in zip(symbols, cols, strict=True) if c < 0 or not dm.input_ok[last, c]]
        if short:
            raise RequestError(
                422,
                f"too few bars: {short[:20]} have no complete window of {self.window} bars with "
                f"every feature defined ending at the last bar {when.isoformat()} (the features "
                "need warm-up history before the window; send more bars)",
                "too_few_bars",
            )
        if self.policy is None:
            preds, proposed, extras, seconds = self._forecast(dm, cols)
        else:
            preds, proposed, extras, seconds = self._policy_rows(key, dm, symbols)
        tradable = np.asarray(dm.tradable[last, cols], dtype=bool)
        guarded, events, drift = self._guard(
            when, symbols, proposed, tradable, dm.features[last, cols], self._market(dm)
        )
        warnings, table, fresh = drift
        return {
            "seconds": seconds,
            "step1": preds[:, 0],
            "events": events,
            "drift_warnings": warnings,
            "drift_table": table,
            "drift_updated": fresh,
            "response": {
                "run_dir": str(self.run_dir),
                "decision_timestamp": when.isoformat(),
                "timing": TIMING.format(fill=FILLS.get(self.execution, "the next bar")),
                "predictions": [
                    {
                        "symbol": s,
                        "prediction": preds[i].tolist(),
                        **{k: v[i] for k, v in extras.items()},
                        "proposed_position": float(proposed[i]),
                        "position": float(guarded[i]),
                    }
                    for i, s in enumerate(symbols)
                ],
                "adjustments": [_event(e) for e in events],
                "drift_warnings": warnings,
            },
        }

    def _forecast(self, dm, cols) -> tuple[np.ndarray, np.ndarray, dict, float]:
        """The forecaster at the last bar for the symbols at `cols`: (K, H) forecasts in return
        units, (K,) positions (`Backtest.positions_at`: those `with_positions` gives the
        last bar's rows alone; its decision mask is its tradable row: a symbol tradable on the
        last bar has no known delisting), per-row extras and the forward pass's seconds."""
        from plusultra.data.datasets.windows import WindowDataset

        last = len(dm.panel.dates) - 1
        lo = last - self.window + 1  # the windows only: W bars of the requested symbols
        labels = None if dm.labels is None else dm.labels[lo:, cols]
        k = len(cols)
        index = np.stack([np.full(k, self.window - 1), np.arange(k)], axis=1).astype(np.int64)
        data = WindowDataset(dm.features[lo:, cols], index, self.window, labels=labels)
        inputs = data.__getitems__(list(range(len(cols))))
        inputs = list(inputs) if isinstance(inputs, tuple) else [inputs]
        with self._lock:
            out, seconds = self._forward(inputs)
        preds, extras = self._outputs(out, dm.norm.target_scale)
        positions = self.backtest.positions_at(
            preds, cols, dm.tradable[last], execution=self.execution
        )
        return preds, positions, extras, seconds

    def _policy_rows(self, key, dm, symbols) -> tuple[np.ndarray, np.ndarray, dict, float]:
        """The policy's forecasts at the last bar ((K, 1): its position), the positions traded
        from them, no extras, and the seconds of the rollout (a cached one: of the lookup).

        The policy's book is every symbol of its rollout (the database's universe, or the sent
        symbols), as in `plusultra-predict`: the positions are computed across all of them,
        then the requested symbols' rows are kept."""
        last = len(dm.panel.dates) - 1
        with self._lock:
            rows, seconds = self.policy.last_bar(dm, key)
        frame = self.backtest.with_positions(
            rows, dm.panel.dates[last:], dm.panel.symbols, dm.tradable[last:],
            execution=self.execution,
        )  # fmt: skip
        missing = sorted(set(symbols) - set(frame["symbol"]))
        if missing:
            raise RequestError(
                422,
                f"{missing[:20]}: not observable by the policy's rollout at the last bar "
                f"{pd.Timestamp(dm.panel.dates[last]).isoformat()}",
                "too_few_bars",
            )
        frame = frame.set_index("symbol").loc[symbols]
        preds = frame[_pred_columns(frame)].to_numpy(dtype=np.float64)
        return preds, frame["position"].to_numpy(dtype=np.float64), {}, seconds

    def _outputs(self, out: torch.Tensor, target_scale) -> tuple[np.ndarray, dict]:
        """(K, H') forecasts ``pred_1 ..`` in return units and, per row, quantiles /
        probabilities."""
        head = self.model.head
        signal = head.signal(out).numpy()  # (K, H') in target units
        horizon = signal.shape[1]
        scale = np.ones(horizon) if self.kind == "position" else np.asarray(target_scale[:horizon])
        preds = signal.astype(np.float64) * scale[None, :]
        rows = range(len(preds))
        extras: dict[str, list] = {}
        if self.kind in ("quantiles", "calibrated"):
            q = out[..., 3:] if self.kind == "calibrated" else out  # (K, H, Q)
            q = q.numpy() * scale[None, :, None]
            extras["quantiles"] = [
                {str(level): q[i, :, j].tolist() for j, level in enumerate(head.quantiles)}
                for i in rows
            ]
        if self.kind == "calibrated":
            p = head.probabilities(out).numpy()  # (K, H, 3)
            extras["probabilities"] = [
                {name: p[i, :, j].tolist() for j, name in enumerate(("down", "flat", "up"))}
                for i in rows
            ]
        return preds, extras

    def _market(self, dm) -> tuple[np.ndarray, np.ndarray | None] | None:
        """What the guardrails read from `dm`, or None without guardrails: (K + 1, U)
        close-to-close returns of the run's universe over `dm`'s last K + 1 bars (closes
        carried over a missing bar, as in backtests; NaN for a symbol `dm` lacks: a `bars`
        request holds only the sent symbols, so the ``market`` factor is their mean there)
        and (K + 1, F) the values of the capped supplied factors
        (`GuardrailConfig.factor_series`, the data module's market-wide alternative-data
        columns; NaN where absent, e.g. in a `bars` request: a beta that cannot be estimated
        does not act), or None when none is capped. K is the guardrails' history before the
        book's first decision (the lookbacks are warmed up with it) and 0 after."""
        if self.guardrails is None:
            return None
        last = len(dm.panel.dates) - 1
        k = min(self.guardrails.history if self._book[0] is None else 0, max(last - 1, 0))
        close = pd.DataFrame(dm.panel.fields["close"][max(last - k - 1, 0) : last + 1]).ffill()
        close = close.to_numpy()
        returns = np.full((k + 1, len(self.universe)), np.nan)
        if last > 0:
            at = np.array([self._universe_at.get(s, -1) for s in dm.panel.symbols])
            returns[:, at[at >= 0]] = (close[1:] / close[:-1] - 1.0)[:, at >= 0]
        names = self.guardrails.factor_series
        if not names:
            return returns, None
        series = getattr(dm, "market_series", None) or {}
        factors = np.full((k + 1, len(names)), np.nan)
        for j, name in enumerate(names):
            if name in series:
                factors[:, j] = series[name][last - k : last + 1]
        return returns, factors

    def _guard(self, when, symbols, proposed, tradable, rows, market) -> tuple:
        """Guarded weights of the requested symbols, the guardrail events and the drift
        monitor's (warnings, table, whether this request updated them).

        The book is the run's universe: a symbol not requested has a proposed weight of 0. A
        decision at a later bar than the book's last advances the book; one at the same bar
        replaces that decision (recomputed from the state before it); an earlier one is a 409.
        `market`: `_market`'s universe returns and factor values (the last row: this bar;
        the rows before it warm up the first decision's lookbacks).
        """
        with self._lock:
            last_when, before, after = self._book
            if last_when is not None and when < last_when:
                raise RequestError(
                    409,
                    f"decision at {when.isoformat()} is older than the book's last decision "
                    f"{last_when.isoformat()}",
                    "stale_decision",
                )
            advancing = last_when is None or when > last_when
            fresh = advancing and self.drift is not None
            if fresh:  # the monitor changes only when the book advances: computed then, kept
                self.drift.update(np.asarray(rows, dtype=np.float64)[:, self._drift_cols])
                self._drift_view = (list(self.drift.warnings()), self.drift.table())
            drift = (*self._drift_view, fresh)
            if self.guardrails is None:
                self._book = (when, None, None)
                return proposed, [], drift
            returns, factors = market
            state = copy.deepcopy(after if advancing else before)
            if last_when is None and len(returns) > 1:  # fill the lookbacks before t
                past = None if factors is None else factors[:-1]
                self.guardrails.warm_up(state, returns[:-1], factor_returns=past)
            start = copy.deepcopy(state)
            cols = np.array([self._universe_at[s] for s in symbols], dtype=np.int64)
            book = np.zeros(len(self.universe))
            book[cols] = proposed
            ok = np.zeros(len(self.universe), dtype=bool)
            ok[cols] = tradable
            guarded, events = self.guardrails.step(
                state, book, returns[-1], ok, timestamp=when.isoformat(),
                factor_returns=None if factors is None else factors[-1],
            )  # fmt: skip
            self._book = (when, start, state)
        return np.asarray(guarded)[cols], list(events), drift


def _universe_wide(columns: list[str]) -> list[str]:
    """The model inputs whose value for a symbol depends on the other symbols: registered
    features tagged ``market`` or ``cross_section``, and the sector regimes (a sector's
    strength and rank are computed across its symbols)."""
    from plusultra.data.features.pipeline import REGISTRY

    wide = {"market", "cross_section"}
    return [
        c
        for c in columns
        if (c in REGISTRY and wide & set(REGISTRY[c].tags)) or c.startswith("regime_sector_")
    ]


def _pred_columns(frame: pd.DataFrame) -> list[str]:
    return sorted((c for c in frame.columns if c.startswith("pred_")), key=lambda c: int(c[5:]))


def _event(event) -> dict:
    d = event.as_dict()
    return {k: d.get(k) for k in ("symbol", "rule", "before", "after", "detail")}


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None
