"""Supervised against RL fine-tuning: validation and test Sharpe, drawdown and turnover.

For each data set and seed, two arms on the same small model, segments and simulator
(``simulator=realistic``, so costs matter) and the same evaluation (``evaluation=weights``: the
model's output is traded as the weights, capped to the gross limit, which is what
``curriculum=rl`` selects; the supervised arm is given it too so the two are traded alike):

- ``supervised``: ``curriculum=supervised`` for ``--epochs`` epochs (best validation loss kept);
- ``rl``: ``curriculum=rl``: the same supervised stage (same seed, same epochs), then
  ``--ppo-epochs`` PPO epochs of ``--ppo-updates`` updates each (``--ppo-envs`` episodes x
  ``--ppo-steps`` steps per update) on the train segment, with the configs' defaults otherwise
  (residual warm start, no environment curriculum); the candidate kept by the greedy rollout's
  validation Sharpe, the policy before fine-tuning among them. The PPO stage's episode and
  sampling seeds are the run's seed.

Every run records into one catalogue (``<out>/catalogue``); the table comes from the saved query
``experiments/queries/rl_vs_supervised.sql`` over it (DuckDB), with buy-and-hold and equal
weight (``1/n`` rebalanced every bar, the constant-weight policy) traded on the same simulator.
Selection uses validation only; the test segment is only reported. A finished run (a completed
catalogue row of the same data, seed and arm in ``<out>``) is not rerun.

The table replaces the text between the markers ``<!-- rl-results -->`` in docs/rl.md.

Launch (CPU, 2 cores: about half a minute per supervised run, a few minutes per rl run):
    PYTHONPATH=src python -m experiments.rl_results --data synthetic sp500_stocks --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from experiments._markers import write_marked

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "rl.md"
MARK = "rl-results"
QUERY = "rl_vs_supervised"

# A CPU-sized model and budget (the machine these figures come from is shared).
SIZE = [
    "window=32",
    "horizon=5",
    "d_model=32",
    "depth=2",
    "n_heads=4",
    "data.batch_size=256",
    "trainer.limit_train_batches=20",  # supervised batches per epoch
    "trainer.limit_val_batches=null",  # the whole validation segment
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "simulator=realistic",  # commission, spread, impact, borrow: costs matter to both arms
    "evaluation=weights",  # what curriculum=rl selects; given to both arms
    "evaluation.bootstrap=1000",  # 95% stationary-bootstrap intervals of Sharpe
    "diagnostics=off",  # training diagnostics do not change the result
    "print_summary=false",
]


def ppo_size(envs: int, steps: int) -> list[str]:
    """The PPO stage's rollouts (rl.yaml: 16 envs x 32 steps, 2 passes over each here)."""
    return [
        f"curriculum.stages.1.env.n_envs={envs}",  # episodes stepped in parallel
        f"curriculum.stages.1.ppo.n_steps={steps}",  # rollout length per env and update
        "curriculum.stages.1.ppo.update_epochs=2",  # passes over each rollout
    ]


def arms(
    epochs: int, ppo_epochs: int, ppo_updates: int, ppo: list[str], seed: int
) -> dict[str, list[str]]:
    """Overrides of each arm: the same supervised stage; rl adds the PPO stage."""
    return {
        "supervised": ["curriculum=supervised", f"trainer.max_epochs={epochs}"],
        "rl": [
            "curriculum=rl",
            f"trainer.max_epochs={epochs}",  # the supervised stage's epochs (stages.0.epochs null)
            f"curriculum.stages.1.epochs={ppo_epochs}",
            f"curriculum.stages.1.ppo.updates_per_epoch={ppo_updates}",
            *ppo,
            f"curriculum.stages.1.ppo.seed={seed}",
            f"curriculum.stages.1.env.seed={seed}",
        ],
    }


def run(overrides: list[str], out: Path, run_dir: Path) -> float:
    """One `plusultra` run in a subprocess recording into ``out``'s catalogue; wall seconds."""
    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(out)}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "plusultra.run", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(overrides)}\n{done.stderr[-3000:]}")
    return wall


def finished(out: Path) -> set[tuple[str, int, str]]:
    """(data, seed, curriculum) of the completed runs already in ``out``'s catalogue."""
    from plusultra.catalogue.query import connect

    if not (out / "catalogue").is_dir():
        return set()
    rows = connect(out / "catalogue").execute(
        "SELECT data, seed, curriculum FROM runs WHERE status = 'completed'"
    )
    return {(d, int(s), c) for d, s, c in rows.fetchall()}


def results(out: Path) -> pd.DataFrame:
    """The saved query over ``out``'s catalogue."""
    from plusultra.catalogue.query import connect, saved_query

    return connect(out / "catalogue").execute(saved_query(QUERY)).df()


def table(df: pd.DataFrame) -> str:
    """Markdown: per data set and arm, mean ± std over seeds."""

    def pm(mean, std, fmt: str) -> str:
        if pd.isna(mean):
            return "n/a"
        return format(mean, fmt) + ("" if pd.isna(std) else f" ± {format(std, fmt)}")

    def num(x, fmt: str) -> str:
        return "n/a" if pd.isna(x) else format(x, fmt)

    lines = [
        "| data | arm | seeds | kept before fine-tuning | supervised val loss | val Sharpe "
        "| test Sharpe "
        "| test Sharpe 95% interval (mean) | test Sharpe per seed | test max drawdown "
        "| test turnover | test gross exposure |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in df.itertuples():
        interval = (
            "n/a"
            if pd.isna(r.test_sharpe_lo)
            else f"[{r.test_sharpe_lo:.2f}, {r.test_sharpe_hi:.2f}]"
        )
        lines.append(
            f"| {r.data} | {r.arm} | {r.n_seeds} | {num(r.n_kept_initial, '.0f')} "
            f"| {num(r.supervised_val_loss_mean, '.4f')} "
            f"| {pm(r.val_sharpe_mean, r.val_sharpe_std, '.2f')} "
            f"| {pm(r.test_sharpe_mean, r.test_sharpe_std, '.2f')} | {interval} "
            f"| {r.test_sharpe_each if isinstance(r.test_sharpe_each, str) else 'n/a'} "
            f"| {pm(r.test_max_drawdown_mean, r.test_max_drawdown_std, '.2%')} "
            f"| {pm(r.test_turnover_mean, r.test_turnover_std, '.4f')} "
            f"| {num(r.test_gross_exposure_mean, '.2f')} |"
        )
    return "\n".join(lines)


def write(markdown: str, note: str) -> None:
    """Replace the table between the markers of docs/rl.md."""
    write_marked(DOC, MARK, f"{note}\n\n{markdown}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["synthetic", "sp500_stocks"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3, help="supervised epochs (both arms)")
    parser.add_argument("--ppo-epochs", type=int, default=4, help="PPO epochs of the rl arm")
    parser.add_argument("--ppo-updates", type=int, default=10, help="PPO updates per epoch")
    parser.add_argument("--ppo-envs", type=int, default=16, help="episodes in parallel")
    parser.add_argument("--ppo-steps", type=int, default=32, help="rollout steps per update")
    parser.add_argument("--backbone", default="transformer")  # the hybrid's SSM is slow on CPU
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "outputs" / "rl_results",
        help="run dirs and the catalogue; finished runs there are reused (one dir per settings)",
    )
    parser.add_argument("--no-doc", action="store_true", help="print the table only")
    parser.add_argument(
        "--no-run", action="store_true", help="start no run: the table of the runs in --out"
    )
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    settings = {
        "size": SIZE,
        "epochs": args.epochs,
        "ppo_epochs": args.ppo_epochs,
        "ppo_updates": args.ppo_updates,
        "ppo_size": ppo_size(args.ppo_envs, args.ppo_steps),
        "backbone": args.backbone,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = args.out / "settings.json"
    if stamp.exists() and json.loads(stamp.read_text()) != settings:
        raise SystemExit(f"{args.out} holds runs of other settings ({stamp}); use another --out")
    stamp.write_text(json.dumps(settings, indent=1))
    done = finished(args.out)
    ran = sorted(done)  # (data, seed, arm) in the table
    # seed-major: a cut-short grid still has every data set
    for seed in [] if args.no_run else args.seeds:
        for data in args.data:
            ppo = ppo_size(args.ppo_envs, args.ppo_steps)
            overrides = arms(args.epochs, args.ppo_epochs, args.ppo_updates, ppo, seed)
            for arm, extra in overrides.items():
                if (data, seed, arm) in done:
                    continue
                common = [f"data={data}", f"backbone={args.backbone}", f"seed={seed}", *SIZE]
                wall = run([*common, *extra], args.out, args.out / "runs" / f"{data}-{arm}-{seed}")
                print(json.dumps({"data": data, "seed": seed, "arm": arm, "wall_s": wall}))
                ran.append((data, seed, arm))
    df = results(args.out)
    df = df[df["data"].isin(args.data)]
    markdown = table(df)
    print(markdown)
    if args.no_doc:
        return
    seeds = {
        d: " ".join(str(s) for s in sorted({s for dd, s, _ in ran if dd == d})) for d in args.data
    }
    note = (
        "Seeds in the table: "
        + "; ".join(f"{d}: {seeds[d] or 'none'}" for d in args.data)
        + f". `PYTHONPATH=src python -m experiments.rl_results --data {' '.join(args.data)} "
        f"--seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} --ppo-epochs "
        f"{args.ppo_epochs} --ppo-updates {args.ppo_updates} --ppo-envs {args.ppo_envs} "
        f"--ppo-steps {args.ppo_steps} "
        f"--backbone {args.backbone}` "
        f"({dt.date.today().isoformat()}; CPU, {os.cpu_count()} cores shared with other jobs). "
        f"Model, budget, simulator and evaluation of both arms: `{' '.join(SIZE[:13])}`; "
        f"the PPO stage's rollouts: `{' '.join(ppo_size(args.ppo_envs, args.ppo_steps))}`. "
        f"Table: the saved query `{QUERY}` over the runs' catalogue; mean ± sample std over "
        "seeds; the interval is the mean over seeds of each run's 95% stationary-bootstrap "
        "interval of its test Sharpe; drawdown is the test segment's maximum drawdown of "
        "equity; turnover is traded notional / equity per bar; buy-and-hold and equal weight "
        "are the backtest's baselines on the same simulator (long only, fully invested)."
    )
    write(markdown, note)


if __name__ == "__main__":
    main()
