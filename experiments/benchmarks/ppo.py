"""PPO samples per second end to end on a toy env, against its rollout alone, same run.

    .venv/bin/python -m experiments.benchmarks.ppo [--envs 256] [--symbols 4] [--updates 6]

Scenario: ``rl.toy.OUEnv`` with ``--envs`` parallel environments of ``--symbols`` symbols, a
``--window``-bar window of one feature, and the policy ``rl.policy.ActorCritic`` on a
transformer backbone (d_model 16, depth 1, 2 heads), continuous actions. A sample is one env
step (all symbols of one env). Three timings, medians over ``--updates`` updates after one
warm-up each:

- env only: ``env.step`` with fixed random actions (the environment's own cost);
- rollout only: ``PPOModule.rollout`` (policy forward, sampling, env steps, the final-state
  values and GAE), ``n_steps`` x envs samples, no gradient;
- end to end: one PPO update inside ``Trainer.fit`` (rollout + ``update_epochs`` x
  ``n_minibatches`` forward/backward/clip/Adam steps + logging), timed per training batch.

The ratio end-to-end / rollout-only is the share of the time the rollout takes (1 would mean
the update is free). Writes the `ppo` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from experiments.benchmarks._report import machine, write_section
from plusultra.models.backbones.transformer import TransformerBackbone
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic
from plusultra.rl.toy import OUEnv

COMMAND = ".venv/bin/python -m experiments.benchmarks.ppo"


class _Timer(L.Callback):
    """Wall-clock seconds of each training batch (one PPO update)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, *args) -> None:
        self._t = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.times.append(time.perf_counter() - self._t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=256)
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--n-steps", type=int, default=32)
    ap.add_argument("--updates", type=int, default=6)
    args = ap.parse_args()
    torch.manual_seed(0)
    env = OUEnv(n_envs=args.envs, n_symbols=args.symbols, window=args.window, episode_len=64)
    bb = TransformerBackbone(1, d_model=16, depth=1, n_heads=2, max_len=args.window)
    settings = PPOSettings(n_steps=args.n_steps, updates_per_epoch=args.updates + 1)
    module = PPOModule(ActorCritic(bb, hidden=64), env, settings)
    samples = args.n_steps * args.envs

    action = torch.rand(args.envs, args.symbols) * 2 - 1
    env.reset(0)
    env_times = []
    for _ in range(args.updates + 1):
        t = time.perf_counter()
        for _ in range(args.n_steps):
            env.step(action)
        env_times.append(time.perf_counter() - t)

    module._obs, module._ep_return = env.reset(0), torch.zeros(args.envs)
    module.policy.eval()
    roll_times = []
    for _ in range(args.updates + 1):
        t = time.perf_counter()
        module.rollout()
        roll_times.append(time.perf_counter() - t)
    module.policy.train()  # as Lightning expects; training_step switches dropout off itself

    timer = _Timer()
    L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    ).fit(module)

    rows = [
        ("env only (`env.step`)", statistics.median(env_times[1:])),
        ("rollout only (`PPOModule.rollout`)", statistics.median(roll_times[1:])),
        ("end to end (one PPO update in `Trainer.fit`)", statistics.median(timer.times[1:])),
    ]
    end = rows[-1][1]
    lines = [
        "## PPO samples per second",
        "",
        f"Command: `{COMMAND} --envs {args.envs} --symbols {args.symbols} --window "
        f"{args.window} --n-steps {args.n_steps} --updates {args.updates}`. Machine: {machine()}.",
        "",
        f"`rl.toy.OUEnv`, {args.envs} envs x {args.symbols} symbols, window {args.window}, one "
        "feature; `ActorCritic` on a transformer backbone (d_model 16, depth 1), continuous "
        f"actions; PPO with n_steps {args.n_steps}, {settings.update_epochs} epochs x "
        f"{settings.n_minibatches} minibatches. A sample is one env step (all its symbols). "
        f"Medians over {args.updates} updates after a warm-up.",
        "",
        "| what | seconds per update | samples / s | end to end / this |",
        "|---|---:|---:|---:|",
    ]
    for name, sec in rows:
        lines.append(f"| {name} | {sec:.3f} | {samples / sec:,.0f} | {end / sec:.2f} |")
    lines += [
        "",
        f"The update (forward and backward over the rollout {settings.update_epochs} times) "
        f"takes {1 - rows[1][1] / end:.0%} of the end-to-end time; the environment itself "
        f"{rows[0][1] / end:.1%}. Measured on CPU (env and policy); on a machine shared with "
        "other jobs the figures vary run to run by a factor of up to 5, so read the ratios "
        "of one run, not absolute figures across runs.",
    ]
    print("\n".join(lines))
    write_section("ppo", "\n".join(lines))


if __name__ == "__main__":
    main()
