"""Issue 15's results recipe: every run of docs/results.md, into one output dir and catalogue.

Parts, told apart in the catalogue by ``sweep_name = results/<part>`` (docs/results.md,
"Reproducing", explains each and its sizes):

- ``grid``: six families x 2 depths x 2 horizons x 3 seeds on ``data=sp500_stocks``,
  ``features=full`` (``conf/experiment/results.yaml``);
- ``alpha158``: the best family at its best (depth, horizon) on ``features=alpha158``;
- ``cross_asset``: the same with ``cross_asset.enabled=true``;
- ``rl``: the same fine-tuned with PPO (``curriculum=rl``), beside a supervised reference
  traded the same way (``evaluation=weights``, which ``curriculum=rl`` selects);
- ``timing``: the six families on ``data=sp500`` (S&P 500 and NASDAQ), each index traded by the
  sign of its forecast;
- ``structure``: dilation and temporal scale: tcn's ``backbone.dilations`` and multiscale's
  ``backbone.scales`` at values other than their defaults (the defaults are the grid's runs).

"Best" is the saved query ``experiments/queries/results_best_family.sql`` over the grid's
completed runs: the highest mean validation Sharpe over seeds (tie-break: validation IC); test
columns are never read. Every run goes through the ``plusultra`` CLI as a Hydra multirun; a job
with a completed catalogue row of the same overrides is not started again, so a killed recipe
resumes where it stopped (:mod:`experiments.results.plan`).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments.results.plan import FAMILIES, Grid, Job, batches, finished, multirun_overrides
from experiments.results.plan import pending as pending_jobs

REPO = Path(__file__).resolve().parents[2]
QUERY = "results_best_family"
BASELINES = "buyhold,equal_weight,momentum,mean_reversion,ridge"
RIDGE_ALPHAS = "[0.1,1,10,100,1000]"  # ridge penalties tried; the best validation IC is kept


@dataclass(frozen=True)
class Best:
    """The family chosen on validation, at its best depth and horizon."""

    family: str
    depth: int
    horizon: int


@dataclass(frozen=True)
class Sizes:
    """What one variant of the recipe runs (``FULL`` or ``SMOKE``)."""

    experiment: str  # conf/experiment/<name>.yaml: the shared settings of every run
    families: tuple[str, ...]
    depths: tuple[int, ...]
    horizons: tuple[int, ...]
    seeds: tuple[int, ...]
    timing_families: tuple[str, ...]
    timing_depth: int
    timing_horizon: int
    ppo: tuple[str, ...]  # the PPO stage's budget (curriculum=rl)
    parts: tuple[str, ...]  # the parts run, in order (grid first: the others need its best)
    # the structure part: (family, backbone key, values other than its default), at one depth
    # and horizon; the default's runs are the grid's at that depth and horizon
    structure: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    structure_depth: int = 2
    structure_horizon: int = 5


def ppo_budget(epochs: int, updates: int, envs: int, steps: int) -> tuple[str, ...]:
    """Overrides of the PPO stage: epochs x updates x (envs episodes x steps) transitions."""
    return (
        f"curriculum.stages.1.epochs={epochs}",  # PPO epochs, the best on validation kept
        f"curriculum.stages.1.ppo.updates_per_epoch={updates}",
        f"curriculum.stages.1.env.n_envs={envs}",  # episodes stepped in parallel
        f"curriculum.stages.1.ppo.n_steps={steps}",  # rollout length per env and update
        "curriculum.stages.1.ppo.update_epochs=2",  # passes over each rollout
        "curriculum.stages.1.ppo.seed=${seed}",  # episode resets, action sampling: the run seed
        "curriculum.stages.1.env.seed=${seed}",  # episode start bars: the run's seed
    )


FULL = Sizes(
    experiment="results",
    families=FAMILIES,
    depths=(1, 2),
    horizons=(1, 5),
    seeds=(0, 1, 2),
    timing_families=FAMILIES,
    timing_depth=2,
    timing_horizon=5,
    ppo=ppo_budget(epochs=2, updates=5, envs=16, steps=32),
    parts=("grid", "alpha158", "cross_asset", "rl", "timing", "structure"),
    # tcn default [1,2,4,8] cycled over 2 blocks = 1, 2: a 13-bar receptive field of the 64-bar
    # window; [4,8]: 49 bars; [8,16]: 97 (the whole window). multiscale default [1,5,21]: one
    # scale only, or a fourth, quarterly one (63 <= window)
    structure=(
        ("tcn", "dilations", ("[4,8]", "[8,16]")),
        ("multiscale", "scales", ("[1]", "[1,5,21,63]")),
    ),
    structure_depth=2,
    structure_horizon=5,
)
SMOKE = Sizes(
    experiment="results_smoke",
    families=("hybrid", "tcn"),
    depths=(1,),
    horizons=(2,),
    seeds=(0,),
    timing_families=("tcn",),
    timing_depth=1,
    timing_horizon=2,
    ppo=ppo_budget(epochs=1, updates=2, envs=4, steps=16),
    parts=("grid", "alpha158", "cross_asset", "rl", "timing", "structure"),
    structure=(("tcn", "dilations", ("[4,8]",)),),
    structure_depth=1,
    structure_horizon=2,
)


def evaluation_overrides(default_yaml: Path = REPO / "conf/evaluation/default.yaml") -> list[str]:
    """The LightGBM baseline and the ridge penalty grid, where this checkout's evaluation has them.

    ``evaluation.lightgbm`` and ``evaluation.ridge_alphas`` arrive with the LightGBM baseline;
    without them in ``conf/evaluation/default.yaml`` the runs keep the default baselines.
    """
    keys = yaml.safe_load(default_yaml.read_text()) or {}
    out = []
    if "lightgbm" in keys:
        out.append(f"evaluation.baselines=[{BASELINES},lightgbm]")
    if "ridge_alphas" in keys:
        out.append(f"evaluation.ridge_alphas={RIDGE_ALPHAS}")
    return out


def grid(sizes: Sizes, evaluation: list[str]) -> Grid:
    """The model-family grid (``results/grid``)."""
    return Grid("grid", sizes.families, sizes.depths, sizes.horizons, sizes.seeds, evaluation)


def structure_grids(sizes: Sizes, evaluation: list[str]) -> list[Grid]:
    """The structure part: one grid (of seeds) per family and value of its structural key."""
    return [
        Grid(
            "structure",
            (family,),
            (sizes.structure_depth,),
            (sizes.structure_horizon,),
            sizes.seeds,
            [f"backbone.{key}={value}", *evaluation],
        )
        for family, key, values in sizes.structure
        for value in values
    ]


def part_grid(part: str, sizes: Sizes, evaluation: list[str], best: Best | None) -> Grid:
    """The sweep of one part; ``best`` is required by alpha158, cross_asset and rl."""
    if part == "grid":
        return grid(sizes, evaluation)
    if part == "timing":
        fixed = ["data=sp500", "evaluation.position_method=sign", *evaluation]
        return Grid(
            part,
            sizes.timing_families,
            (sizes.timing_depth,),
            (sizes.timing_horizon,),
            sizes.seeds,
            fixed,
        )
    if best is None:
        raise ValueError(f"part {part!r} needs the grid's best family")
    fixed = {
        "alpha158": ["features=alpha158", *evaluation],
        "cross_asset": ["cross_asset.enabled=true", *evaluation],
        "rl": ["curriculum=rl", *sizes.ppo, *evaluation],
    }[part]
    return Grid(part, (best.family,), (best.depth,), (best.horizon,), sizes.seeds, fixed)


def rl_reference(sizes: Sizes, evaluation: list[str], best: Best) -> Grid:
    """The rl part's supervised arm, traded as curriculum=rl trades (evaluation=weights)."""
    fixed = ["curriculum=supervised", "evaluation=weights", *evaluation]
    return Grid("rl", (best.family,), (best.depth,), (best.horizon,), sizes.seeds, fixed)


def part_jobs(part: str, sizes: Sizes, evaluation: list[str], best: Best | None) -> list[Job]:
    """Every job of one part."""
    if part == "structure":
        return [j for g in structure_grids(sizes, evaluation) for j in g.jobs(sizes.experiment)]
    jobs = part_grid(part, sizes, evaluation, best).jobs(sizes.experiment)
    if part == "rl":
        jobs = rl_reference(sizes, evaluation, best).jobs(sizes.experiment) + jobs
    return jobs


def best_family(catalogue: Path) -> Best | None:
    """The saved query over the grid's completed runs (validation only); None without any."""
    from plusultra.catalogue.query import catalogue_files, connect, saved_query

    if not catalogue.is_dir() or not catalogue_files(catalogue):
        return None
    con = connect(catalogue)
    columns = {r[0] for r in con.execute("DESCRIBE runs").fetchall()}
    if not {"sweep_name", "val_sharpe", "val_ic"} <= columns:
        return None
    rows = con.execute(saved_query(QUERY)).fetchall()
    if not rows:
        return None
    family, depth, horizon = rows[0][:3]
    return Best(str(family), int(depth), int(horizon))


def launch(
    batch: list[Job], out: Path, log: Path, jobs: int, threads: int | None
) -> tuple[float, float]:
    """One `plusultra -m` process running ``batch`` into ``out``'s catalogue.

    Returns:
        Wall seconds and CPU seconds (user + system, of the process and its children).
    """
    args = [sys.executable, "-m", "plusultra.run", "-m", *multirun_overrides(batch)]
    if jobs > 1:  # joblib workers, each with cpu_count // jobs threads
        args += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}"]
    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(out)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    if threads:  # fixed torch/BLAS threads: the same numbers on any machine's core count
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log.open("w") as fh:
        fh.write(" ".join(args) + "\n")
        fh.flush()
        done = subprocess.run(args, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"runs failed (exit {done.returncode}); log {log}:\n{tail}")
    return wall, cpu_s


def run_part(
    part: str,
    sizes: Sizes,
    evaluation: list[str],
    best: Best | None,
    out: Path,
    jobs: int,
    threads: int | None,
) -> None:
    """Start the part's jobs that have no completed row yet, batched into multiruns."""
    todo = pending_jobs(part_jobs(part, sizes, evaluation, best), finished(out / "catalogue"))
    total = len(part_jobs(part, sizes, evaluation, best))
    print(f"[{part}] {total - len(todo)} of {total} runs done; starting {len(todo)}", flush=True)
    for i, batch in enumerate(batches(todo)):
        log = out / "logs" / f"{part}-{time.strftime('%Y%m%d-%H%M%S')}-{i}.log"
        wall, cpu = launch(batch, out, log, jobs, threads)
        line = {"part": part, "runs": len(batch), "wall_s": round(wall, 1), "cpu_s": round(cpu)}
        print(json.dumps(line | {"overrides": multirun_overrides(batch)}), flush=True)


def extends(old: dict, new: dict) -> bool:
    """Whether the recipe settings ``new`` keep every run made under ``old``.

    True when they are equal, or when ``new`` only adds parts: the same evaluation overrides and
    experiment files, every size ``old`` records unchanged, and ``old``'s parts among ``new``'s
    (a size key ``old`` lacks configures an added part only).
    """
    if old == new:
        return True
    if old.get("evaluation") != new.get("evaluation") or old.get("experiment") != new.get(
        "experiment"
    ):
        return False
    was, now = old.get("sizes", {}), new.get("sizes", {})
    same = all(now.get(k) == v for k, v in was.items() if k != "parts")
    return same and set(was.get("parts", [])) <= set(now.get("parts", []))


def check_settings(out: Path, sizes: Sizes, evaluation: list[str]) -> None:
    """Refuse an ``out`` holding runs of other settings (finished runs are reused from it)."""
    conf = REPO / "conf" / "experiment"
    names = ["results.yaml"] + (
        [f"{sizes.experiment}.yaml"] if sizes.experiment != "results" else []
    )
    settings = {
        "sizes": dict(vars(sizes)),
        "evaluation": evaluation,
        "experiment": {n: (conf / n).read_text() for n in names},
    }
    settings = json.loads(json.dumps(settings))  # as the stamp reads back: tuples are lists
    stamp = out / "recipe.json"
    if stamp.exists() and not extends(json.loads(stamp.read_text()), settings):
        raise SystemExit(
            f"{out} holds runs of other recipe settings ({stamp}: sizes, evaluation overrides or "
            "conf/experiment files changed, not only parts added); use another --out, or delete "
            "it to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings, indent=1))


def run_recipe(
    sizes: Sizes, out: Path, run: bool = True, jobs: int = 1, threads: int | None = None
) -> Best | None:
    """Run (or, with ``run=False``, only look up) every part into ``out``; the best family."""
    evaluation = evaluation_overrides()
    if run:
        check_settings(out, sizes, evaluation)
    best = None
    for part in sizes.parts:
        if part not in ("grid", "timing", "structure") and best is None:
            best = best_family(out / "catalogue")
            if best is None:
                raise SystemExit(f"no completed results/grid run in {out / 'catalogue'}")
            print(f"best family on validation: {best}", flush=True)
        if run:
            run_part(part, sizes, evaluation, best, out, jobs, threads)
    return best if best is not None else best_family(out / "catalogue")
