"""Actor-critic on one of our backbones, warm-started from a supervised ``ForecastModule``.

Per symbol, the window ``(W, F)`` goes through the backbone; its last token (which covers the
decision bar, see ``models.backbones``) is concatenated with the symbol's current position and
the env's cash: ``z`` of width D + 2. The policy head maps each symbol's ``z`` to its action
distribution; the value head maps the mean of ``z`` over tradable symbols to one value per env.

Continuous actions: a Gaussian with an unbounded mean (a Linear output) and a learned,
state-independent log-std per policy (not per symbol); the environment receives the sample
clipped to [-1, 1] (``env_action``) and PPO scores the *unclipped* sample, whose log-density is
the plain Gaussian one. Clipping is a fixed map applied by the environment side, so the ratio of
two policies' densities of the raw sample is the correct importance weight (cleanrl's choice); a
tanh-squashed Gaussian would need a Jacobian term and has no closed-form entropy. The greedy
action is ``clamp(mean, -1, 1)``. Discrete actions: a Categorical over (sell, hold, buy)
(``models.heads.ACTIONS``). A step's log-probability and entropy are sums over tradable symbols.

Residual policy (``residual=True``, needs the supervised reference): the policy head's output is
added to the frozen supervised policy, expressed in the action space by ``reference_target``
(the "base"). Continuous: ``mean = reference_position + pi(z)``; discrete: ``logits =
log(reference probabilities) + pi(z)``. The head starts near zero (output gain 0.01), so PPO's
update 0 acts like the supervised policy rather than a flat book. The base is a function of the
observation only: the rollout computes it once per step and passes it to ``forward(obs,
base=...)`` for the update's minibatches; without it, ``forward`` computes it itself.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.heads import policy_position
from plusultra.rl.protocol import Observation

ACTION_KINDS = ("continuous", "discrete")


def orthogonal_init(layer: nn.Linear, gain: float) -> nn.Linear:
    """Orthogonal weights with ``gain`` and zero bias (detail: orthogonal initialisation)."""
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _head(d_in: int, hidden: int, out: int, out_gain: float) -> nn.Sequential:
    """Linear -> tanh -> Linear, hidden gain sqrt(2), output gain ``out_gain`` (cleanrl)."""
    return nn.Sequential(
        orthogonal_init(nn.Linear(d_in, hidden), math.sqrt(2)),
        nn.Tanh(),
        orthogonal_init(nn.Linear(hidden, out), out_gain),
    )


@dataclass
class PolicyOutput:
    """One forward pass: the action distribution's parameters and the values.

    Attributes:
        mean: (E, S) Gaussian means (continuous) or None.
        log_std: () shared log-std (continuous) or None.
        logits: (E, S, 3) action logits (discrete) or None.
        value: (E,) value per env.
    """

    mean: torch.Tensor | None
    log_std: torch.Tensor | None
    logits: torch.Tensor | None
    value: torch.Tensor


class ActorCritic(nn.Module):
    """Policy and value heads on a shared backbone.

    Args:
        backbone: (B, W, F) -> (B, W', D) with attribute ``d_out`` = D (any registered one).
        action_kind: "continuous" or "discrete", as the environment's ``action_kind``.
        hidden: width of the hidden layer of both heads.
        log_std_init: initial log-std of the continuous Gaussian.
        reference: frozen supervised model (backbone + head, called on (B, W, F)) whose output
            defines the supervised policy for the KL penalty and behaviour cloning (see
            ``reference_position``); None: none.
        forecast_scale: a forecast head's signal (target units: multiples of the targets' train
            RMS) times this, clipped to [-1, 1], is the supervised position (the targets' train
            RMS gives the forecast in return units, as ``evaluation=weights`` trades it).
        signal_index: which forecast step of a forecast head is read as the position (0: the
            first; ``evaluation.signal_step - 1`` to match the supervised backtest).
        residual: the policy is a residual on the supervised reference (see the module
            docstring); needs ``reference``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        action_kind: str = "continuous",
        hidden: int = 64,
        log_std_init: float = -0.5,
        reference: nn.Module | None = None,
        forecast_scale: float = 1.0,
        residual: bool = False,
        signal_index: int = 0,
    ) -> None:
        super().__init__()
        if action_kind not in ACTION_KINDS:
            raise ConfigError(f"unknown action_kind {action_kind!r}; valid: {list(ACTION_KINDS)}")
        if residual and reference is None:
            raise ConfigError(
                "policy.residual=true needs a supervised reference policy to add the residual "
                "to (ActorCritic.from_forecast); set policy.residual=false or warm-start"
            )
        d = int(backbone.d_out) + 2  # last token, position, cash
        self.backbone, self.action_kind = backbone, action_kind
        # a residual's head starts at exactly 0, so the policy starts as the reference itself
        out_gain = 0.0 if residual else 0.01
        self.pi = _head(d, hidden, 1 if action_kind == "continuous" else 3, out_gain)
        self.v = _head(d, hidden, 1, 1.0)
        self.log_std = nn.Parameter(torch.tensor(float(log_std_init)))
        if action_kind == "discrete":
            self.log_std.requires_grad_(False)  # unused: keep it out of the optimiser's steps
        self.reference = reference
        if reference is not None:
            reference.requires_grad_(False).eval()
        self.forecast_scale, self.residual = float(forecast_scale), bool(residual)
        self.signal_index = int(signal_index)

    def train(self, mode: bool = True) -> ActorCritic:
        """Set the training mode of the trainable parts; the frozen reference stays in eval
        mode (dropout off), so the supervised policy is one deterministic function."""
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()
        return self

    @classmethod
    def from_forecast(cls, module: nn.Module, action_kind: str = "continuous", **kw) -> ActorCritic:
        """Warm start: a copy of a ForecastModule's backbone, plus a frozen copy of the whole
        module (backbone + head) as the supervised reference policy."""
        if getattr(module, "embedding", None) is not None:
            raise ConfigError(
                "the source ForecastModule has a market-state embedding whose per-bar labels "
                "the environment does not provide; warm-start from a model without one"
            )
        reference = _Reference(copy.deepcopy(module.backbone), copy.deepcopy(module.head))
        return cls(copy.deepcopy(module.backbone), action_kind, reference=reference, **kw)

    def _tokens(self, obs: Observation) -> torch.Tensor:
        """(E, S, D + 2): each symbol's last backbone token, position and the env's cash."""
        x = obs.features  # read once: a lazy observation gathers on every access
        E, S, W, F = x.shape
        h = self.backbone(x.reshape(E * S, W, F))[:, -1]  # (E * S, D)
        cash = obs.cash[:, None, None].expand(E, S, 1)
        return torch.cat([h.reshape(E, S, -1), obs.position[..., None], cash], dim=-1)

    def _value(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(E,) values from the tokens z (E, S, D + 2): the MLP of their mean over tradable
        symbols."""
        m = mask[..., None].to(z.dtype)  # (E, S, 1)
        pooled = (z * m).sum(1) / m.sum(1).clamp_min(1)  # (E, D + 2)
        return self.v(pooled)[:, 0]

    def forward(self, obs: Observation, base: torch.Tensor | None = None) -> PolicyOutput:
        """Distribution parameters and values for a batch of observations.

        Args:
            obs: the observations (E rows).
            base: ``reference_target(obs)`` computed beforehand ((E, S) or (E, S, 3)), for a
                residual policy; None: computed here. Ignored by a non-residual policy.
        """
        z = self._tokens(obs)  # (E, S, D + 2)
        value = self._value(z, obs.mask)
        out = self.pi(z)  # (E, S, 1) or (E, S, 3)
        if self.residual and base is None:
            base = self.reference_target(obs)
        if self.action_kind == "continuous":
            mean = out[..., 0] + base if self.residual else out[..., 0]  # (E, S)
            return PolicyOutput(mean, self.log_std, None, value)
        logits = out + base.log() if self.residual else out  # (E, S, 3)
        return PolicyOutput(None, None, logits, value)

    def value(self, obs: Observation) -> torch.Tensor:
        """(E,) values alone (no policy head, no reference): GAE's bootstrap."""
        return self._value(self._tokens(obs), obs.mask)

    def log_prob_entropy(
        self, out: PolicyOutput, action: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(E,) joint log-probability of ``action`` (E, S) and (E,) entropy over tradable
        symbols."""
        m = mask.to(out.value.dtype)
        if self.action_kind == "continuous":
            std = out.log_std.exp()
            lp = (
                -((action - out.mean) ** 2) / (2 * std**2)
                - out.log_std
                - 0.5 * math.log(2 * math.pi)
            )
            ent = (0.5 + 0.5 * math.log(2 * math.pi) + out.log_std).expand_as(out.mean)
        else:
            logq = torch.log_softmax(out.logits, dim=-1)  # (E, S, 3)
            lp = logq.gather(-1, action[..., None])[..., 0]
            ent = -(logq.exp() * logq).sum(-1)
        return (lp * m).sum(1), (ent * m).sum(1)

    def sample(self, out: PolicyOutput, generator: torch.Generator | None = None) -> torch.Tensor:
        """An action (E, S) drawn from the policy with ``generator`` (continuous: unclipped)."""
        if self.action_kind == "continuous":
            noise = torch.randn(out.mean.shape, generator=generator, device=out.mean.device)
            return out.mean + out.log_std.exp() * noise
        probs = torch.softmax(out.logits, dim=-1).reshape(-1, 3)
        draw = torch.multinomial(probs, 1, generator=generator)
        return draw.reshape(out.logits.shape[:-1])

    def greedy(self, out: PolicyOutput) -> torch.Tensor:
        """The deterministic action (E, S): the clipped mean, or the most likely action."""
        if self.action_kind == "continuous":
            return out.mean.clamp(-1, 1)
        return out.logits.argmax(-1)

    def env_action(self, action: torch.Tensor) -> torch.Tensor:
        """What the environment receives: continuous samples clipped to [-1, 1]."""
        return action.clamp(-1, 1) if self.action_kind == "continuous" else action

    @torch.no_grad()
    def reference_position(self, obs: Observation) -> torch.Tensor | None:
        """The supervised policy's position (E, S) in [-1, 1], or None without a reference.

        With a position head (``PolicyHead``): its position (discrete: P(buy) - P(sell)). With
        a forecast head: ``clip(forecast_scale * signal[:, signal_index], -1, 1)``, the forecast
        read as a position, as the supervised backtests trade it.
        """
        if self.reference is None:
            return None
        x = obs.features  # read once (lazy observations gather on access)
        E, S, W, F = x.shape
        return self.reference.position(
            x.reshape(E * S, W, F), self.forecast_scale, self.signal_index
        ).reshape(E, S)

    @torch.no_grad()
    def reference_target(self, obs: Observation) -> torch.Tensor | None:
        """The supervised policy as this policy's action distribution, or None.

        Continuous: its position (E, S) (``reference_position``), the mean of a Gaussian.
        Discrete: action probabilities (E, S, 3) over (sell, hold, buy): a discrete PolicyHead's
        own softmax; otherwise the Categorical whose expected position is the reference
        position (mass |p| on buy or sell, the rest on hold). Both are smoothed with 1 %
        uniform mass, so every log is finite.
        """
        if self.reference is None:
            return None
        if self.action_kind == "continuous":
            return self.reference_position(obs)
        feats = obs.features  # read once (lazy observations gather on access)
        E, S, W, F = feats.shape
        x = feats.reshape(E * S, W, F)
        probs = self.reference.probabilities(x)
        if probs is None:
            p = self.reference_position(obs).reshape(-1)
            probs = torch.stack([(-p).clamp_min(0), 1 - p.abs(), p.clamp_min(0)], dim=-1)
        return (0.99 * probs + 0.01 / 3).reshape(E, S, 3)

    def kl_to_reference(
        self, out: PolicyOutput, target: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(E,) KL(policy || supervised policy), summed over tradable symbols.

        ``target`` is ``reference_target``'s. Continuous: the supervised policy is a Gaussian
        centred on the reference position with the current std (detached), so the KL is
        ``(mean - ref)^2 / (2 std^2)``. Discrete: ``sum_a pi(a) (log pi(a) - log ref(a))``.
        For a residual policy both penalise the residual itself: continuous ``mean - ref`` is
        the head's output, and discrete ``log pi - log ref`` is its logits minus their
        log-sum-exp.
        """
        m = mask.to(out.value.dtype)
        if self.action_kind == "continuous":
            var = (2 * out.log_std.detach()).exp()
            return (((out.mean - target) ** 2) / (2 * var) * m).sum(1)
        logq = torch.log_softmax(out.logits, dim=-1)
        return ((logq.exp() * (logq - target.log())).sum(-1) * m).sum(1)

    def reference_action(self, target: torch.Tensor) -> torch.Tensor:
        """The supervised action to clone from a ``reference_target``: the position
        (continuous) or the most likely of sell/hold/buy (discrete)."""
        return target if self.action_kind == "continuous" else target.argmax(-1)


class _Reference(nn.Module):
    """The frozen supervised model: backbone then head, read as a position."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head

    def position(self, x: torch.Tensor, forecast_scale: float, index: int = 0) -> torch.Tensor:
        """x (B, W, F) -> (B,) positions in [-1, 1] (a forecast head: step ``index``)."""
        out = self.head(self.backbone(x))
        if getattr(self.head, "kind", None) == "position":
            return policy_position(out)
        return (forecast_scale * self.head.signal(out)[:, index]).clamp(-1, 1)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor | None:
        """x (B, W, F) -> (B, 3) action probabilities of a discrete PolicyHead, else None."""
        if getattr(self.head, "kind", None) != "position" or self.head.mode != "discrete":
            return None
        return torch.softmax(self.head(self.backbone(x)), dim=-1)


@dataclass(frozen=True)
class FreezeSchedule:
    """Which backbone parameters train at each PPO update.

    Updates ``< frozen_updates``: the whole backbone is frozen (the heads learn on the
    pretrained features). From then on: ``unfreeze_top`` None trains the whole backbone; an
    int n trains the top n blocks (``backbone.blocks[-n:]``) only, the stem (input embedding,
    positions) and the final norm stay frozen; 0 keeps the backbone frozen for good.

    Attributes:
        frozen_updates: updates with a fully frozen backbone (>= 0).
        unfreeze_top: blocks trained afterwards, counted from the top; None for all.
    """

    frozen_updates: int = 0
    unfreeze_top: int | None = None

    def __post_init__(self) -> None:
        if self.frozen_updates < 0:
            raise ConfigError(f"ppo.frozen_updates={self.frozen_updates} must be >= 0")
        if self.unfreeze_top is not None and self.unfreeze_top < 0:
            raise ConfigError(f"ppo.unfreeze_top={self.unfreeze_top} must be >= 0 or null")

    def apply(self, backbone: nn.Module, update: int) -> int:
        """Set ``requires_grad`` on the backbone for update ``update``; returns the number of
        trainable backbone parameters (elements)."""
        if update < self.frozen_updates:
            backbone.requires_grad_(False)
        elif self.unfreeze_top is None:
            backbone.requires_grad_(True)
        else:
            blocks = getattr(backbone, "blocks", None)
            if not isinstance(blocks, nn.ModuleList):
                raise ConfigError(
                    f"ppo.unfreeze_top needs a backbone with `blocks`; "
                    f"{type(backbone).__name__} has none"
                )
            if self.unfreeze_top > len(blocks):
                raise ConfigError(
                    f"ppo.unfreeze_top={self.unfreeze_top} exceeds the backbone's "
                    f"{len(blocks)} blocks"
                )
            backbone.requires_grad_(False)
            for block in list(blocks)[len(blocks) - self.unfreeze_top :]:
                block.requires_grad_(True)
        return sum(p.numel() for p in backbone.parameters() if p.requires_grad)
