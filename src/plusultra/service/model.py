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
        self.sectors: dict[str, str | None] = dict(self.meta.get("sectors") or {})
        self.columns: list[str] = list(self.meta["features"]["columns"])
        self.window = int(self.meta["window"])
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
        self._forward(inputs)

    def _forward(self, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, float]:
        """The head's output for (x, [labels]) and the seconds the pass took."""
        start = time.perf_counter()
        with torch.inference_mode(), self.target.context():
            out = self.model(*(self.target.put(i) for i in inputs)).float().cpu()
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
        dates = pd.DatetimeIndex(dm.panel.dates)
        last = len(dates) - 1
        when = dates[last]
        cols = pd.Index(dm.panel.symbols).get_indexer(symbols)
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
            frame, extras, seconds = self._forecast(dm, symbols, cols, when)
        else:
            frame, extras, seconds = self._policy_rows(key, dm, symbols)
        proposed = frame["position"].to_numpy(dtype=np.float64)
        close = dm.panel.fields["close"]
        returns = (
            close[last, cols] / close[last - 1, cols] - 1.0
            if last > 0
            else np.full(len(cols), np.nan)
        )
        tradable = np.asarray(dm.tradable[last, cols], dtype=bool)
        guarded, events, warnings, table = self._guard(
            when, symbols, proposed, returns, tradable, dm.features[last, cols]
        )
        return {
            "seconds": seconds,
            "step1": frame["pred_1"].to_numpy(),
            "events": events,
            "drift_warnings": warnings,
            "drift_table": table,
            "response": {
                "run_dir": str(self.run_dir),
                "decision_timestamp": when.isoformat(),
                "timing": TIMING.format(fill=FILLS.get(self.execution, "the next bar")),
                "predictions": [
                    {
                        "symbol": s,
                        "prediction": [float(frame[c].iloc[i]) for c in _pred_columns(frame)],
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

    def _forecast(self, dm, symbols, cols, when) -> tuple[pd.DataFrame, dict, float]:
        """The forecaster's rows at the last bar (`_outputs`) with their positions, the
        per-row extras and the forward pass's seconds."""
        from plusultra.data.datasets.windows import WindowDataset

        last = len(dm.panel.dates) - 1
        lo = last - self.window + 1  # the windows only: W bars of every symbol
        labels = None if dm.labels is None else dm.labels[lo:]
        index = np.stack([np.full(len(cols), self.window - 1), cols], axis=1).astype(np.int64)
        data = WindowDataset(dm.features[lo:], index, self.window, labels=labels)
        inputs = data.__getitems__(list(range(len(cols))))
        inputs = list(inputs) if isinstance(inputs, tuple) else [inputs]
        with self._lock:
            out, seconds = self._forward(inputs)
        frame, extras = self._outputs(out, dm.norm.target_scale, symbols, when)
        # positions are row by row: the last bar's row alone (its decision mask is its
        # tradable row: a symbol tradable on the last bar has no known delisting)
        frame = self.backtest.with_positions(
            frame,
            dm.panel.dates[last:],
            dm.panel.symbols,
            dm.tradable[last:],
            execution=self.execution,
        )
        return frame, extras, seconds

    def _policy_rows(self, key, dm, symbols) -> tuple[pd.DataFrame, dict, float]:
        """The policy's rows at the last bar (``pred_1``: its position) with their positions,
        no extras, and the seconds of the rollout (a cached one: of the lookup).

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
        frame = frame.set_index("symbol").loc[symbols].reset_index()
        return frame, {}, seconds

    def _outputs(self, out: torch.Tensor, target_scale, symbols, when) -> tuple[pd.DataFrame, dict]:
        """`symbol, timestamp, pred_k` (return units) and, per row, quantiles / probabilities."""
        head = self.model.head
        signal = head.signal(out).numpy()  # (K, H') in target units
        horizon = signal.shape[1]
        scale = np.ones(horizon) if self.kind == "position" else np.asarray(target_scale[:horizon])
        frame = pd.DataFrame({"symbol": symbols, "timestamp": [when] * len(symbols)})
        for k in range(horizon):
            frame[f"pred_{k + 1}"] = signal[:, k] * scale[k]
        extras: dict[str, list] = {}
        if self.kind in ("quantiles", "calibrated"):
            q = out[..., 3:] if self.kind == "calibrated" else out  # (K, H, Q)
            q = q.numpy() * scale[None, :, None]
            extras["quantiles"] = [
                {str(level): q[i, :, j].tolist() for j, level in enumerate(head.quantiles)}
                for i in range(len(symbols))
            ]
        if self.kind == "calibrated":
            p = head.probabilities(out).numpy()  # (K, H, 3)
            extras["probabilities"] = [
                {name: p[i, :, j].tolist() for j, name in enumerate(("down", "flat", "up"))}
                for i in range(len(symbols))
            ]
        return frame, extras

    def _guard(self, when, symbols, proposed, returns, tradable, rows) -> tuple:
        """Guarded weights of the requested symbols, the guardrail events and drift warnings.

        The book is the run's universe: a symbol not requested has a proposed weight of 0. A
        decision at a later bar than the book's last advances the book; one at the same bar
        replaces that decision (recomputed from the state before it); an earlier one is a 409.
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
            warnings: list[str] = []
            table = None
            if self.drift is not None:
                if advancing:
                    self.drift.update(np.asarray(rows, dtype=np.float64)[:, self._drift_cols])
                warnings, table = list(self.drift.warnings()), self.drift.table()
            if self.guardrails is None:
                self._book = (when, None, None)
                return proposed, [], warnings, table
            state = copy.deepcopy(after if advancing else before)
            start = copy.deepcopy(state)
            cols = pd.Index(self.universe).get_indexer(symbols)
            book = np.zeros(len(self.universe))
            book[cols] = proposed
            r = np.full(len(self.universe), np.nan)
            r[cols] = returns
            ok = np.zeros(len(self.universe), dtype=bool)
            ok[cols] = tradable
            guarded, events = self.guardrails.step(state, book, r, ok, timestamp=when.isoformat())
            self._book = (when, start, state)
        return np.asarray(guarded)[cols], list(events), warnings, table


def _pred_columns(frame: pd.DataFrame) -> list[str]:
    return sorted((c for c in frame.columns if c.startswith("pred_")), key=lambda c: int(c[5:]))


def _event(event) -> dict:
    d = event.as_dict()
    return {k: d.get(k) for k in ("symbol", "rule", "before", "after", "detail")}


def _read(path: Path) -> str | None:
    return path.read_text().strip() if path.is_file() else None
