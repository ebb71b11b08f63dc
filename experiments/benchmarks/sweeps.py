"""Sweeps: per-trial overhead, the catalogue at 10,000 rows, and a 4-trial sweep end to end.

    .venv/bin/python -m experiments.benchmarks.sweeps

1. **Per-trial overhead** (in this process, medians of ``REPEATS``): what a sweep adds to each
   trial besides training and evaluating it: Optuna's ask and tell on a SQLite study, Hydra's
   compose of the root config with the trial's overrides, instantiating every object
   ``plusultra.run`` builds (features, data module with the synthetic data set up, backbone,
   head, loss, model, logger, trainer, callbacks), and writing the catalogue row. The reference
   is one epoch of ``trainer.fit`` of the same model on the same data.
2. **Catalogue at 10,000 rows**: 10,000 seeded catalogue rows written one file per run as jobs
   write them; ``plusultra-catalogue --query leaderboard`` (connect, the ``sweeps`` table, the
   saved query) on them as written (the reference) and after ``plusultra-catalogue --compact``.
3. **A 4-trial sweep**: ``plusultra -m hydra/sweeper=plusultra_optuna`` with 4 trials of a
   small model on the synthetic data, against the same 4 configurations run as 4 separate
   ``plusultra`` commands (the reference), each a fresh subprocess.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import optuna
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from experiments.benchmarks._report import machine, write_section
from plusultra.catalogue.compact import compact
from plusultra.catalogue.query import connect, saved_query
from plusultra.catalogue.rows import build_row, flatten_config, new_run_id, write_row
from plusultra.models.module import ForecastModule
from plusultra.run import CONF_DIR, build

ROOT = Path(__file__).resolve().parents[2]
REPEATS = 5
N_ROWS = 10_000
SMALL = [  # a trial of the 4-trial sweep: a small model, 1 short epoch on the synthetic data
    "d_model=32",
    "depth=2",
    "window=32",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=40",
    "evaluation.bootstrap=0",
    "trainer.enable_progress_bar=false",
    "print_summary=false",
]
SPACE = ["optim.lr=1e-3,3e-3", "horizon=1,5"]  # 4 trials: the sweep draws from the same grid


def median_time(fn, repeats: int = REPEATS) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def overhead(tmp: Path) -> dict[str, float]:
    """Seconds per trial of each overhead phase, and one epoch of training (the reference)."""
    overrides = [*SMALL, "optim.lr=1e-3", "horizon=5"]
    study = optuna.create_study(storage=f"sqlite:///{tmp / 'bench.db'}", study_name="bench")

    def ask_tell() -> None:
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study.tell(trial, 0.5)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        t_compose = median_time(lambda: compose("config", overrides=overrides))
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
        cfg.hydra.runtime.output_dir = str(tmp / "run")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as in a job
    objects = {}

    def instantiate() -> None:
        dm = build(cfg.data, features=build(cfg.features))
        dm.setup()
        objects["model"] = ForecastModule(
            embedding=None,
            backbone=build(cfg.backbone, n_features=dm.n_features),
            head=build(cfg.head),
            loss=build(cfg.loss),
            optim=build(cfg.optim),
            compile=False,
        )
        logger = build(cfg.logger)
        callbacks = [build(c) for c in cfg.callbacks.values()]
        objects["dm"] = dm
        objects["trainer"] = lambda: build(cfg.trainer, logger=logger, callbacks=callbacks)

    t_instantiate = median_time(instantiate)
    plain = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    t_row = median_time(
        lambda: write_row(
            tmp / "catalogue",
            build_row(
                run_id=new_run_id(),
                run_dir=str(tmp),
                status="completed",
                error=None,
                started_at=datetime.now(UTC),
                finished_at=datetime.now(UTC),
                git_rev="bench",
                overrides=overrides,
                choices={"backbone": "hybrid", "loss": "mse", "head": "regression"},
                config=plain,
                metrics={"val_loss": 0.1, "val_sharpe": 1.0, "test_sharpe": 1.0},
                multirun=True,
                job_num=0,
                study="bench",
            ),
        )
    )
    t_ask_tell = median_time(ask_tell)
    trainer = objects["trainer"]()
    t0 = time.perf_counter()
    trainer.fit(objects["model"], datamodule=objects["dm"])
    t_epoch = time.perf_counter() - t0
    return {
        "ask_tell": t_ask_tell,
        "compose": t_compose,
        "instantiate": t_instantiate,
        "catalogue_row": t_row,
        "n_columns": len(flatten_config(plain)),
        "epoch": t_epoch,
    }


def fake_row(i: int, now: datetime, rng: random.Random) -> dict:
    """Catalogue row ``i`` of 100-trial studies, with the columns the saved queries read."""
    return build_row(
        run_id=f"20260101T000000Z-{i:06d}",
        run_dir=f"/runs/{i}",
        status="completed" if rng.random() > 0.05 else "failed",
        error=None,
        started_at=now + timedelta(seconds=i),
        finished_at=now + timedelta(seconds=i + 30),
        git_rev="bench",
        overrides=[f"seed={i % 3}"],
        choices={
            "backbone": rng.choice(["hybrid", "tcn", "ssm", "moe"]),
            "head": "regression",
            "loss": "mse",
        },
        config={
            "seed": i % 3,
            "depth": rng.choice([2, 4, 8]),
            "d_model": rng.choice([32, 64, 128]),
            "window": 64,
            "horizon": 5,
            "loss": {"_target_": "plusultra.models.losses.MSELoss"},
            "optim": {"lr": 10 ** rng.uniform(-4, -2), "weight_decay": 0.01},
            "optimized_metric": "val_sharpe",
            "optimized_direction": "maximize",
            "optuna": {"study": f"study-{i // 100}", "trial": i % 100},
        },
        metrics={
            **{f"{s}_sharpe": rng.gauss(0.5, 1) for s in ("val", "test")},
            **{f"{s}_loss": rng.random() for s in ("val", "test")},
            **{f"{s}_max_drawdown": -rng.random() / 3 for s in ("val", "test")},
            "test_n_periods": 750,
            "periods_per_year": 252,
            "n_params": 10_000,
        },
        multirun=True,
        job_num=i % 100,
        study=f"study-{i // 100}",
    )


def catalogue(tmp: Path) -> dict[str, float]:
    """Seconds of the leaderboard query on 10,000 one-row files, then after compaction."""
    directory = tmp / "catalogue10k"
    rng, now = random.Random(0), datetime(2026, 1, 1, tzinfo=UTC)
    t0 = time.perf_counter()
    for i in range(N_ROWS):
        write_row(directory, fake_row(i, now, rng))
    t_write = time.perf_counter() - t0
    sql = saved_query("leaderboard")

    def leaderboard() -> int:
        con = connect(directory)
        try:
            return len(con.sql(sql).df())
        finally:
            con.close()

    n = leaderboard()
    t_loose = median_time(leaderboard, repeats=3)
    t0 = time.perf_counter()
    compact(directory)
    t_compact = time.perf_counter() - t0
    assert leaderboard() == n, "compaction changed the rows"
    t_compacted = median_time(leaderboard)
    return {
        "write": t_write / N_ROWS,
        "loose": t_loose,
        "compact": t_compact,
        "compacted": t_compacted,
        "rows": n,
    }


def cli(args: list[str], out: Path) -> float:
    """Wall seconds of ``python -m plusultra.run ARGS`` with outputs under ``out``."""
    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(out)}
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "plusultra.run", *args],
        env=env,
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=3600,
    )
    return time.perf_counter() - t0


def sweep(tmp: Path) -> dict[str, float]:
    """Wall seconds of a 4-trial Optuna sweep and of 4 separate runs of its configurations."""
    grid = [[f"optim.lr={lr}", f"horizon={h}"] for lr in ("1e-3", "3e-3") for h in (1, 5)]
    t_single = sum(cli([*SMALL, *point], tmp / "single") for point in grid)
    t_sweep = cli(
        [
            "-m",
            "hydra/sweeper=plusultra_optuna",
            "hydra.sweeper.n_trials=4",
            "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.sampler={_target_:optuna.samplers.BruteForceSampler}",
            *SMALL,
            *SPACE,
        ],
        tmp / "sweep",
    )
    con = connect(tmp / "sweep" / "catalogue")
    try:
        done = con.execute("SELECT count(*) FROM runs WHERE status = 'completed'").fetchone()[0]
    finally:
        con.close()
    assert done == 4, f"the sweep completed {done} trials, not 4"
    return {"sweep": t_sweep, "single": t_single}


LOAD = f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    """Measure, print and write the section of docs/benchmarks.md."""
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        o = overhead(tmp)
        c = catalogue(tmp)
        s = sweep(tmp)
    total = o["ask_tell"] + o["compose"] + o["instantiate"] + o["catalogue_row"]
    inst, row = f"{o['instantiate']:.3f}", f"{o['catalogue_row']:.3f}"
    ep = f"{o['epoch']:.2f}"
    md = f"""## Sweeps: per-trial overhead, a 10,000-row catalogue, a 4-trial sweep

`python -m experiments.benchmarks.sweeps` ({machine()}; load average {LOAD} when it started:
other work shared the cores, so absolute seconds are upper bounds and the ratios are the figures).

**Per-trial overhead** (medians of {REPEATS}; a `d_model=32 depth=2 window=32` model on the
default synthetic data, 40 training batches an epoch): what a sweep adds to each trial besides
training and evaluating it.

| phase | seconds per trial |
|---|---|
| Optuna ask + tell (SQLite study) | {o["ask_tell"]:.3f} |
| Hydra compose of the root config with the trial's overrides | {o["compose"]:.3f} |
| instantiate features, data module (setup included), model, logger, trainer, callbacks | {inst} |
| catalogue row ({o["n_columns"]} config columns) built and written atomically | {row} |
| **total** (target: ≤ 2 s) | **{total:.2f}** |
| reference: one `trainer.fit` epoch (40 training batches + the full validation pass) | {ep} |

The overhead is **{total / o["epoch"]:.3f}x** that epoch.

**Catalogue at {N_ROWS:,} rows** (`plusultra-catalogue --query leaderboard`: connect, the
`sweeps` table, the saved query; seeded rows of 100-trial studies, written one file per run
as jobs write them, {c["write"] * 1e3:.1f} ms per row):

| layout | seconds |
|---|---|
| {N_ROWS:,} one-row files (reference; median of 3) | {c["loose"]:.2f} |
| after `plusultra-catalogue --compact` (one file; target: ≤ 1 s) | **{c["compacted"]:.2f}** |
| the compaction itself (once) | {c["compact"]:.2f} |

Compacted, the query takes **{c["compacted"] / c["loose"]:.3f}x** the time on one-row files
(**{c["loose"] / c["compacted"]:.0f}x faster**), with the same {c["rows"]:,} rows. Jobs compact
the catalogue by themselves once 256 row files pile up (docs/catalogue.md).

**A 4-trial sweep** (`plusultra -m hydra/sweeper=plusultra_optuna hydra.sweeper.n_trials=4`
over `optim.lr` x `horizon` with the brute-force sampler, each trial one 40-batch epoch of the
model above on the synthetic data, then its validation and test backtests):
**{s["sweep"]:.0f} s**, against {s["single"]:.0f} s for the same 4 configurations run as 4
separate `plusultra` commands (the reference): **{s["sweep"] / s["single"]:.2f}x**.
"""
    print(md)
    write_section("sweeps", md)


if __name__ == "__main__":
    main()
