"""The one entrypoint: `plusultra` (= `python -m plusultra.run`).

Wiring only: seed, instantiate every config group (logging each target), run the curriculum,
evaluate on the validation and test segments, write the run's outputs (metrics.json last),
return the validation metric a sweeper optimises. The run dir is unique and claimed by
`plusultra.lifecycle`; the catalogue row is written by the Hydra job-end callback
(conf/hydra/default.yaml). Under DDP (`hardware=ddp`) only rank 0 writes, and it evaluates
alone after the workers have trained and exited (`plusultra.distributed`).
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import warnings
from functools import partial
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from plusultra.catalogue.objective import (
    check_sweeper_directions,
    objective_directions,
    objective_metrics,
    objective_value,
)
from plusultra.cli.common import fail, output_dir_from_argv
from plusultra.cli.overrides import check_appended
from plusultra.data.datasets.calendar import resolve_periods_per_year
from plusultra.distributed import (
    check_sharding,
    finish_training,
    is_rank_zero,
    prepare,
    single_device,
    stop_workers,
)
from plusultra.evaluation.drift_run import datamodule_drift, write_drift
from plusultra.evaluation.report.render import write_reports
from plusultra.evaluation.report.summary import flat_metrics, summary_table, write_metrics
from plusultra.execution import describe
from plusultra.io import write_parquet_atomic, write_text_atomic
from plusultra.lifecycle import (
    Interrupted,
    RunDirTaken,
    check_no_ddp_in_multirun,
    handle_signals,
)
from plusultra.models.cross_asset import forecast_module
from plusultra.models.memory import check_fits
from plusultra.training.cross_asset import check_cross_asset, check_cross_sharding
from plusultra.training.device import set_matmul_precision
from plusultra.training.evaluate import check_evaluation, evaluate
from plusultra.training.hparams import hyperparameters, log_summary
from plusultra.training.pretrain import load_backbone
from plusultra.training.pruning import ValidationBacktest, pruning_callbacks
from plusultra.training.resume_config import flat_config
from plusultra.training.resume_plan import Resumer

log = logging.getLogger("plusultra")
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
# Lightning 2.6 on torch 2.13 warns about its own use of a deprecated torch API on every step.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def build(node: DictConfig, **kwargs):
    """Instantiate one config node into plain Python arguments, logging its target."""
    log.info("Instantiating <%s>", node._target_)
    return instantiate(node, _convert_="all", **kwargs)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def train(cfg: DictConfig) -> float | list[float] | None:
    """Train, evaluate and record one run; returns `metrics[cfg.optimized_metric]`, or one value
    per metric when it is a list (val_* metrics: selection never reads the test segment); None
    on a DDP worker rank, which only trains."""
    hc = HydraConfig.get()
    check_appended(cfg, hc.overrides.task, hc.runtime.choices)  # refuse +key=value nothing reads
    # fail before training: val_* only, one direction per metric, agreeing with an Optuna sweeper
    directions = objective_directions(cfg.optimized_metric, cfg.optimized_direction)
    if hc.mode == RunMode.MULTIRUN:
        check_sweeper_directions(directions, OmegaConf.select(hc, "sweeper.direction"))
    check_no_ddp_in_multirun(cfg.trainer, hc.mode == RunMode.MULTIRUN)  # also a swept devices=
    run_dir = Path(hc.runtime.output_dir)
    L.seed_everything(cfg.seed, workers=True)
    set_matmul_precision(cfg.matmul_precision)  # TF32 in CUDA matmuls and cuDNN, or not
    writer = is_rank_zero()  # DDP: only rank 0 writes (plusultra.distributed)
    if writer:
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    config = flat_config(cfg)  # what a resume compares (training.resume_config)

    datamodule = build(cfg.data, features=build(cfg.features))
    datamodule.setup()
    cfg.periods_per_year = resolve_periods_per_year(cfg.periods_per_year, datamodule.panel.dates)
    if writer:
        datamodule.save_artifacts(run_dir)
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))  # with it
    classes = datamodule.condition_classes  # market-state labels, if data.conditioning is set
    embedding = build(cfg.market_state, n_classes=classes) if classes else None
    n_inputs = datamodule.n_features + (embedding.dim if embedding else 0)
    cross = build(cfg.cross_asset)  # attention across symbols (off: the pooled ForecastModule)
    model = forecast_module(
        cross,
        embedding=embedding,
        backbone=build(cfg.backbone, n_features=n_inputs),
        head=build(cfg.head),
        loss=build(cfg.loss),
        optim=build(cfg.optim),
        compile=cfg.compile,
    )
    log.info(  # refuse, with the numbers, a config whose estimated peak memory exceeds the device
        check_fits(
            model.backbone, model.head, cfg.window, n_inputs, datamodule.batch_samples,
            cfg.trainer.precision, cfg.trainer.accelerator, cfg.trainer.devices,
            OmegaConf.select(cfg, "hardware.memory_gb"),
        )
    )  # fmt: skip
    if cfg.init_from is not None:  # warm start: another run's saved backbone (logged)
        load_backbone(model.backbone, to_absolute_path(cfg.init_from))
    logger = build(cfg.logger)
    backtest, simulator = build(cfg.evaluation), build(cfg.simulator)

    def make_trainer(*extra: L.Callback, **overrides) -> L.Trainer:
        callbacks = [build(c) for c in cfg.callbacks.values()] + list(extra)
        trainer = build(cfg.trainer, **({"logger": logger, "callbacks": callbacks} | overrides))
        trainer = check_cross_sharding(trainer, datamodule.cross_section)
        return prepare(check_sharding(trainer, datamodule.block))  # plusultra.distributed

    in_trial = cfg.optuna.trial is not None  # a job of an Optuna sweep: its storage and pruner
    sweeper = OmegaConf.to_container(hc.sweeper, resolve=True) if in_trial else {}
    pruning = pruning_callbacks(  # [] unless a pruned Optuna sweep launched this job
        cfg.optuna.study, cfg.optuna.trial, sweeper, cfg.optimized_metric, run_dir,
        hc.runtime.cwd, ValidationBacktest(backtest, simulator),
    )  # fmt: skip
    walk = build(cfg.walk_forward)
    initial = copy.deepcopy(model.state_dict()) if walk.refits and not walk.warm_start else None
    diagnostics = build(cfg.diagnostics)  # training diagnostics callbacks (conf/diagnostics)
    # pruning and diagnostics watch the forecasting (supervised) stages, not pretraining
    supervised = [*pruning, *diagnostics.callbacks]
    ckpt_path = None if cfg.ckpt_path is None else to_absolute_path(cfg.ckpt_path)
    resume = Resumer(cfg.seed, config, run_dir / "checkpoints", cfg.resume, ckpt_path)
    curriculum = build(cfg.curriculum)
    check_cross_asset(cross.enabled, datamodule.cross_section, curriculum)  # before training
    check_evaluation(curriculum, walk)  # e.g. refits of a PPO stage's policy: refused
    stages = curriculum.run(model, datamodule, make_trainer, supervised, resume)
    last, evaluator = stages[-1].trainer, make_trainer
    if last.world_size > 1:  # DDP: workers stop here; rank 0 evaluates alone, on one device
        if not finish_training(s.trainer for s in stages if s.trainer is not None):
            return None
        solo = single_device(last)  # rank 0's own device
        last, evaluator = make_trainer(**solo), partial(make_trainer, **solo)
    resume.before_evaluation()  # seeded: a resumed run evaluates like an uninterrupted one
    evaluated = evaluate(
        model,
        datamodule,
        last,
        evaluator,
        walk,
        backtest,
        simulator,
        initial,
        run_dir / "checkpoints",
        stages[-1].positions,  # a PPO stage's policy positions, traded instead of forecasts
    )
    val, test = evaluated.val_metrics, evaluated.walk.test_metrics
    drift = datamodule_drift(datamodule, cfg.seed)  # train reference; val, test against it

    extra = {
        "n_params": model.n_params,
        "periods_per_year": cfg.periods_per_year,  # the reports annualise with the same number
        "walk_forward_blocks": len(evaluated.walk.blocks),
        **datamodule.sizes(),
        **{
            f"{s.name}_best_val_{s.metric}": s.best_score
            for s in stages
            if s.best_score is not None
        },
        **{f"{s.name}_best_epoch": s.best_epoch for s in stages if s.best_epoch is not None},
        **diagnostics.summary(),  # diag_*: max gradient norm, loss spikes, warnings ...
        **drift.metrics,  # val_max_psi, val_drift_features, ... (evaluation.drift_run)
    }
    # everything the module logged on val/test: naive loss, calibration error, MoE balance ...
    extra |= {k.replace("/", "_"): float(v) for k, v in {**val, **test}.items()}
    metrics = flat_metrics(val["val/loss"], test["test/loss"], evaluated.test, extra, evaluated.val)
    objective = objective_value(metrics, cfg.optimized_metric)  # what a sweeper optimises
    write_parquet_atomic(run_dir / "predictions.parquet", evaluated.predictions)
    write_parquet_atomic(run_dir / "backtest.parquet", evaluated.test.daily, index=True)
    write_parquet_atomic(run_dir / "val_backtest.parquet", evaluated.val.daily, index=True)
    write_parquet_atomic(run_dir / "walk_forward.parquet", evaluated.walk.folds)
    write_drift(run_dir, drift)  # drift_reference.parquet, drift.parquet
    if (events := evaluated.guardrail_events()) is not None:  # guardrails on: every intervention
        write_parquet_atomic(run_dir / "guardrails.parquet", events)
    write_reports(run_dir, metrics=metrics)  # report.html/.md (plusultra-report redoes them)
    params = hyperparameters(cfg, hc.runtime.choices, hc.overrides.task)  # the HParams tab
    log_summary(logger, params, metrics, objective_metrics(cfg.optimized_metric))  # summary/*
    logger.finalize("success")
    write_metrics(run_dir, metrics)  # last: its presence marks a complete run

    if cfg.print_summary:
        print(f"\n{summary_table(metrics, loss=hc.runtime.choices.loss)}\n")
        print(f"execution:   {describe(metrics['execution'])} (decisions at each bar's close)")
        print(f"run dir:     {run_dir}")
        print(f"tensorboard: tensorboard --logdir {run_dir / 'tensorboard'}")
        print(f"report:      {run_dir / 'report.html'} (and report.md)")
        print(f'catalogue:   {cfg.paths.catalogue_dir}  (query: plusultra-catalogue "SQL")')
    return objective


def main() -> None:
    """Console script: Hydra as usual, but bad input ends in one clear message and exit code 2,
    and SIGINT / SIGTERM in `plusultra: interrupted (...)` and exit code 130 / 143.

    Errors raised before a job starts (an unknown group option or key) are recorded in the
    catalogue here; errors and interruptions inside a job are recorded by the catalogue callback.
    """
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    worker = not is_rank_zero()  # a DDP rank Lightning relaunched: writes nothing, no log file
    if worker:
        sys.argv.append("hydra/job_logging=disabled")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let exceptions reach us instead of Hydra's printer
    with handle_signals() as signals:  # a second signal cannot cut the recording short
        try:
            train()
            if signals.received is not None:  # swallowed somewhere on the way: still report it
                raise Interrupted(signals.received)
        except (Exception, RunDirTaken) as exc:  # noqa: BLE001 - every failure is reported
            exc = exc.error if isinstance(exc, RunDirTaken) else exc
            stop_workers()  # DDP: a failing rank 0 takes its workers down
            if full_error and not isinstance(exc, Interrupted):
                raise exc
            catalogue = None if worker else Path(output_dir_from_argv(sys.argv[1:])) / "catalogue"
            fail("plusultra", exc, catalogue_dir=catalogue, overrides=sys.argv[1:])


if __name__ == "__main__":
    main()
