"""Batched trading environment against the same environment stepped one by one through Gymnasium.

    .venv/bin/python -m experiments.benchmarks.rl_env [--envs 256] [--symbols 20] [--threads 1]

Scenario: a seeded random-walk panel (``--bars`` bars x ``--symbols`` symbols, 1 % per bar, opens
around the closes, random volume and volatility) with ``--features`` random normalised features.
The environment is `plusultra.rl.env.TradingEnv` with the realistic simulator's default costs
(commission 1 bp, half spread 2 bp, square-root impact 0.1), next-bar-open execution, episodes of
64 steps (auto-reset), continuous actions.

- **Batched** (the measured side): ``--envs`` environments x all symbols in one `TradingEnv`,
  stepped with uniform random target positions drawn in torch; env steps per second =
  envs x steps / seconds.
- **Gymnasium loop** (the reference): `plusultra.rl.gym.TradingGymEnv` (the same environment
  with E = 1) in a Python loop: ``action_space.sample()``, ``step``, ``reset`` when an episode
  ends, as a Gymnasium agent would drive it; env steps per second = steps / seconds.

Rows: the root config's window (64 bars) with the net P&L reward, the same with every shaping
term switched on, and a 16-bar window. After one warm-up episode each, every repeat times the two
sides back to back and the ratio is the median of the per-repeat ratios (the machine may be
shared: both sides of a ratio then see about the same load). Both sides run in this process with
the same torch thread count (``--threads``; default 1: the machine the
committed numbers came from was shared, and one thread was the faster setting there).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from experiments.benchmarks._report import machine, write_section
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.gym import TradingGymEnv
from plusultra.rl.market import EnvMarket
from plusultra.rl.rewards import RewardConfig

COMMAND = ".venv/bin/python -m experiments.benchmarks.rl_env"
EPISODE = 64
SHAPED = RewardConfig(
    sharpe_weight=0.1,
    drawdown_weight=1.0,
    cvar_weight=1.0,
    entropic_weight=0.5,
    turnover_weight=0.01,
)


def market(bars: int, symbols: int, features: int, window: int, device: str) -> EnvMarket:
    """The seeded panel as environment tensors."""
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (bars, symbols)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.003, (bars, symbols)))
    return EnvMarket.build(
        rng.normal(size=(bars, symbols, features)).astype(np.float32),
        close,
        window,
        open_=open_,
        volume=rng.uniform(1e5, 1e6, (bars, symbols)),
        volatility=rng.uniform(0.005, 0.02, (bars, symbols)),
        impact_coef=0.1,
        device=device,
    )


def config(n_envs: int) -> EnvConfig:
    return EnvConfig(n_envs=n_envs, episode_len=EPISODE, impact_coef=0.1)


def batched_runner(m: EnvMarket, window: int, envs: int, reward):
    """(steps(n), observe(n)): n batched steps with random actions / n observations alone."""
    env = TradingEnv(m, (window - 1, m.n_bars - 1), window, config(envs), reward)
    dev = m.returns.device
    gen = torch.Generator(device=dev).manual_seed(0)
    shape = (envs, env.n_symbols)

    def sync() -> None:
        if m.returns.is_cuda:
            torch.cuda.synchronize()

    def steps(n: int) -> None:
        for _ in range(n):
            env.step(torch.rand(shape, generator=gen, device=dev) * 2 - 1)
        sync()

    def observe(n: int) -> None:
        for _ in range(n):
            env.observe()
        sync()

    env.reset(seed=0)
    return steps, observe


def gym_runner(m: EnvMarket, window: int, reward):
    """steps(n): n Gymnasium steps in a Python loop, resetting at episode end."""
    env = TradingGymEnv(m, (window - 1, m.n_bars - 1), window, config(1), reward)
    env.action_space.seed(0)
    env.reset(seed=0)

    def steps(n: int) -> None:
        for _ in range(n):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()

    return steps


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    fn(n)
    return time.perf_counter() - t0


def measure(batched_market, gym_market, window, reward, args) -> tuple[float, ...]:
    """Batched and Gymnasium env steps/s, their ratio and the observation share: medians over
    repeats, each repeat timing both sides back to back (so that both see the same load)."""
    steps, observe = batched_runner(batched_market, window, args.envs, reward)
    gym_steps = gym_runner(gym_market, window, reward)
    steps(EPISODE), gym_steps(EPISODE)  # warm-up
    rates, singles, ratios, shares = [], [], [], []
    for _ in range(args.repeats):
        t_batched = timed(steps, args.steps)
        t_observe = timed(observe, args.steps)
        t_gym = timed(gym_steps, args.gym_steps)
        rates.append(args.envs * args.steps / t_batched)
        singles.append(args.gym_steps / t_gym)
        ratios.append(rates[-1] / singles[-1])
        shares.append(t_observe / t_batched)
    return tuple(statistics.median(x) for x in (rates, singles, ratios, shares))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=256, help="parallel environments (E)")
    parser.add_argument("--symbols", type=int, default=20, help="symbols per environment (S)")
    parser.add_argument("--features", type=int, default=9, help="features per bar (F)")
    parser.add_argument("--bars", type=int, default=2000, help="bars of the panel (T)")
    parser.add_argument("--steps", type=int, default=200, help="batched steps per timing")
    parser.add_argument("--gym-steps", type=int, default=2000, help="Gymnasium steps per timing")
    parser.add_argument("--repeats", type=int, default=3, help="timings (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both sides)")
    parser.add_argument("--device", default="cpu", help="device of the batched environment")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for window, reward, label in (
        (64, None, "net P&L"),
        (64, SHAPED, "every shaping term on"),
        (16, None, "net P&L"),
    ):
        m = market(args.bars, args.symbols, args.features, window, args.device)
        m_cpu = (
            m
            if args.device == "cpu"
            else market(args.bars, args.symbols, args.features, window, "cpu")
        )
        batched, single, ratio, share = measure(m, m_cpu, window, reward, args)
        rows.append((window, label, batched, single, ratio, share))
        print(f"W={window} {label}: batched {batched:,.0f}/s, gym {single:,.0f}/s, x{ratio:.0f}")

    lines = [
        "## RL environment: batched steps against a Gymnasium loop",
        "",
        f"`{COMMAND} --envs {args.envs} --symbols {args.symbols} --threads {args.threads}"
        f"{'' if args.device == 'cpu' else f' --device {args.device}'}` ({machine()}; batched "
        f"environment on {args.device}, the Gymnasium loop on cpu).",
        "",
        f"{args.envs} environments x {args.symbols} symbols x {args.features} features, "
        f"episodes of {EPISODE} steps with auto-reset, realistic default costs (commission, "
        "half spread, square-root impact), next-bar-open fills, random continuous actions. The "
        "reference is the same environment (E = 1) through `TradingGymEnv` in a Python loop "
        "(`action_space.sample()`, `step`, `reset` at episode end). Env steps per second, "
        f"medians of {args.repeats} repeats, each timing {args.steps} batched and "
        f"{args.gym_steps} Gymnasium steps back to back (the ratio is the median of the "
        "per-repeat ratios, so that both sides of a ratio saw the same machine load).",
        "",
        "| window | reward | batched env steps/s | Gymnasium loop env steps/s | ratio | "
        "observation share |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for window, label, batched, single, ratio, share in rows:
        lines.append(
            f"| {window} | {label} | {batched:,.0f} | {single:,.0f} | {ratio:.0f}x | {share:.0%} |"
        )
    met = [f"W = {w} ({lab})" for w, lab, *_, r, _ in rows if r >= 100]
    missed = [f"W = {w} ({lab})" for w, lab, *_, r, _ in rows if r < 100]
    mb = args.envs * args.symbols * 64 * args.features * 4 / 1e6
    lines += [
        "",
        f"Target >= 100x: met for {', '.join(met) or 'none'}; not met for "
        f'{", ".join(missed) or "none"}. "Observation share": the time of building the E '
        "observations alone (`env.observe()`, timed separately) over that of a whole batched "
        "step. An observation is one gather of the E x S feature windows into a contiguous "
        f"(E, S, W, F) float32 tensor ({mb:.1f} MB per step at W = 64): a memory copy that "
        "grows with the window, bound by single-core memory bandwidth, while a Gymnasium step "
        "costs Python and per-op overhead that does not grow with it; each step's "
        "observation is fresh memory, whose page faults cost about as much again as the copy. "
        "The ratio at W = 64 moves with the machine's "
        "load: the batched side is memory-bound, the Gymnasium loop is not.",
    ]
    print(f"written to {write_section('rl_env', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
