"""The LightningDataModule over a SQLite database that follows the contract.

`setup()` runs the whole data flow once: load (and validate) the panel, cut embargoed date
segments (refusing, before any feature is computed, a segment too short to hold a labelled
decision), compute features, fit normalisation on the train segment only, and index the windows.
The same object serves inference on any other database through `for_inference`, which applies a
finished run's saved normalisation and feature list instead of fitting new ones.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from plusultra.data.datasets.cross_section import CrossSectionDataset
from plusultra.data.datasets.panel import Panel, load_panel, tradable_mask
from plusultra.data.datasets.sampler import (
    BlockBatchSampler,
    EpochSampler,
    ResumableLoader,
    check_block,
)
from plusultra.data.datasets.statistics import dataset_statistics, dropped_symbols
from plusultra.data.datasets.windows import (
    TARGETS,
    NormStats,
    Segments,
    WindowDataset,
    compute_segments,
    make_targets,
    next_returns,
    passthrough_collate,
    sample_index,
    valid_window_mask,
)
from plusultra.data.features.altdata import alt_schema, load_alternative, specs_from_config
from plusultra.data.features.indicators import log_returns, realised_vol
from plusultra.data.features.pipeline import FeaturePipeline
from plusultra.data.features.regimes import N_CLASSES, REGIME_LABELS, regime_labels
from plusultra.data.io.fixture import generate_fixture
from plusultra.data.io.sp500 import build_sp500_database
from plusultra.data.io.sp500_stocks import build_sp500_stocks_database
from plusultra.data.validation.checks import ValidationRules
from plusultra.errors import ConfigError, DataError
from plusultra.execution import check_execution, execution_returns, fill_lag, resolve_execution
from plusultra.io import write_json_atomic

log = logging.getLogger(__name__)


# Named database builders (`data.build`): generate the database at `data.path` if missing.
BUILDERS = {"sp500": build_sp500_database, "sp500_stocks": build_sp500_stocks_database}


@dataclass(frozen=True)
class FixtureSpec:
    """Parameters of the generated synthetic database (see `plusultra.data.io.fixture`)."""

    symbols: int = 16
    days: int = 1260
    seed: int = 0
    start: str = "2012-01-03"


def _with_side_series(panel: Panel, alt: dict[str, np.ndarray]) -> Panel:
    """The panel as features see it: joined side-table columns added as indicators.

    A registered feature reads a side-table column as ``ind_<name>`` (e.g. ``ind_vix``, see
    `plusultra.data.features.families_context`); the columns of a table with ``model_input``
    are still appended as ``alt_`` features afterwards. A name also in the indicators table is
    ambiguous: DataError.
    """
    if not alt:
        return panel
    clash = sorted(set(alt) & set(panel.indicators))
    if clash:
        raise DataError(
            f"data.alternative: column(s) {clash} are also names in the indicators table; "
            "set a prefix on the side table so that features can tell them apart"
        )
    return replace(panel, indicators={**panel.indicators, **alt})


class SQLiteDataModule(L.LightningDataModule):
    """Windows of features and forward-return targets from a SQLite market database.

    Args:
        path: SQLite file following docs/sqlite_schema.md.
        features: the feature pipeline.
        window: bars per input window.
        horizon: forward steps predicted.
        target: label kind: "excess" (forward log return minus the cross-sectional mean) or
            "raw" (forward log return); see `plusultra.data.datasets.windows.TARGETS`.
        train_end, val_end: last bar of the train / val segments (ISO date or fraction).
        embargo: bars between segments (None: window + horizon, the minimum allowed).
        symbols: universe (None: every symbol in `assets`).
        start, end: inclusive date bounds of the data loaded.
        batch_size, num_workers, pin_memory: DataLoader settings.
        fixture: when set and `path` is missing, generate the synthetic database there first.
        build: name of a builder in `BUILDERS` that writes `path` when it is missing.
        validate: run the pandera checks on load.
        validation: data-quality rules (`ValidationRules` keys: max_gap_days, max_stale_bars).
        alternative: point-in-time side tables (`AlternativeDataSpec` keys), appended as
            ``alt_<name>`` feature columns and readable by registered features as
            ``ind_<name>`` (the alternative-data family); ``model_input: false`` keeps a
            table out of the model inputs.
        conditioning: regime labels (`plusultra.data.features.regimes.REGIME_LABELS`) served with
            each
            window as integer inputs (label + 1; 0 = unknown) for market-state embeddings.
        clip: z-score clip applied after normalisation.
        block: portfolio batches of this many consecutive decision dates x all symbols, served
            with each sample's execution return (for the portfolio losses; see
            `plusultra.data.datasets.sampler`); None: pooled (date, symbol) samples, shuffled.
        execution: fill timing of the execution returns (`plusultra.execution`); None:
            next_open where the data has opens, else next_close. Used only with `block`.
        cross_section: serve whole cross-sections (every listed symbol's window per decision
            date, `plusultra.data.datasets.cross_section`) for the cross-asset model, in
            batches of `dates_per_batch` consecutive dates (the date-block sampler).
    """

    def __init__(
        self,
        path: str,
        features: FeaturePipeline,
        window: int,
        horizon: int,
        target: str = "excess",
        train_end: str | float = 0.6,
        val_end: str | float = 0.8,
        embargo: int | None = None,
        symbols: list[str] | None = None,
        start: str | None = None,
        end: str | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        fixture: dict | FixtureSpec | None = None,
        build: str | None = None,
        validate: bool = True,
        validation: dict | None = None,
        alternative: list[dict] | None = None,
        conditioning: list[str] | None = None,
        clip: float = 10.0,
        block: int | None = None,
        execution: str | None = None,
        cross_section: bool = False,
    ) -> None:
        super().__init__()
        self.cross_section = bool(cross_section)
        self.block = None if block is None else check_block(block)
        self.execution = check_execution(execution)
        self.exec_returns: np.ndarray | None = None  # (T, S), portfolio batches only
        if window < 2:
            raise ConfigError(f"window={window}: need at least 2 bars per window")
        if horizon < 1:
            raise ConfigError(f"horizon={horizon}: need at least 1 forward step")
        if target not in TARGETS:
            raise ConfigError(f"data.target={target!r}; valid: {sorted(TARGETS)}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be >= 1")
        self.path = os.fspath(path)
        self.pipeline = features
        self.window, self.horizon = int(window), int(horizon)
        self.target = target
        self.split_args = dict(train_end=train_end, val_end=val_end, embargo=embargo)
        self.symbols = list(symbols) if symbols else None
        self.start, self.end = start, end
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        self.fixture = FixtureSpec(**fixture) if isinstance(fixture, dict) else fixture
        if build is not None and build not in BUILDERS:
            raise ConfigError(f"data.build={build!r}; valid: {sorted(BUILDERS)} or null")
        self.build = build
        self.validate, self.clip = validate, clip
        self.rules = ValidationRules.from_mapping(validation)
        self.alternative_config = list(alternative or [])
        self.alternative = specs_from_config(self.alternative_config)
        self.conditioning = list(conditioning or [])
        unknown = [n for n in self.conditioning if n not in REGIME_LABELS]
        if unknown:
            raise ConfigError(
                f"data.conditioning: unknown label(s) {unknown}; valid: {sorted(REGIME_LABELS)}"
            )
        self.labels: np.ndarray | None = None
        self.panel: Panel | None = None
        self.norm: NormStats | None = None
        self.segments: Segments | None = None
        self.feature_names: list[str] = []
        self.dropped: dict[str, str] = {}  # symbol -> why it has no complete train window
        self.market_series: dict[str, np.ndarray] = {}  # market-wide alt column -> (T,) raw

    # ----------------------------------------------------------------- preparation
    def prepare_data(self) -> None:
        """Generate the synthetic database once if this data module owns a fixture."""
        if self.fixture is not None and not os.path.exists(self.path):
            f = self.fixture
            log.info("Generating synthetic database %s (%d x %d)", self.path, f.symbols, f.days)
            generate_fixture(
                self.path, n_symbols=f.symbols, n_days=f.days, seed=f.seed, start=f.start
            )
        elif self.build is not None and not os.path.exists(self.path):
            log.info("Building %s database %s", self.build, self.path)
            BUILDERS[self.build](self.path)
        elif not os.path.exists(self.path):
            raise DataError(f"data.path: database file not found: {self.path}")

    def _load(self, strict_indicators: bool = False) -> np.ndarray:
        self._load_panel()
        return self._compute_features(strict_indicators)

    def _load_panel(self) -> None:
        schemas = {spec.table: alt_schema(spec) for spec in self.alternative}
        self.panel = load_panel(
            self.path, self.symbols, self.start, self.end, self.validate, self.rules, schemas
        )

    def _compute_features(self, strict_indicators: bool = False) -> np.ndarray:
        """Feature array (T, S, F) of the loaded panel, alternative-data columns appended."""
        if strict_indicators:
            self.pipeline.skip_missing_indicators = False
        alt = {}
        if self.alternative:
            alt = load_alternative(
                self.path, self.alternative, self.panel.dates, self.panel.symbols
            )
        feats, self.feature_names = self.pipeline.compute(_with_side_series(self.panel, alt))
        if self.alternative:
            self.market_series = {  # raw values, for the guardrails' factor caps
                name: alt[name][:, 0]
                for spec in self.alternative
                if spec.symbol_column is None
                for name in spec.names
            }
            inputs = [spec for spec in self.alternative if spec.model_input]
            shown = {name: alt[name] for spec in inputs for name in spec.names}
            # One availability flag per table: 1 where its values are known at that bar.
            flags = {
                f"available_{spec.table}": np.isfinite(alt[spec.names[0]]).astype(np.float64)
                for spec in inputs
            }
            if shown:
                columns = [*shown.values(), *flags.values()]
                stacked = np.stack(columns, axis=-1).astype(np.float32)
                feats = np.concatenate([feats, stacked], axis=-1)
                self.feature_names += [f"alt_{name}" for name in [*shown, *flags]]
        return feats

    def setup(self, stage: str | None = None) -> None:
        """Load, featurise, split and normalise (idempotent)."""
        if self.norm is not None:
            return
        self.prepare_data()
        self._load_panel()
        # up front, before the features: every segment must hold a labelled decision
        self.segments = compute_segments(
            self.panel.dates, self.window, self.horizon, **self.split_args
        )
        raw = self._compute_features()
        close = self.panel.fields["close"]
        targets = make_targets(close, self.horizon, self.target)
        train = raw[: self.segments.train_end + 1]
        empty = [
            n for j, n in enumerate(self.feature_names) if not np.isfinite(train[..., j]).any()
        ]
        if empty:
            last = str(self.panel.dates[self.segments.train_end])[:10]
            raise DataError(
                f"feature(s) {empty} have no value in the train segment (up to {last}), so they "
                "cannot be normalised or learned; drop them or move data.train_end/data.start"
            )
        self.norm = NormStats.fit(raw, targets, self.segments.train_end, self.clip)
        for j, name in enumerate(self.feature_names):  # 0/1 availability flags stay as they are
            if name.startswith("alt_available_"):
                self.norm.mean[j], self.norm.std[j] = 0.0, 1.0
        self._finish(raw, targets)
        self._check_conditioning()
        self.dropped = dropped_symbols(
            self.features,
            self.input_ok,
            self.target_ok,
            close,
            self.segments.train,
            self.feature_names,
            self.panel.symbols,
            self.window,
        )

    def _check_conditioning(self) -> None:
        """A conditioning label unknown on every train bar would embed nothing: refuse it."""
        hi = self.segments.train_end + 1
        empty = [n for j, n in enumerate(self.conditioning) if not self.labels[:hi, :, j].any()]
        if empty:
            raise DataError(
                f"data.conditioning: label(s) {empty} are undefined on every bar of the train "
                "segment (liquidity needs volume; both need about 270 bars of history); "
                "remove them or load more history"
            )

    def _finish(self, raw: np.ndarray, targets: np.ndarray | None) -> None:
        self.features = self.norm.apply(raw)  # (T, S, F)
        # Side tables often start later than prices: an unknown alternative value is 0 (its
        # train mean after standardisation) and its table's availability flag says so, so
        # that a short side table does not remove every window before it starts.
        alt = [j for j, n in enumerate(self.feature_names) if n.startswith("alt_")]
        if alt:
            cols = self.features[..., alt]
            has_bar = np.isfinite(self.panel.fields["close"])[..., None]  # (T, S, 1)
            cols[~np.isfinite(cols) & has_bar] = 0.0
            self.features[..., alt] = cols
        self.input_ok = valid_window_mask(self.features, self.window)
        self.scaled_targets = None
        if targets is not None:
            self.scaled_targets = (targets / np.asarray(self.norm.target_scale)).astype(np.float32)
            self.target_ok = np.isfinite(self.scaled_targets).all(axis=-1)
        if self.conditioning:  # (T, S, R) int, 0 = unknown (warm-up, no bar)
            found = regime_labels(self.panel, self.conditioning)
            self.labels = np.stack([found[n].astype(np.int64) + 1 for n in self.conditioning], -1)
        self.returns = next_returns(self.panel.fields["close"])  # (T, S) close t -> t + 1
        self.tradable = tradable_mask(self.panel)

    @classmethod
    def for_inference(
        cls, path: str, run_dir: str | os.PathLike, batch_size: int = 1024, **overrides
    ) -> SQLiteDataModule:
        """Data module over `path` rebuilding exactly a finished run's inputs.

        From the run's data.json: the registered features, indicator columns and regime columns
        the run computed (not those it skipped), its alternative data and conditioning labels,
        window, validation, clip, universe (`symbols`: the sector columns are cross-sectional)
        and first date loaded (`start`: exponential averages depend on where they start); from
        normalisation.json its train-segment statistics. `overrides` (e.g. ``end``, another
        ``symbols`` or ``start``) replace recorded loader settings. Anything the run had that
        `path` cannot provide is a DataError naming it.
        """
        run_dir = Path(run_dir)
        meta = json.loads((run_dir / "data.json").read_text())
        recorded = meta["features"]
        columns = recorded["columns"]
        pipeline = FeaturePipeline(
            recorded["names"],
            recorded["indicators"],
            False,
            regimes=[c[len("regime_") :] for c in columns if c.startswith("regime_")],
        )
        dm = cls(
            path,
            pipeline,
            meta["window"],
            meta["horizon"],
            batch_size=batch_size,
            **{**meta["loader"], **overrides},
        )
        dm.norm = NormStats.load(run_dir / "normalisation.json")
        raw = dm._load(strict_indicators=True)
        if dm.feature_names != columns:
            lacks = [c for c in columns if c not in dm.feature_names]
            extra = [c for c in dm.feature_names if c not in columns]
            skipped = dm.pipeline.skipped
            why = "; ".join(f"{c}: {skipped[c]}" for c in lacks if c in skipped)
            raise DataError(
                f"{path}: cannot rebuild the features of run {run_dir}: "
                + (f"this database lacks {lacks}" if lacks else "")
                + (f" ({why})" if why else "")
                + (f"{'; ' if lacks else ''}unexpected {extra}" if extra else "")
                + ("" if lacks or extra else f"order differs: {dm.feature_names} vs {columns}")
            )
        dm._finish(raw, None)
        return dm

    def save_artifacts(self, run_dir: str | os.PathLike) -> None:
        """Write normalisation.json and data.json, everything inference needs."""
        run_dir = Path(run_dir)
        self.norm.save(run_dir / "normalisation.json")
        columns = self.feature_names
        used = [c[len("ind_") :] for c in columns if c.startswith("ind_")]
        write_json_atomic(
            run_dir / "data.json",
            {
                "window": self.window,
                "horizon": self.horizon,
                "features": {
                    "names": [n for n in self.pipeline.names if n in self.feature_names],
                    "indicators": used,
                    "regimes": [c[len("regime_") :] for c in columns if c.startswith("regime_")],
                    "skipped": dict(self.pipeline.skipped),  # not computed, with the reason
                    "columns": self.feature_names,
                },
                "loader": {
                    "validate": self.validate,
                    "clip": self.clip,
                    "validation": {
                        "max_gap_days": self.rules.max_gap_days,
                        "max_stale_bars": self.rules.max_stale_bars,
                    },
                    "alternative": self.alternative_config,
                    "conditioning": self.conditioning,
                    "symbols": self.symbols,  # universe (null: every symbol)
                    "start": self.start,  # first date loaded (null: all)
                    **({"cross_section": True} if self.cross_section else {}),
                },
                "sectors": {
                    sym: (None if pd.isna(sec) else str(sec))
                    for sym, sec in self.panel.assets["sector"].items()
                },
                "segments": asdict(self.segments) if self.segments else None,
                "segment_dates": self.segment_dates() if self.segments else None,
                "dropped_symbols": self.dropped,  # symbol -> why it has no train window
                "statistics": self.statistics(),  # catalogue columns, data_path absolute
            },
        )

    # ----------------------------------------------------------------- datasets
    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def condition_classes(self) -> list[int]:
        """Classes of each conditioning label, the unknown class 0 included."""
        return [N_CLASSES[n] + 1 for n in self.conditioning]

    @property
    def batch_samples(self) -> int:
        """Most samples in one training batch: batch_size, or block dates x every symbol."""
        if self.cross_section:
            return self.dates_per_batch * len(self.panel.symbols)
        return self.batch_size if self.block is None else self.block * len(self.panel.symbols)

    @property
    def dates_per_batch(self) -> int:
        """Cross-sections: dates per batch, `block` when a portfolio loss sets it, else about
        batch_size symbol-windows (``max(2, round(batch_size / n_symbols))``)."""
        if self.block is not None:
            return self.block
        return max(2, round(self.batch_size / len(self.panel.symbols)))

    def segment_dates(self) -> dict[str, list[str]]:
        """First and last decision date of each segment (ISO)."""
        d = pd.DatetimeIndex(self.panel.dates)
        out = {}
        for name in ("train", "val", "test"):
            lo, hi = getattr(self.segments, name)
            out[name] = [str(d[lo].date()), str(d[min(hi, len(d) - 1)].date())]
        return out

    def labelled_dataset(self, lo: int, hi: int) -> WindowDataset:
        """Windows with complete inputs and targets whose decision bar is in lo..hi (may be
        empty: the last `horizon` bars of the calendar have no label yet)."""
        if self.cross_section:
            returns = None
            if self.block is not None:  # portfolio losses: execution returns, hi as below
                returns, hi = self._execution_returns(hi)
            return CrossSectionDataset(
                self.features, self.tradable, self.window, lo, hi, self.scaled_targets,
                self.labels, returns,
            )  # fmt: skip
        if self.block is not None:
            return self._portfolio_dataset(lo, hi)
        idx = sample_index(self.input_ok & self.target_ok, lo, hi)
        return WindowDataset(self.features, idx, self.window, self.scaled_targets, self.labels)

    def _portfolio_dataset(self, lo: int, hi: int) -> WindowDataset:
        """Labelled windows that also carry their execution return (portfolio losses).

        The return of decision t ends at bar t + lag + 1 (lag 1 for next-bar fills); where that
        is later than the label's last bar t + horizon, `hi` moves back so that no sample of a
        segment uses a price past the segment's last label bar.
        """
        _, hi = self._execution_returns(hi)
        ok = self.input_ok & self.target_ok & np.isfinite(self.exec_returns)
        idx = sample_index(ok, lo, hi)
        return WindowDataset(
            self.features, idx, self.window, self.scaled_targets, self.labels, self.exec_returns
        )

    def _execution_returns(self, hi: int) -> tuple[np.ndarray, int]:
        """(T, S) execution returns of the portfolio losses, and `hi` moved back so that they
        end by the segment's last label bar (see `_portfolio_dataset`)."""
        if self.exec_returns is None:
            fields = self.panel.fields
            mode = resolve_execution(self.execution, fields.get("open"), fields["close"])
            self.exec_returns = execution_returns(mode, fields.get("open"), fields["close"])
            self.exec_lag = fill_lag(mode)
        return self.exec_returns, hi - max(0, self.exec_lag + 1 - self.horizon)

    def _dataset(self, segment: str) -> WindowDataset:
        ds = self.labelled_dataset(*getattr(self.segments, segment))
        if len(ds) == 0:
            why = "; ".join(f"{sym}: {r}" for sym, r in self.dropped.items())
            raise DataError(
                f"no complete window in the {segment} segment"
                + (f" ({why})" if segment == "train" and why else "")
            )
        return ds

    def inference_dataset(
        self, segment: str | None = None, bars: tuple[int, int] | None = None
    ) -> WindowDataset:
        """Windows with complete inputs (targets not needed) in a segment, in the decision bars
        `bars` (inclusive), or everywhere."""
        lo, hi = (self.window - 1, len(self.panel.dates) - 1)
        if segment is not None:
            lo, hi = getattr(self.segments, segment)
        if bars is not None:
            lo, hi = max(lo, bars[0]), min(hi, bars[1])
        if self.cross_section:
            return CrossSectionDataset(
                self.features, self.tradable, self.window, lo, hi, labels=self.labels
            )
        index = sample_index(self.input_ok, lo, hi)
        return WindowDataset(self.features, index, self.window, labels=self.labels)

    def loader(self, dataset: WindowDataset, shuffle: bool = False) -> DataLoader:
        """A resumable DataLoader over `dataset` with this data module's batch and worker
        settings; over a portfolio dataset, batches of `block` consecutive dates (blocks
        shuffled if `shuffle`). Each epoch's order depends only on the sampler's seed (drawn
        from torch's global generator when shuffling) and the epoch (`sampler.EpochSampler`).
        Over a `CrossSectionDataset` (one item per date): batches of `dates_per_batch`
        consecutive dates, the same way."""
        if isinstance(dataset, CrossSectionDataset):
            batches = BlockBatchSampler(dataset.times.numpy(), self.dates_per_batch, shuffle)
            kwargs = {"batch_sampler": batches}
        elif dataset.returns is not None:
            batches = BlockBatchSampler(dataset.index[:, 0].numpy(), self.block, shuffle)
            kwargs = {"batch_sampler": batches}
        else:
            batches = EpochSampler(len(dataset), shuffle)
            kwargs = {"sampler": batches, "batch_size": self.batch_size}
        return ResumableLoader(
            dataset,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=passthrough_collate,
            persistent_workers=self.num_workers > 0,
            # worker seeds from the loader's own generator: iterating never draws global RNG
            generator=torch.Generator().manual_seed(batches.seed),
            **kwargs,
        )

    def _loader(self, segment: str, shuffle: bool) -> DataLoader:
        return self.loader(self._dataset(segment), shuffle)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def context(self, window: int = 20) -> dict[str, np.ndarray | int | None]:
        """Full-calendar arrays for baselines and simulators, each known at its bar's close.

        close: adjusted close; open: adjusted open (NaN for close-only data; the fill price of
        next-bar-open execution); volume: split-adjusted shares; volatility: std of the last
        `window` log returns (per bar); features/targets: model inputs and the labels of the last
        forecast step, with `label_end` the last train bar whose label is known and `val_span`
        the validation segment's decision bars (their labels known by its end); sectors:
        symbol -> sector, or None; factors: market-wide alternative-data column -> (T,) raw
        values (the guardrails' factor series).
        """
        close = self.panel.fields["close"]
        volatility = realised_vol(log_returns(close), window, min_periods=2, periods_per_year=None)
        return {
            "close": close,
            "open": self.panel.fields.get("open"),
            "volume": self.panel.fields["volume"],
            "volatility": volatility,
            "features": self.features,
            "targets": None if self.scaled_targets is None else self.scaled_targets[..., -1],
            "label_end": self.segments.train[1] if self.segments else None,
            "val_span": self.segments.val if self.segments else None,
            "sectors": self._sectors(),
            "factors": dict(self.market_series),
        }

    def _sectors(self) -> dict[str, str] | None:
        """symbol -> the assets table's ``sector`` (symbols without one left out); None when
        the panel has no sector column (read by the guardrails' sector caps)."""
        assets = self.panel.assets
        if assets is None or "sector" not in assets.columns:
            return None
        column = assets["sector"].reindex(self.panel.symbols)
        return {s: str(v) for s, v in column.items() if pd.notna(v) and str(v)}

    def sizes(self) -> dict[str, int]:
        """Number of labelled samples (symbol-windows) per segment."""
        return {f"{s}_samples": len(self._dataset(s).index) for s in ("train", "val", "test")}

    def statistics(self) -> dict[str, int | str]:
        """Dataset statistics of the loaded data (`plusultra.data.datasets.statistics`)."""
        return dataset_statistics(
            self.path,
            self.panel.dates,
            self.panel.fields["close"],
            self.n_features,
            len(self.dropped),
        )
