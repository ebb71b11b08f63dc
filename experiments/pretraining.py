"""Warm start or not: validation loss and Sharpe with and without self-supervised pretraining.

Both arms train the same small model for the same total number of epochs (each epoch capped at
the same number of batches): `cold` trains supervised for all of them; `warm` spends the first
`--pretrain-epochs` on the pretrain stage of ``curriculum=pretrain_finetune`` (masked patches +
contrastive, train-segment inputs only) and the rest on supervised fine-tuning. Equal compute
means equal epochs here, not equal wall time: a contrastive epoch runs the backbone on two
views, so the warm arm's wall time is reported beside it. Selection and the figures are on the
validation segment only (the test segment is not read by this script).

The table replaces the text between the markers in docs/training.md.

Launch (CPU, a few minutes per dataset):
    PYTHONPATH=src python -m experiments.pretraining --data synthetic sp500_stocks --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments._markers import write_marked

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "training.md"
MARK = "pretraining-table"

# A CPU-sized model and budget (the machine these figures come from is shared).
SIZE = [
    "window=32",
    "horizon=5",
    "d_model=32",
    "depth=2",
    "n_heads=4",
    "data.batch_size=256",
    "trainer.limit_train_batches=30",  # batches per epoch, the same in every stage and arm
    "trainer.limit_val_batches=null",  # the whole validation segment
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_progress_bar=false",
    "evaluation.bootstrap=0",
    "print_summary=false",
]


def arms(epochs: int, pretrain: int) -> dict[str, list[str]]:
    """Overrides of each arm: the same total epochs."""
    return {
        "cold": ["curriculum=supervised", f"trainer.max_epochs={epochs}"],
        "warm": [
            "curriculum=pretrain_finetune",
            f"curriculum.stages.0.epochs={pretrain}",
            f"curriculum.stages.1.epochs={epochs - pretrain}",
        ],
    }


def run(overrides: list[str], out: Path) -> tuple[dict, float]:
    """One `plusultra` run in a subprocess; its metrics.json and wall seconds."""
    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(out.parent / "outputs")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "plusultra.run", *overrides, f"hydra.run.dir={out}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(overrides)}\n{done.stderr[-3000:]}")
    return json.loads((out / "metrics.json").read_text()), wall


def table(rows: list[dict]) -> str:
    """Markdown: per dataset and arm, mean over seeds (and each seed's values)."""
    lines = [
        "| data | arm | epochs (pretrain + supervised) | val loss | val zero-forecast loss "
        "| val Sharpe | pretrain best val loss | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["data"], r["arm"]) for r in rows}, key=lambda k: (k[0], k[1] != "cold"))
    for data, arm in keys:
        group = [r for r in rows if r["data"] == data and r["arm"] == arm]

        def cell(key: str, fmt: str, rs=group) -> str:
            vals = [r[key] for r in rs if r.get(key) is not None]
            if not vals:
                return "n/a"
            each = ", ".join(format(v, fmt) for v in vals)
            return f"{format(float(np.mean(vals)), fmt)} ({each})"

        lines.append(
            f"| {data} | {arm} | {group[0]['schedule']} | {cell('val_loss', '.4f')} "
            f"| {cell('val_naive_loss', '.4f')} | {cell('val_sharpe', '.2f')} "
            f"| {cell('pretrain_best_val_loss', '.4f')} | {cell('wall', '.0f')} |"
        )
    return "\n".join(lines)


def write(markdown: str, note: str) -> None:
    """Replace the table between the markers of docs/training.md."""
    write_marked(DOC, MARK, f"{note}\n\n{markdown}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=["synthetic", "sp500_stocks"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int, default=6, help="total epochs of each arm")
    parser.add_argument("--pretrain-epochs", type=int, default=2, help="of them, pretraining")
    parser.add_argument("--backbone", default="transformer")  # the hybrid's SSM is slow on CPU
    parser.add_argument(
        "--rows", type=Path, help="JSON-lines file of finished runs: reused, new ones appended"
    )
    args = parser.parse_args(argv)
    if not 0 < args.pretrain_epochs < args.epochs:
        raise SystemExit("--pretrain-epochs must be between 1 and --epochs - 1")
    settings = " ".join([*SIZE, f"epochs={args.epochs}/{args.pretrain_epochs}", args.backbone])
    done = []
    if args.rows is not None and args.rows.exists():
        done = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    done = [r for r in done if r.get("settings") == settings]  # only runs of these settings
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data in args.data:
            for arm, overrides in arms(args.epochs, args.pretrain_epochs).items():
                for seed in args.seeds:
                    same = [
                        r for r in done if (r["data"], r["arm"], r["seed"]) == (data, arm, seed)
                    ]
                    if same:
                        rows.append(same[0])
                        continue
                    out = Path(tmp) / f"{data}-{arm}-{seed}"
                    common = [f"data={data}", f"backbone={args.backbone}", f"seed={seed}", *SIZE]
                    metrics, wall = run([*common, *overrides], out)
                    p = args.pretrain_epochs if arm == "warm" else 0
                    row = {"data": data, "arm": arm, "seed": seed, "wall": wall}
                    row["settings"] = settings
                    row["schedule"] = f"{p} + {args.epochs - p}"
                    row |= {k: metrics.get(k) for k in ("val_loss", "val_naive_loss")}
                    row |= {k: metrics.get(k) for k in ("val_sharpe", "pretrain_best_val_loss")}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.rows is not None:
                        with args.rows.open("a") as f:
                            f.write(json.dumps(row) + "\n")
    note = (
        f"`python -m experiments.pretraining --data {' '.join(args.data)} --seeds "
        f"{' '.join(map(str, args.seeds))} --epochs {args.epochs} --pretrain-epochs "
        f"{args.pretrain_epochs} --backbone {args.backbone}`; model and budget: "
        f"`{' '.join(SIZE[:7])}` (batches per epoch); mean over seeds (each seed in "
        f"brackets); CPU, {os.cpu_count()} cores shared with other jobs (wall times indicative)."
    )
    write(table(rows), note)
    print(table(rows))


if __name__ == "__main__":
    main()
