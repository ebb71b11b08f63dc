"""PPO's pure functions: GAE, the clipped objectives, KL estimate, diagnostics.

Each vectorised function has an obviously-correct reference (``*_ref``, Python loops) that
``tests/test_ppo.py`` compares it with. Names follow Huang et al., "The 37 implementation details
of PPO" (ICLR blog track 2022) and cleanrl's ``ppo_continuous_action.py``.

Shapes: T rollout steps, E environments, N samples of a minibatch.
"""

from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation, GAE(lambda), with time-limit bootstrapping.

    ``next_values[t]`` is the value of the state reached by step t *before* any automatic
    reset: ``values[t + 1]`` inside an episode, the value of the last rollout observation at
    t = T - 1, the value of ``info["final_observation"]`` where the episode was truncated (a
    time limit: the future still exists, so it is bootstrapped), and anything (ignored) where
    it terminated (no future: its value is 0). Both kinds of episode end cut the recursion, so
    an advantage never mixes two episodes.

    Args:
        rewards: (T, E) reward of each step.
        values: (T, E) critic's value of the state each step acted in.
        next_values: (T, E) value of each step's successor state (see above).
        terminated: (T, E) bool, the episode ended in a terminal state at this step.
        truncated: (T, E) bool, the episode was cut by a time limit at this step.
        gamma: discount per step, in [0, 1].
        lam: GAE lambda, in [0, 1].

    Returns:
        advantages (T, E) and returns = advantages + values (T, E), the critic's targets.
    """
    alive = (~terminated).to(values.dtype)  # 0 where the successor is terminal
    cont = (~(terminated | truncated)).to(values.dtype)  # 0 where the episode ended
    delta = rewards + gamma * next_values * alive - values  # (T, E) TD errors
    adv = torch.zeros_like(values)
    last = torch.zeros_like(values[0])  # (E,)
    for t in range(values.shape[0] - 1, -1, -1):  # a scan over T; E is vectorised
        last = delta[t] + gamma * lam * cont[t] * last
        adv[t] = last
    return adv, adv + values


def gae_ref(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Reference of ``gae``: a double Python loop, one environment and one step at a time."""
    T, E = values.shape
    adv = torch.zeros(T, E, dtype=torch.float64)
    for e in range(E):
        running = 0.0
        for t in reversed(range(T)):
            if terminated[t, e]:
                delta = float(rewards[t, e]) - float(values[t, e])
                running = delta
            elif truncated[t, e]:
                running = float(rewards[t, e] + gamma * next_values[t, e] - values[t, e])
            else:
                delta = float(rewards[t, e] + gamma * next_values[t, e] - values[t, e])
                running = delta + gamma * lam * running
            adv[t, e] = running
    adv = adv.to(values.dtype)
    return adv, adv + values


def normalize_advantages(adv: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Zero mean, unit standard deviation over a minibatch (N,) (detail: per minibatch)."""
    if adv.numel() < 2:
        return adv - adv.mean()
    return (adv - adv.mean()) / (adv.std() + eps)


def policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate objective, as a loss to minimise.

    ``max(-A * r, -A * clip(r, 1 - c, 1 + c))`` averaged, with ``r = exp(logp - old_logp)``: a
    ratio pushed beyond the clip range in the advantage's direction earns no further gradient.

    Args:
        logp: (N,) log-probabilities of the taken actions under the current policy.
        old_logp: (N,) the same under the rollout policy.
        adv: (N,) advantages.
        clip_coef: c, the clip range of the ratio.

    Returns:
        The loss (scalar) and the clip fraction (scalar, share of samples with |r - 1| > c).
    """
    ratio = (logp - old_logp).exp()  # (N,)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef)
    clip_frac = ((ratio - 1).abs() > clip_coef).float().mean()
    return torch.max(unclipped, clipped).mean(), clip_frac


def policy_loss_ref(logp, old_logp, adv, clip_coef):
    """Reference of ``policy_loss``: the min of the two surrogates, one sample at a time."""
    total = 0.0
    for lp, olp, a in zip(logp.tolist(), old_logp.tolist(), adv.tolist(), strict=True):
        r = torch.tensor(lp - olp).exp().item()
        total += -min(r * a, min(max(r, 1 - clip_coef), 1 + clip_coef) * a)
    return total / len(adv)


def value_loss(
    value: torch.Tensor,
    old_value: torch.Tensor,
    returns: torch.Tensor,
    clip_coef: float | None,
) -> torch.Tensor:
    """Half mean squared error of the critic, optionally clipped around the rollout's values.

    With ``clip_coef`` c: ``0.5 * max((v - R)^2, (v_old + clip(v - v_old, -c, c) - R)^2)``
    (detail: value function loss clipping); None: ``0.5 * (v - R)^2``.

    Args:
        value: (N,) current critic values.
        old_value: (N,) critic values at rollout time.
        returns: (N,) targets (GAE advantages + old values).
        clip_coef: clip range of the value change, or None for the plain loss.
    """
    unclipped = (value - returns) ** 2
    if clip_coef is None:
        return 0.5 * unclipped.mean()
    clipped = old_value + (value - old_value).clamp(-clip_coef, clip_coef)
    return 0.5 * torch.max(unclipped, (clipped - returns) ** 2).mean()


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """KL(old || new) by the k3 estimator ``(r - 1) - log r``: unbiased and never negative."""
    logratio = logp - old_logp
    return ((logratio.exp() - 1) - logratio).mean()


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """``1 - Var(target - pred) / Var(target)``: 1 is a perfect critic, 0 a constant one;
    NaN when the targets do not vary."""
    var = target.var()
    if not var > 0:
        return float("nan")
    return float(1 - (target - pred).var() / var)


def linear_anneal(update: int, total: int) -> float:
    """Learning-rate multiplier of update ``update`` (0-based) of ``total``: 1 down to 1/total
    (detail: learning-rate annealing, linear to 0 over the run)."""
    return 1.0 - update / max(total, 1)
