"""The PPO curriculum stage: reinforcement fine-tuning of the run's model on the train segment.

`RLStage` (``kind: ppo`` in ``curriculum.stages``) warm-starts an `ActorCritic` from the run's
`ForecastModule` as the previous stages left it (``ActorCritic.from_forecast``: a copy of its
backbone, the whole module frozen as the supervised reference policy), and trains it with
`PPOModule` on a `TradingEnv` over the **train** segment whose costs and fill timing are the
run's simulator's (``EnvConfig.from_simulator``); with ``policy.residual`` the policy is a
residual on the frozen supervised one. Selection uses the **validation** segment only: before
the first update and after every epoch the policy's greedy positions over the whole validation
segment (`rl.rollout.segment_rollout`) are scored (annualised Sharpe ratio, or mean return, of
the environment's net returns), logged as ``<stage>/val/<select>``, and the best candidate's
weights are kept (``restore_best``), the policy before fine-tuning (epoch -1) included. The test
segment is never read while training or selecting.

The stage must be the curriculum's last: its policy is what the run evaluates. Its
`StageResult.positions` gives that policy's positions over ``val`` or ``test`` (one sequential
greedy rollout each), which `training.evaluate` backtests with the run's Backtest and simulator.
The forecaster itself is left as the previous stage handed it over (its ``val_loss`` /
``test_loss`` are the run's supervised losses). Checkpoints: ``<stage>-best.ckpt`` (best
validation score) and ``<stage>-last.ckpt`` in the run's checkpoint dir, always under the stage's
name, and ``<stage>-policy.pt``: the policy handed to evaluation, which ``plusultra-predict``
loads (``rl.predict``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from plusultra.data.datasets.calendar import resolve_periods_per_year
from plusultra.data.features.regimes import regime_labels
from plusultra.errors import ConfigError
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.feedback import FeedbackSettings, build_penalty
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic
from plusultra.rl.predict import POLICY_SUFFIX, save_policy
from plusultra.rl.rewards import RewardConfig
from plusultra.rl.rollout import decision_bars, positions_frame, segment_rollout
from plusultra.rl.schedule import EnvSchedule
from plusultra.training.pretrain import settings
from plusultra.training.stages import Stage, StageResult, stage_prefix

log = logging.getLogger(__name__)

SELECT = ("sharpe", "return")  # validation scores a PPO stage selects its epoch on


@dataclass(frozen=True)
class PolicySettings:
    """The actor-critic's heads (config keys ``policy.<name>``).

    Attributes:
        hidden: width of the hidden layer of the policy and value heads.
        log_std_init: initial log-std of the continuous Gaussian.
        forecast_scale: a forecast head's signal (multiples of the targets' train RMS) times
            this, clipped to [-1, 1], is the supervised reference position (KL penalty,
            behaviour cloning, residual); None: the targets' train RMS of the traded step, so
            the reference is the forecast in return units, the book a supervised run with
            ``evaluation=weights`` trades.
        residual: the policy is a residual on the frozen supervised policy (`ActorCritic`'s
            ``residual``): PPO starts from the supervised policy, not a flat book.
    """

    hidden: int = 64
    log_std_init: float = -0.5
    forecast_scale: float | None = None
    residual: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ConfigError(f"policy.hidden={self.hidden!r} must be an integer >= 1")
        if not isinstance(self.log_std_init, int | float) or isinstance(self.log_std_init, bool):
            raise ConfigError(f"policy.log_std_init={self.log_std_init!r} must be a number")
        if self.forecast_scale is not None and not self.forecast_scale > 0:
            raise ConfigError(f"policy.forecast_scale={self.forecast_scale!r} must be > 0")
        if not isinstance(self.residual, bool):
            raise ConfigError(f"policy.residual={self.residual!r} must be true or false")


INITIAL = -1  # the epoch number of the policy before the first PPO update


class ValidationSelector(L.Callback):
    """After each training epoch: the policy's greedy rollout over the validation segment,
    scored and logged as ``val/<metric>``; keeps the best epoch's policy weights in memory.

    The policy before the first PPO update (the warm start) is a candidate too, as epoch
    ``INITIAL`` (-1): scored at the start of training, so that selection can keep the
    un-fine-tuned policy when no PPO epoch beats it (a tie keeps the earlier candidate).

    Args:
        segment: the validation segment's (lo, hi) decision bars.
        config: the environment's settings (costs, gross cap, action kind).
        metric: ``sharpe`` or ``return`` (`SegmentRollout.score`).
        periods_per_year: annualisation factor (bars a year).

    Attributes:
        market: the environment's market (whole calendar, on the module's device), set by the
            stage once the environment is built.
    """

    def __init__(self, segment, config: EnvConfig, metric: str, periods_per_year: float):
        self.market, self.segment, self.config = None, segment, config
        self.metric, self.periods_per_year = metric, float(periods_per_year)
        self.best_score: float | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.initial_score: float | None = None
        self.last_epoch: int | None = None

    def _consider(self, pl_module: PPOModule, epoch: int) -> float:
        """Score the module's current policy; keep its weights if it beats the best so far."""
        rollout = segment_rollout(pl_module.policy, self.market, self.segment, self.config)
        score = rollout.score(self.metric, self.periods_per_year)
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_state = {
                k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()
            }
        return score

    def on_train_start(self, trainer: L.Trainer, pl_module: PPOModule) -> None:
        if int(pl_module.updates) > 0:  # resumed mid-stage: not the warm start
            return
        score = self.initial_score = self._consider(pl_module, INITIAL)
        # straight to the loggers at step 0: through pl_module.log it would be averaged into
        # epoch 0's value of the same key, which the checkpoint callback monitors
        for lg in trainer.loggers:
            lg.log_metrics({f"val/{self.metric}": score}, step=0)
        log.info("PPO: the policy before fine-tuning scores val/%s=%.4f", self.metric, score)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: PPOModule) -> None:
        self.last_epoch = trainer.current_epoch
        score = self._consider(pl_module, trainer.current_epoch)
        pl_module.log(f"val/{self.metric}", score, on_step=False, on_epoch=True, prog_bar=True)


@dataclass
class RLStage(Stage):
    """PPO fine-tuning of the run's model (see the module docstring).

    Attributes:
        env: `EnvConfig` keys over the simulator's (``n_envs``, ``episode_len``,
            ``action_kind``, ``seed``; a cost key overrides the simulator's during training
            only; ``execution`` is always the simulator's).
        reward: `RewardConfig` keys (reward shaping; default: net P&L).
        ppo: `PPOSettings` keys.
        policy: `PolicySettings` keys.
        select: validation score that picks the epoch: ``sharpe`` or ``return``.
        signal_step: the forecast step (1..horizon) a forecast head's reference position reads
            (conf: ``${evaluation.signal_step}``, the step the supervised backtest trades);
            None: the last.
        schedule: the environment curriculum, a list of `rl.schedule.Phase` mappings
            (``updates``, ``episode_len``, ``cost_scale``, ``regimes``); empty: off. It shapes
            the training episodes only; validation rollouts keep full costs and the whole
            segment.
        simulator: the run's simulator (conf: ``${simulator}``): the environment's costs and
            fill timing.
        periods_per_year: annualises the validation score (conf: ``${periods_per_year}``);
            None: from the data's bar spacing.
        feedback: `rl.feedback.FeedbackSettings` keys: analyst vetoes and approvals from a
            review store as a penalty in the PPO loss at the train segment's bars; null db or
            zero weights: off.
    """

    env: dict = field(default_factory=dict)
    reward: dict = field(default_factory=dict)
    ppo: dict = field(default_factory=dict)
    policy: dict = field(default_factory=dict)
    select: str = "sharpe"
    signal_step: int | None = None
    schedule: list = field(default_factory=list)
    simulator: object | None = None
    periods_per_year: float | None = None
    feedback: dict = field(default_factory=dict)
    trains_head = True  # its policy is what the run evaluates: it may (and must) be last
    final_only = True  # evaluation trades this stage's policy, so nothing may follow it
    # a resumed run reruns it from its seeded start (same result): its policy, which evaluation
    # trades, lives in this stage's result, not in the run's ForecastModule
    resumable = False

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"curriculum stage {self.name!r}"
        if self.window is not None or self.regimes:
            raise ConfigError(
                f"{where}: window and regimes do not apply to a PPO stage (the environment "
                "reads the run's window over the whole train segment); remove them"
            )
        if self.simulator is None:
            raise ConfigError(f"{where}: simulator is required (conf: simulator: ${{simulator}})")
        if self.select not in SELECT:
            raise ConfigError(f"{where}: select={self.select!r}; valid: {list(SELECT)}")
        env = dict(self.env or {})
        if "execution" in env:
            raise ConfigError(
                f"{where}: env.execution is the run's simulator's (simulator.execution); "
                "remove it from the stage"
            )
        valid = [k for k in EnvConfig.__dataclass_fields__ if k != "execution"]
        unknown = sorted(set(env) - set(valid))
        if unknown:
            raise ConfigError(f"{where}: env: unknown key(s) {unknown}; valid: {valid}")
        try:
            self._env = EnvConfig.from_simulator(self.simulator, **env)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        self._reward = settings(RewardConfig, dict(self.reward or {}), f"{where}: reward")
        self._ppo = settings(PPOSettings, dict(self.ppo or {}), f"{where}: ppo")
        self._policy = settings(PolicySettings, dict(self.policy or {}), f"{where}: policy")
        self._feedback = settings(FeedbackSettings, dict(self.feedback or {}), f"{where}: feedback")
        # validated here; the regime labels are read from the data in check() and run()
        where = f"{where}: schedule"
        self._schedule = EnvSchedule.from_config(self.schedule, where) if self.schedule else None

    def _env_schedule(self, panel) -> EnvSchedule:
        """The stage's `EnvSchedule` with the regime labels of ``panel`` (each phase's allowed
        start bars)."""
        where = f"curriculum stage {self.name!r}: schedule"
        names = self._schedule.labels_needed
        labels = regime_labels(panel, names) if names else None
        return EnvSchedule(self._schedule.phases, labels, where)

    def check(self, module: L.LightningModule, datamodule) -> None:
        super().check(module, datamodule)
        where = f"curriculum stage {self.name!r}"
        if getattr(module, "embedding", None) is not None:
            raise ConfigError(
                f"{where}: the model has a market-state embedding (data.conditioning) whose "
                "per-bar labels the trading environment does not provide; remove it"
            )
        try:  # the episode must fit the train segment (cheap: the market is built once more)
            env = TradingEnv.from_datamodule(datamodule, "train", self._env, self._reward)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        if self._schedule is not None:  # every phase must fit and allow a start bar
            self._env_schedule(datamodule.panel).check(env)
        for segment in ("val", "test"):  # each needs a decision bar for the rollouts
            decision_bars(env.market, getattr(datamodule.segments, segment))
        if self._feedback.active:  # the store must exist before anything trains
            try:
                self._feedback.store().frame(limit=1)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc

    def run(self, module, datamodule, make_trainer, final, callbacks=()) -> StageResult:
        if not final:
            raise ConfigError(f"curriculum stage {self.name!r}: a PPO stage must be the last")
        where = f"curriculum stage {self.name!r}"
        ppy = self.periods_per_year
        ppy = resolve_periods_per_year(None if ppy is None else int(ppy), datamodule.panel.dates)
        overrides = {} if self.epochs is None else {"max_epochs": self.epochs}
        selector = ValidationSelector(datamodule.segments.val, self._env, self.select, ppy)
        # manual optimisation: PPO clips its own gradients (ppo.max_grad_norm); no pruning or
        # diagnostics callbacks: they watch the supervised objective
        trainer = make_trainer(selector, gradient_clip_val=None, **overrides)
        if trainer.world_size > 1:
            raise ConfigError(f"{where}: PPO runs on one device; hardware=ddp is not supported")
        device = trainer.strategy.root_device
        env = TradingEnv.from_datamodule(datamodule, "train", self._env, self._reward, None, device)
        selector.market = env.market  # the whole calendar, on the policy's device
        policy = self.make_policy(module, datamodule)
        schedule = None if self._schedule is None else self._env_schedule(datamodule.panel)
        penalty = build_penalty(
            self._feedback, env, datamodule.panel.dates, datamodule.panel.symbols
        )
        ppo = PPOModule(policy, env, self._ppo, schedule, penalty)
        ckpt = self._retarget_checkpoint(trainer)
        with stage_prefix(trainer.loggers, self.name):
            trainer.fit(ppo)
        best = (getattr(ckpt, "best_model_path", "") or None) if ckpt else None
        handed, epoch = "last", selector.last_epoch
        if self.restore_best and selector.best_state is not None:
            ppo.load_state_dict(selector.best_state)
            handed, epoch = "best", selector.best_epoch
            if epoch == INITIAL:  # ppo-best.ckpt holds the best epoch, not these weights
                best = None
                log.info(
                    "Stage %s: kept the policy before fine-tuning (epoch -1, val/%s=%.4f): "
                    "no PPO epoch beat it",
                    self.name,
                    self.select,
                    selector.best_score,
                )
            else:
                log.info(
                    "Stage %s: restored epoch %d (val/%s=%.4f; before fine-tuning: %s)",
                    self.name,
                    epoch,
                    self.select,
                    selector.best_score,
                    "n/a" if selector.initial_score is None else f"{selector.initial_score:.4f}",
                )
        if ckpt is not None and ckpt.dirpath and trainer.is_global_zero:  # for plusultra-predict
            save_policy(policy, handed, Path(ckpt.dirpath) / f"{self.name}{POLICY_SUFFIX}")
        policy.cpu()
        market, config = env.market, self._env

        def positions(segment: str) -> pd.DataFrame:
            if segment not in ("val", "test"):
                raise ConfigError(f"positions: segment={segment!r}; valid: ['val', 'test']")
            bars = getattr(datamodule.segments, segment)
            rollout = segment_rollout(policy, market, bars, config)
            return positions_frame(rollout, datamodule.panel.dates, datamodule.panel.symbols)

        return StageResult(
            self.name, trainer, best, selector.best_score, handed, self.select, positions, epoch
        )

    def make_policy(self, module: L.LightningModule, datamodule) -> ActorCritic:
        """The actor-critic warm-started from ``module`` with this stage's policy settings,
        its reference reading the forecast step the supervised backtest trades
        (``signal_step``) in return units unless ``policy.forecast_scale`` is given."""
        scales = [float(x) for x in datamodule.norm.target_scale]  # per forecast step
        step = len(scales) if self.signal_step is None else int(self.signal_step)
        if not 1 <= step <= len(scales):
            raise ConfigError(
                f"curriculum stage {self.name!r}: signal_step={self.signal_step} but the model "
                f"forecasts {len(scales)} step(s); choose 1..{len(scales)}"
            )
        given = self._policy.forecast_scale
        return ActorCritic.from_forecast(
            module,
            self._env.action_kind,
            hidden=self._policy.hidden,
            log_std_init=self._policy.log_std_init,
            forecast_scale=scales[step - 1] if given is None else given,
            residual=self._policy.residual,
            signal_index=step - 1,
        )

    def _retarget_checkpoint(self, trainer: L.Trainer) -> ModelCheckpoint | None:
        """Point the run's checkpoint callback at this stage's validation score, under the
        stage's file names (``<stage>-best.ckpt``, ``<stage>-last.ckpt``)."""
        for i, cb in enumerate(trainer.callbacks):
            if isinstance(cb, ModelCheckpoint):
                new = ModelCheckpoint(
                    dirpath=cb.dirpath,
                    filename=f"{self.name}-best",
                    monitor=f"val/{self.select}",
                    mode="max",
                    save_top_k=1,
                    save_last=cb.save_last,
                )
                new.CHECKPOINT_NAME_LAST = f"{self.name}-last"
                trainer.callbacks[i] = new
                return new
        return None
