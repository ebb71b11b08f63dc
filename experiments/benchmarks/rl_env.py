"""Batched trading environment against the same environment stepped one by one through Gymnasium.

    .venv/bin/python -m experiments.benchmarks.rl_env [--envs 256] [--symbols 20] [--threads 1]

Scenario: a seeded random-walk panel (``--bars`` bars x ``--symbols`` symbols, 1 % per bar, opens
around the closes, random volume and volatility) with ``--features`` random normalised features.
The environment is `plusultra.rl.env.TradingEnv` with the realistic simulator's default costs
(commission 1 bp, half spread 2 bp, square-root impact 0.1), next-bar-open execution, episodes of
64 steps (auto-reset), continuous actions.

- **Batched** (the measured side): ``--envs`` environments x all symbols in one `TradingEnv`,
  stepped with uniform random target positions drawn in torch; env steps per second =
  envs x steps / seconds. Three times: not reading the observations' features (a random
  agent's loop: the lazy observations hold window row indices, `rl.protocol.LazyWindows`, and
  nothing gathers them); reading them once per step with ``obs.features_into(buf)`` into one
  buffer the agent keeps (the like-for-like side: the Gymnasium loop copies the same window
  bytes into its observation each step); and reading ``obs.features``, a fresh tensor per step.
- **Gymnasium loop** (the reference): `plusultra.rl.gym.TradingGymEnv` (the same environment
  with E = 1) in a Python loop: ``action_space.sample()``, ``step``, ``reset`` when an episode
  ends, as a Gymnasium agent would drive it; env steps per second = steps / seconds.

Rows: the root config's window (64 bars) with the net P&L reward, the same with every shaping
term switched on, and a 16-bar window. After one warm-up episode each, every repeat times each
side back to back (batched without the read, with a fresh read, with the buffered read, one
observation's ``features`` read alone, the Gymnasium loop) and each ratio is the median of the
per-repeat ratios (the machine may be shared: both sides of a ratio then see about the same
load). Both sides run in this
process with the same torch thread count (``--threads``; default 1: the machine the committed
numbers came from was shared, and one thread was the faster setting there).
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
    """(steps(n), steps_read(n), steps_into(n), read(n)): n batched steps with random actions,
    not reading the observations' features / the same reading every observation's
    ``features`` (a fresh tensor each) / reading them into one buffer the agent keeps
    (``features_into``) / n reads of one observation's ``features`` alone."""
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

    def steps_read(n: int) -> None:
        for _ in range(n):
            obs, *_ = env.step(torch.rand(shape, generator=gen, device=dev) * 2 - 1)
            obs.features  # noqa: B018 (the gather an agent pays to read the windows)
        sync()

    buf = torch.empty((envs, env.n_symbols, window, m.features.shape[2]), device=dev)

    def steps_into(n: int) -> None:
        for _ in range(n):
            obs, *_ = env.step(torch.rand(shape, generator=gen, device=dev) * 2 - 1)
            obs.features_into(buf)  # the same bytes copied, into memory the agent reuses
        sync()

    def read(n: int) -> None:
        obs = env.observe()
        for _ in range(n):
            obs.features  # noqa: B018
        sync()

    env.reset(seed=0)
    return steps, steps_read, steps_into, read


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
    """Batched env steps/s without the read, with a fresh read and read into a kept buffer,
    Gymnasium env steps/s, the three ratios and the gather share: medians over repeats, each
    repeat timing the sides back to back (so that they see the same load)."""
    steps, steps_read, steps_into, read = batched_runner(batched_market, window, args.envs, reward)
    gym_steps = gym_runner(gym_market, window, reward)
    steps(EPISODE), steps_read(EPISODE), steps_into(EPISODE), gym_steps(EPISODE)  # warm-up
    keys = ("bare", "read", "into", "gym", "r_bare", "r_read", "r_into", "share")
    out: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(args.repeats):
        t_bare = timed(steps, args.steps)
        t_read = timed(steps_read, args.steps)
        t_into = timed(steps_into, args.steps)
        t_gather = timed(read, args.steps)
        t_gym = timed(gym_steps, args.gym_steps)
        out["bare"].append(args.envs * args.steps / t_bare)
        out["read"].append(args.envs * args.steps / t_read)
        out["into"].append(args.envs * args.steps / t_into)
        out["gym"].append(args.gym_steps / t_gym)
        for k in ("bare", "read", "into"):
            out[f"r_{k}"].append(out[k][-1] / out["gym"][-1])
        out["share"].append(t_gather / t_read)
    return tuple(statistics.median(out[k]) for k in keys)


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
        bare, read, into, single, r_bare, r_read, r_into, share = measure(
            m, m_cpu, window, reward, args
        )
        rows.append((window, label, bare, read, into, single, r_bare, r_read, r_into, share))
        print(
            f"W={window} {label}: batched {bare:,.0f}/s (read fresh: {read:,.0f}/s, read into "
            f"a buffer: {into:,.0f}/s), gym {single:,.0f}/s, x{r_bare:.0f} (read fresh: "
            f"x{r_read:.0f}, into a buffer: x{r_into:.0f}), gather share {share:.0%}"
        )

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
        "| window | reward | batched, features not read | batched, features read into the "
        "agent's buffer | batched, features read into a fresh tensor | Gymnasium loop | "
        "ratio, not read | ratio, read into a buffer | ratio, read fresh | gather share |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for window, label, bare, read, into, single, r_bare, r_read, r_into, share in rows:
        lines.append(
            f"| {window} | {label} | {bare:,.0f} | {into:,.0f} | {read:,.0f} | {single:,.0f} | "
            f"{r_bare:.0f}x | **{r_into:.0f}x** | {r_read:.0f}x | {share:.0%} |"
        )

    def verdict(col: int) -> str:
        met = [f"W = {r[0]} ({r[1]})" for r in rows if r[col] >= 100]
        missed = [f"W = {r[0]} ({r[1]})" for r in rows if r[col] < 100]
        return f"met for {', '.join(met) or 'none'}; not met for {', '.join(missed) or 'none'}"

    mb = args.envs * args.symbols * 64 * args.features * 4 / 1e6
    lines += [
        "",
        "Columns are env steps per second. The environment's observations are lazy "
        "(`rl.protocol.LazyWindows`): a step returns the (E, S) row indices of the windows in "
        "an overlapping strided view of the features, and reading them is one gather of "
        f'{mb:.1f} MB (E x S x W x F float32 at W = 64). "Not read" steps as a random agent '
        "does, never reading them. \"Read into the agent's buffer\" reads every observation's "
        "windows with `obs.features_into(buf)` into one (E, S, W, F) tensor the agent keeps "
        "from step to step, as a rollout buffer or a policy's input staging does; \"read into a "
        'fresh tensor" reads `obs.features`, which allocates a new tensor each step. The '
        "Gymnasium loop copies the same window bytes into its numpy observation each step (46 "
        "KB at W = 64, reused by the allocator), so the like-for-like ratio is the buffered "
        'read\'s (bold): both sides copy every window once per step. "Gather share": one '
        "fresh read timed alone over a whole step with a fresh read.",
        "",
        f"Target >= 100x, read into the agent's buffer: {verdict(8)}. Not read: {verdict(6)}. "
        f"Read into a fresh tensor: {verdict(7)}. A fresh 11.8 MB tensor per step is above "
        "glibc's mmap threshold, so each read maps and faults in new pages and each free "
        "returns them; that, not the copy, is what makes the fresh read slow and its ratio "
        "swing between runs (21-113x over the runs before the buffered read existed).",
    ]
    ms = [
        (w, lab, 1e3 * args.envs / b, 1e3 * args.envs / i, 1e3 * args.envs / r, sh)
        for w, lab, b, r, i, *_, sh in rows
    ]
    parts = [
        f"W = {w} ({lab}): bare {b:.2f} ms, read into a buffer {i:.2f} ms, read fresh {r:.2f} ms"
        f" ({r * sh:.2f} of it the gather timed alone)"
        for w, lab, b, i, r, sh in ms
    ]
    lines += ["", "Per batched step: " + "; ".join(parts) + "."]
    print(f"written to {write_section('rl_env', chr(10).join(lines))}")


if __name__ == "__main__":
    main()
