"""Curriculum stages: what every stage shares, and the supervised stage.

A stage trains the run's module (or a module wrapping its backbone) with a fresh Lightning
Trainer from `make_trainer`, on the run's data seen through the stage's settings
(`training.stage_data.StageData`). Stages run in order on the same in-memory module, so each
starts from the weights the previous stage handed over: its best-validation checkpoint when
``restore_best`` (the default), else its last epoch.

Every stage:

- logs to the run's loggers under its own prefix (``<stage>/train/loss``, ``<stage>/val/loss``;
  the step axis restarts with each stage). The metric names the module logs, which callbacks
  monitor (``val/loss``), are unchanged, so ModelCheckpoint and pruning need no stage keys;
- checkpoints into the run's checkpoint dir; the last stage as ``best.ckpt`` / ``last.ckpt``
  (what ``plusultra-predict`` reads), earlier ones as ``<stage>-best.ckpt`` /
  ``<stage>-last.ckpt``;
- returns a `StageResult` whose best score becomes the catalogue column
  ``<stage>_best_val_<metric>`` (``loss``; the PPO stage's ``sharpe``);
- continues from a checkpoint when its `make_trainer` carries a ``ckpt_path``
  (``training.resume_plan.StageTrainers``: a resumed run), loaded with ``weights_only=True``
  after its parameter shapes are checked against the module. A stage with
  ``resumable = False`` (PPO) instead reruns from its seeded start in a resumed run.

A new kind of stage subclasses `Stage`, implements `run`, and is added to `curriculum.STAGES`
(the PPO stage: `plusultra.rl.stage.RLStage`).
"""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import lightning as L
import pandas as pd
import torch

from plusultra.data.features.regimes import N_CLASSES, REGIME_LABELS
from plusultra.errors import ConfigError
from plusultra.training.resume import ResumeCheckpoint
from plusultra.training.resume_config import check_shapes
from plusultra.training.stage_data import StageData

log = logging.getLogger(__name__)

TrainerFactory = Callable[..., L.Trainer]


@dataclass
class StageResult:
    """What a stage leaves behind.

    Attributes:
        name: the stage's name.
        trainer: the stage's trainer (None: a stage a resumed run skipped as done).
        best_checkpoint: path of its best-validation checkpoint, if one was written.
        best_score: its best monitored validation value (``val/loss`` of its own objective).
        handed: "best" or "last": the weights the module holds for the next stage.
        metric: what `best_score` is (catalogue column ``<stage>_best_val_<metric>``).
        positions: a policy stage's positions over a segment (``"val"`` or ``"test"``): a
            frame ``symbol, timestamp, pred_1`` that evaluation trades instead of the module's
            forecasts (`rl.stage.RLStage`); None: evaluate the module.
        best_epoch: the epoch whose weights a policy stage handed over (-1: its policy before
            fine-tuning; catalogue column ``<stage>_best_epoch``); None: not recorded.
    """

    name: str
    trainer: L.Trainer | None
    best_checkpoint: str | None
    best_score: float | None
    handed: str = "best"
    metric: str = "loss"
    positions: Callable[[str], pd.DataFrame] | None = None
    best_epoch: int | None = None


@contextlib.contextmanager
def stage_prefix(loggers: Sequence, name: str) -> Iterator[None]:
    """Prefix every metric the loggers write with ``<name>/`` while the block runs."""
    saved = [(lg, lg._prefix, lg.LOGGER_JOIN_CHAR) for lg in loggers if hasattr(lg, "_prefix")]
    for lg, _, _ in saved:
        lg._prefix, lg.LOGGER_JOIN_CHAR = name, "/"  # instance attributes, restored below
    try:
        yield
    finally:
        for lg, prefix, join in saved:
            lg._prefix = prefix
            lg.LOGGER_JOIN_CHAR = join


@dataclass
class Stage(abc.ABC):
    """Settings every stage has (one entry of ``curriculum.stages``).

    Attributes:
        name: unique in the curriculum; the log prefix and catalogue column stem.
        epochs: epochs of this stage; None: ``trainer.max_epochs``.
        window: bars per input window in this stage, at most the run's ``window`` (which sizes
            the embargo and the backbones' positional tables); None: the run's window.
        regimes: regime label -> classes to train on (e.g. ``{volatility: [2]}``: high-
            volatility bars only); labels from ``data.features.regimes``, at the decision bar.
        restore_best: hand the next stage (and evaluation) the best-validation weights of this
            stage; False: the last epoch's.
    """

    name: str
    epochs: int | None = None
    window: int | None = None
    regimes: dict[str, list[int]] = field(default_factory=dict)
    restore_best: bool = True
    trains_head = True  # trains the forecasting module itself (so it may be the last stage)
    resumable = True  # a resumed run skips it once finished and continues it from its checkpoint

    def __post_init__(self) -> None:
        where = f"curriculum stage {self.name!r}"
        if self.epochs is not None and (isinstance(self.epochs, bool) or self.epochs < 1):
            raise ConfigError(f"{where}: epochs={self.epochs!r} must be an integer >= 1 or null")
        if self.window is not None and (isinstance(self.window, bool) or self.window < 2):
            raise ConfigError(f"{where}: window={self.window!r} must be an integer >= 2 or null")
        for label, classes in self.regimes.items():
            if label not in REGIME_LABELS:
                raise ConfigError(
                    f"{where}: regimes.{label}: unknown label; valid: {sorted(REGIME_LABELS)}"
                )
            valid = list(range(N_CLASSES[label]))
            if not classes or any(c not in valid for c in classes):
                raise ConfigError(f"{where}: regimes.{label}={classes!r}; classes in {valid}")

    def check(self, module: L.LightningModule, datamodule) -> None:
        """Refuse, before anything trains, settings this run's data or backbone cannot serve."""
        if self.window is None:
            return
        where = f"curriculum stage {self.name!r}: window={self.window}"
        if self.window > datamodule.window:
            raise ConfigError(
                f"{where} exceeds the run's window={datamodule.window}, which sizes the embargo "
                "and the backbone's positional table; raise `window` and give the earlier "
                "stages smaller ones"
            )
        n_in = datamodule.n_features + (module.embedding.dim if module.embedding else 0)
        training = module.backbone.training
        try:  # the backbone says itself whether it takes this window (patch sizes, scales)
            with torch.no_grad():
                module.backbone.eval()(torch.zeros(1, self.window, n_in))
        except ConfigError as exc:
            raise ConfigError(f"{where}: the backbone refuses it: {exc}") from exc
        finally:
            module.backbone.train(training)

    def data(self, datamodule, inputs_only: bool = False):
        """The run's data module when this stage changes nothing, else a `StageData`."""
        if self.window is None and not self.regimes and not inputs_only:
            return datamodule
        return StageData(datamodule, self.window, self.regimes, inputs_only, self.name)

    def fit(
        self,
        module: L.LightningModule,
        data,
        make_trainer: TrainerFactory,
        final: bool,
        callbacks: Sequence[L.Callback] = (),
    ) -> StageResult:
        """Fit `module` on `data` with a fresh trainer, under this stage's prefix and names,
        then hand over the best (or last) weights. A `make_trainer` with a ``ckpt_path``
        continues that checkpoint's training (optimiser, scheduler, loops, data position)."""
        overrides = {} if self.epochs is None else {"max_epochs": self.epochs}
        trainer = make_trainer(*callbacks, **overrides)
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and not final:  # keep best.ckpt / last.ckpt for the final model
            ckpt.filename = f"{self.name}-best"
            ckpt.CHECKPOINT_NAME_LAST = f"{self.name}-last"
        for cb in getattr(trainer, "callbacks", []):
            if isinstance(cb, ResumeCheckpoint) and not final:
                cb.filename = f"{self.name}-resume"
        resume = {}
        if (path := getattr(make_trainer, "ckpt_path", None)) is not None:
            # refuse, naming the parameter, before Lightning loads it
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            check_shapes(state["state_dict"], module, path)
            resume = {"ckpt_path": path, "weights_only": True}
        with stage_prefix(trainer.loggers, self.name):
            trainer.fit(module, datamodule=data, **resume)
        best = getattr(ckpt, "best_model_path", "") or None
        score = getattr(ckpt, "best_model_score", None)
        score = None if score is None else float(score)
        if self.restore_best and best:
            # this fit's own checkpoint: callbacks.model_checkpoint writes into the run's
            # unique directory, so no other run can have put a file there
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
            shown = "n/a" if score is None else f"{score:.6f}"
            log.info("Stage %s: restored %s (%s=%s)", self.name, best, ckpt.monitor, shown)
        handed = "best" if self.restore_best and best else "last"
        return StageResult(self.name, trainer, best, score, handed)

    @abc.abstractmethod
    def run(
        self,
        module: L.LightningModule,
        datamodule,
        make_trainer: TrainerFactory,
        final: bool,
        callbacks: Sequence[L.Callback] = (),
    ) -> StageResult:
        """Train `module` (the run's ForecastModule) in this stage.

        Args:
            module: the run's module; the stage leaves the weights it hands over in it.
            datamodule: the run's set-up data module.
            make_trainer: builds a Trainer from the run's config (extra callbacks, overrides).
            final: this is the curriculum's last stage (it writes best.ckpt / last.ckpt).
            callbacks: callbacks that watch the run's supervised validation objective
                (pruning); a stage that optimises something else does not pass them on.
        """


@dataclass
class SupervisedStage(Stage):
    """Supervised forecasting with the run's loss.

    Attributes:
        cost_bps: turnover cost (basis points) of the run's portfolio loss during this stage
            (rising costs across stages); None: the loss's own. Evaluation uses the loss's own.
    """

    cost_bps: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cost_bps is not None and not self.cost_bps >= 0:
            raise ConfigError(f"curriculum stage {self.name!r}: cost_bps must be >= 0")

    def check(self, module: L.LightningModule, datamodule) -> None:
        super().check(module, datamodule)
        where = f"curriculum stage {self.name!r}"
        if self.cost_bps is not None and not hasattr(module.loss_fn, "cost"):
            raise ConfigError(
                f"{where}: cost_bps is set but loss {type(module.loss_fn).__name__} has no "
                "turnover cost (losses with cost_bps: sharpe, sortino, cvar, risk_aware)"
            )
        if getattr(datamodule, "block", None) is not None and (self.window or self.regimes):
            raise ConfigError(
                f"{where}: window/regimes cannot be changed with portfolio batches (data.block "
                "is set by a portfolio loss); remove them from the stage"
            )

    def run(self, module, datamodule, make_trainer, final, callbacks=()) -> StageResult:
        saved = getattr(module.loss_fn, "cost", None)
        if self.cost_bps is not None:
            module.loss_fn.cost = self.cost_bps / 1e4  # fraction of equity per unit turnover
        try:
            return self.fit(module, self.data(datamodule), make_trainer, final, callbacks)
        finally:
            if self.cost_bps is not None:
                module.loss_fn.cost = saved
