"""The LightningDataModule over a SQLite database that follows the contract.

`setup()` runs the whole data flow once: load (and validate) the panel, compute features, cut
embargoed date segments, fit normalisation on the train segment only, and index the windows.
The same object serves inference on any other database through `for_inference`, which applies a
finished run's saved normalisation and feature list instead of fitting new ones.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from plusultra.data.datasets.panel import Panel, load_panel, tradable_mask
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
from plusultra.data.features.pipeline import FeaturePipeline
from plusultra.data.features.regimes import N_CLASSES, REGIME_LABELS, regime_labels
from plusultra.data.io.fixture import generate_fixture
from plusultra.data.io.sp500 import build_sp500_database
from plusultra.data.validation.checks import ValidationRules
from plusultra.errors import ConfigError, DataError
from plusultra.io import write_json_atomic

log = logging.getLogger(__name__)


# Named database builders (`data.build`): generate the database at `data.path` if missing.
BUILDERS = {"sp500": build_sp500_database}


@dataclass(frozen=True)
class FixtureSpec:
    """Parameters of the generated synthetic database (see `plusultra.data.io.fixture`)."""

    symbols: int = 16
    days: int = 1260
    seed: int = 0
    start: str = "2012-01-03"


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
            ``alt_<name>`` feature columns.
        conditioning: regime labels (`plusultra.data.features.regimes.REGIME_LABELS`) served with
            each
            window as integer inputs (label + 1; 0 = unknown) for market-state embeddings.
        clip: z-score clip applied after normalisation.
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
    ) -> None:
        super().__init__()
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
        schemas = {spec.table: alt_schema(spec) for spec in self.alternative}
        self.panel = load_panel(
            self.path, self.symbols, self.start, self.end, self.validate, self.rules, schemas
        )
        if strict_indicators:
            self.pipeline.skip_missing_indicators = False
        feats, self.feature_names = self.pipeline.compute(self.panel)
        if self.alternative:
            alt = load_alternative(
                self.path, self.alternative, self.panel.dates, self.panel.symbols
            )
            # One availability flag per table: 1 where its values are known at that bar.
            flags = {
                f"available_{spec.table}": np.isfinite(alt[spec.names[0]]).astype(np.float64)
                for spec in self.alternative
            }
            columns = [*alt.values(), *flags.values()]
            feats = np.concatenate([feats, np.stack(columns, axis=-1).astype(np.float32)], axis=-1)
            self.feature_names += [f"alt_{name}" for name in [*alt, *flags]]
        return feats

    def setup(self, stage: str | None = None) -> None:
        """Load, featurise, split and normalise (idempotent)."""
        if self.norm is not None:
            return
        self.prepare_data()
        raw = self._load()
        close = self.panel.fields["close"]
        targets = make_targets(close, self.horizon, self.target)
        self.segments = compute_segments(
            self.panel.dates, self.window, self.horizon, **self.split_args
        )
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
        """Data module over `path` using a finished run's features and normalisation."""
        run_dir = Path(run_dir)
        meta = json.loads((run_dir / "data.json").read_text())
        pipeline = FeaturePipeline(meta["features"]["names"], meta["features"]["indicators"], False)
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
        if dm.feature_names != meta["features"]["columns"]:
            raise DataError(
                f"{path}: features {dm.feature_names} differ from the run's "
                f"{meta['features']['columns']}"
            )
        dm._finish(raw, None)
        return dm

    def save_artifacts(self, run_dir: str | os.PathLike) -> None:
        """Write normalisation.json and data.json, everything inference needs."""
        run_dir = Path(run_dir)
        self.norm.save(run_dir / "normalisation.json")
        used = [c[len("ind_") :] for c in self.feature_names if c.startswith("ind_")]
        write_json_atomic(
            run_dir / "data.json",
            {
                "window": self.window,
                "horizon": self.horizon,
                "features": {
                    "names": [n for n in self.pipeline.names if n in self.feature_names],
                    "indicators": used,
                    "regimes": self.pipeline.regimes,
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
                },
                "sectors": {
                    sym: (None if pd.isna(sec) else str(sec))
                    for sym, sec in self.panel.assets["sector"].items()
                },
                "segments": asdict(self.segments) if self.segments else None,
                "segment_dates": self.segment_dates() if self.segments else None,
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
        idx = sample_index(self.input_ok & self.target_ok, lo, hi)
        return WindowDataset(self.features, idx, self.window, self.scaled_targets, self.labels)

    def _dataset(self, segment: str) -> WindowDataset:
        ds = self.labelled_dataset(*getattr(self.segments, segment))
        if len(ds) == 0:
            raise DataError(f"no complete window in the {segment} segment")
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
        index = sample_index(self.input_ok, lo, hi)
        return WindowDataset(self.features, index, self.window, labels=self.labels)

    def loader(self, dataset: WindowDataset, shuffle: bool = False) -> DataLoader:
        """A DataLoader over `dataset` with this data module's batch and worker settings."""
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=passthrough_collate,
            persistent_workers=self.num_workers > 0,
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
        forecast step, with `label_end` the last train bar whose label is known.
        """
        close = self.panel.fields["close"]
        log_ret = pd.DataFrame(np.log(close)).diff()
        return {
            "close": close,
            "open": self.panel.fields.get("open"),
            "volume": self.panel.fields["volume"],
            "volatility": log_ret.rolling(window, min_periods=2).std().to_numpy(),
            "features": self.features,
            "targets": None if self.scaled_targets is None else self.scaled_targets[..., -1],
            "label_end": self.segments.train[1] if self.segments else None,
        }

    def sizes(self) -> dict[str, int]:
        """Number of labelled samples per segment."""
        return {f"{s}_samples": len(self._dataset(s)) for s in ("train", "val", "test")}
