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
the update is free).

Rollout memory on `rl.env.TradingEnv`: its observations are lazy (`rl.protocol.LazyWindows`),
so the rollout keeps each observation's (E, S) window row indices (int64) instead of its
(E, S, W, F) float32 windows, and each minibatch forward gathers its own rows. Bytes kept per
update (``rollout_bytes``: windows or indices, plus position, cash and mask) are computed for
the default sizes (n_steps 32, 256 envs x 20 symbols, window 64, 30 features) and checked
against the tensors of a real rollout at ``--trading-*`` sizes (the seeded random-walk market of
``rl_env``, 9 features); there, one update with lazy and with eager observations (the same
env, every observation gathered as soon as it is returned) is timed end to end, in the order
lazy, eager, eager, lazy, and the two give the same weights. Writes the `ppo` section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning as L
import torch

from experiments.benchmarks._report import machine, write_section
from experiments.benchmarks.rl_env import market
from plusultra.models.backbones.transformer import TransformerBackbone
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic
from plusultra.rl.protocol import Observation
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


def rollout_bytes(n_steps: int, envs: int, symbols: int, window: int, features: int, lazy: bool):
    """Bytes of the observations a rollout keeps: per env step, S windows of W x F float32
    (eager) or S int64 row indices (lazy), plus S float32 positions, 1 float32 cash and S bool
    masks."""
    windows = symbols * 8 if lazy else symbols * window * features * 4
    return n_steps * envs * (windows + symbols * 4 + 4 + symbols)


def stored_bytes(obs: Observation) -> int:
    """Bytes an observation's tensors hold (lazy: the row indices, not the env's shared table)."""
    feats = obs.windows.rows if obs.windows is not None else obs.features
    return sum(t.nelement() * t.element_size() for t in (feats, obs.position, obs.cash, obs.mask))


class EagerEnv:
    """A `TradingEnv` whose observations are gathered as soon as they are returned."""

    def __init__(self, env: TradingEnv) -> None:
        self.env = env
        for k in ("n_envs", "n_symbols", "window", "n_features", "action_kind", "device"):
            setattr(self, k, getattr(env, k))

    def reset(self, seed=None) -> Observation:
        return self.env.reset(seed).materialize()

    def step(self, action):
        obs, reward, term, trunc, info = self.env.step(action)
        info["final_observation"] = info["final_observation"].materialize()
        return obs.materialize(), reward, term, trunc, info


def fit_timed(module: PPOModule) -> list[float]:
    """Seconds of each PPO update of one epoch of ``Trainer.fit``."""
    timer = _Timer()
    L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    ).fit(module)
    return timer.times


def trading(args) -> dict:
    """Rollout bytes, end-to-end seconds per update (median) and weights on `TradingEnv`, lazy
    and eager, run in the order lazy, eager, eager, lazy (so that a drift of the machine's load
    weighs on both alike)."""
    w, n = args.trading_window, args.n_steps
    m = market(2000, args.trading_symbols, 9, w, "cpu")
    out: dict[str, tuple] = {}
    times: dict[str, list[float]] = {"lazy": [], "eager": []}
    for kind in ("lazy", "eager", "eager", "lazy"):
        env = TradingEnv(m, (w - 1, 1999), w, EnvConfig(n_envs=args.trading_envs, impact_coef=0.1))
        env = env if kind == "lazy" else EagerEnv(env)
        torch.manual_seed(0)
        bb = TransformerBackbone(9, d_model=16, depth=1, n_heads=2, max_len=w)
        settings = PPOSettings(n_steps=n, updates_per_epoch=args.trading_updates + 1)
        module = PPOModule(ActorCritic(bb, hidden=64), env, settings)
        module._obs, module._ep_return = env.reset(0), torch.zeros(env.n_envs)
        module.policy.eval()
        stored = stored_bytes(module.rollout()["obs"])
        sizes = (n, args.trading_envs, args.trading_symbols, w, 9)
        if stored != rollout_bytes(*sizes, kind == "lazy"):
            raise SystemExit(f"{kind} rollout keeps {stored} bytes, rollout_bytes disagrees")
        module.policy.train()
        times[kind] += fit_timed(module)[1:]
        out[kind] = (stored, statistics.median(times[kind]), module.policy.state_dict())
    same = all(torch.equal(v, out["eager"][2][k]) for k, v in out["lazy"][2].items())
    if not same:
        raise SystemExit("lazy and eager observations gave different weights")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=256)
    ap.add_argument("--symbols", type=int, default=4)
    ap.add_argument("--window", type=int, default=16)
    ap.add_argument("--n-steps", type=int, default=32)
    ap.add_argument("--updates", type=int, default=6)
    ap.add_argument("--trading-envs", type=int, default=16, help="TradingEnv envs (memory check)")
    ap.add_argument("--trading-symbols", type=int, default=20)
    ap.add_argument("--trading-window", type=int, default=64)
    ap.add_argument("--trading-updates", type=int, default=2)
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

    fit_times = fit_timed(module)
    trade = trading(args)

    rows = [
        ("env only (`env.step`)", statistics.median(env_times[1:])),
        ("rollout only (`PPOModule.rollout`)", statistics.median(roll_times[1:])),
        ("end to end (one PPO update in `Trainer.fit`)", statistics.median(fit_times[1:])),
    ]
    end = rows[-1][1]
    lines = [
        "## PPO samples per second",
        "",
        f"Command: `{COMMAND} --envs {args.envs} --symbols {args.symbols} --window "
        f"{args.window} --n-steps {args.n_steps} --updates {args.updates} --trading-envs "
        f"{args.trading_envs} --trading-updates {args.trading_updates}`. Machine: {machine()}.",
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
    default = (32, 256, 20, 64, 30)
    eager_b, lazy_b = (rollout_bytes(*default, lazy) for lazy in (False, True))
    te, ts, tw = args.trading_envs, args.trading_symbols, args.trading_window
    t_samples = args.n_steps * te
    lines += [
        "",
        "### Rollout memory: lazy observations",
        "",
        "`rl.env.TradingEnv` returns lazy observations (window row indices into its strided "
        "view of the features, `rl.protocol.LazyWindows`); the rollout keeps those and each "
        "minibatch forward gathers its own windows. Observation bytes kept per update, "
        "computed (`rollout_bytes`) for the default sizes, n_steps 32 x 256 envs x 20 symbols "
        f"x window 64 x 30 features: {eager_b / 1e9:.2f} GB with the windows gathered (eager), "
        f"{lazy_b / 1e6:.1f} MB with their row indices (lazy; both with position, cash and "
        f"mask), {eager_b / lazy_b:,.0f}x less.",
        "",
        f"Measured on a real rollout (the seeded market of `rl_env`, {te} envs x {ts} symbols x "
        f"window {tw} x 9 features, n_steps {args.n_steps}, the transformer above on 9 "
        "features; eager: the same env with every observation gathered as returned), with "
        "one PPO update timed end to end (median of 2 x "
        f"{args.trading_updates} after a warm-up each, run lazy, eager, eager, lazy); "
        "both give bit-identical weights (checked by the script):",
        "",
        "| observations | bytes kept per update | seconds per update | samples / s |",
        "|---|---:|---:|---:|",
    ]
    for kind in ("eager", "lazy"):
        stored, sec, _ = trade[kind]
        lines.append(f"| {kind} | {stored / 1e6:,.1f} MB | {sec:.2f} | {t_samples / sec:,.0f} |")
    lines += [
        "",
        "Both copy each step's windows once (for the rollout's forward) and each minibatch's "
        "rows once per pass; eager also stacks the whole rollout's windows into one tensor "
        "(one copy of the bytes it keeps). The forward and backward passes, the same in both, "
        "dominate an update.",
    ]
    print("\n".join(lines))
    write_section("ppo", "\n".join(lines))


if __name__ == "__main__":
    main()
