"""PPO as a LightningModule with manual optimisation, on any ``rl.protocol.BatchedEnv``.

One Lightning training step = one PPO update: collect ``n_steps`` from every env of the batched
environment (torch end to end), compute GAE, then ``update_epochs`` passes of ``n_minibatches``
shuffled minibatches with the clipped losses, ``manual_backward``, gradient clipping by norm
(``self.clip_gradients``) and Adam (eps 1e-5). The train dataloader is a dummy iterable: the
update indices ``0 .. updates_per_epoch - 1`` of an epoch (``range``); the data come from the
environment. Every epoch starts fresh episodes (``env.reset(seed + epoch)``), so a run resumed
from an epoch-end checkpoint (module, optimiser, update counter, and the generator that samples
actions and minibatches, saved in ``on_save_checkpoint``) continues exactly as an uninterrupted
one; the env's RNG state is a function of that seed, so it needs no saving.

Environment curriculum (optional ``env_schedule``, e.g. `rl.schedule.EnvSchedule`: any object
with ``index(update) -> phase`` and ``apply(env, phase) -> dict of values to log``). At every
epoch start the phase of the current update is applied before the reset; when an update enters a
new phase mid-epoch, the phase is applied and every episode restarts with
``env.reset(seed + update)``. The phase is a function of ``updates`` alone, so a resume from an
epoch-end checkpoint stays exact.

The networks run in eval mode (dropout off) in the rollout and the update alike, so the
probability ratio compares the same function at two parameter values.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import lightning as L
import torch

from plusultra.errors import ConfigError
from plusultra.rl import ppo
from plusultra.rl.buffer import ReplayBuffer, bc_loss
from plusultra.rl.policy import ActorCritic, FreezeSchedule
from plusultra.rl.protocol import BatchedEnv, Observation


@dataclass(frozen=True)
class PPOSettings:
    """PPO hyperparameters (config keys ``ppo.<name>``)."""

    n_steps: int = 32  # rollout length per env and update
    update_epochs: int = 4  # passes over each rollout
    n_minibatches: int = 4  # minibatches per pass (each holds n_steps * n_envs / this env-steps)
    gamma: float = 0.99  # discount per step
    gae_lambda: float = 0.95  # GAE lambda
    clip_coef: float = 0.2  # ratio clip range of the surrogate objective
    clip_value: float | None = None  # clip range of the value change; None: plain value loss
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.0  # weight of the entropy bonus
    lr: float = 3e-4  # Adam learning rate (eps 1e-5)
    anneal_lr: bool = True  # linear decay of lr towards 0 over the run's updates
    max_grad_norm: float = 0.5  # global gradient-norm clip
    target_kl: float | None = None  # stop the update's epochs once approx KL exceeds it
    norm_adv: bool = True  # normalise advantages per minibatch
    ref_kl_coef: float = 0.0  # weight of KL(policy || supervised policy); needs a reference
    bc_coef: float = 0.0  # weight of the behaviour-cloning loss on the replay buffer; 0: off
    bc_capacity: int = 65536  # replay-buffer pairs kept when bc_coef > 0
    frozen_updates: int = 0  # updates with a frozen backbone at the start
    unfreeze_top: int | None = None  # afterwards train the top n blocks; None: all
    updates_per_epoch: int = 10  # PPO updates per Lightning epoch (the dummy loader's length)
    seed: int = 0  # seeds env resets (seed + epoch) and the sampling generator

    def __post_init__(self) -> None:
        ints = ("n_steps", "update_epochs", "n_minibatches", "updates_per_epoch", "bc_capacity")
        for key in ints:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"ppo.{key}={v!r} must be an integer >= 1")
        for key in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"ppo.{key}={getattr(self, key)!r} must be in [0, 1]")
        for key in ("clip_coef", "lr", "max_grad_norm"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"ppo.{key}={getattr(self, key)!r} must be > 0")
        for key in ("vf_coef", "ent_coef", "ref_kl_coef", "bc_coef"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"ppo.{key}={getattr(self, key)!r} must be >= 0")
        for key in ("clip_value", "target_kl"):
            v = getattr(self, key)
            if v is not None and not v > 0:
                raise ConfigError(f"ppo.{key}={v!r} must be > 0 or null")
        FreezeSchedule(self.frozen_updates, self.unfreeze_top)  # validates both keys

    @classmethod
    def keys(cls) -> list[str]:
        """The config keys, in order."""
        return [f.name for f in fields(cls)]


def _cat(obs: list[Observation]) -> Observation:
    """Stack T observations of E envs into one of T * E rows (lazy ones from one env stay
    lazy: the rollout then keeps row indices, not windows)."""
    return Observation.cat(obs)


def _rows(obs: Observation, idx: torch.Tensor) -> Observation:
    """Rows ``idx`` of a stacked observation (lazy windows are gathered by the forward)."""
    return obs.index(idx)


class PPOModule(L.LightningModule):
    """PPO on a batched environment.

    Args:
        policy: the actor-critic (``ActorCritic``, e.g. ``ActorCritic.from_forecast``).
        env: a ``BatchedEnv`` whose tensors live on the module's device.
        settings: hyperparameters.
        env_schedule: the environment curriculum (see the module docstring); None: none.
        feedback: analyst feedback as offline data (`rl.feedback.FeedbackPenalty`: its
            ``loss(policy, generator)`` is added to every minibatch's loss); None: none.
    """

    def __init__(
        self,
        policy: ActorCritic,
        env: BatchedEnv,
        settings: PPOSettings,
        env_schedule=None,
        feedback=None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        if policy.action_kind != env.action_kind:
            raise ConfigError(
                f"policy action_kind={policy.action_kind!r} but env action_kind={env.action_kind!r}"
            )
        if settings.ref_kl_coef > 0 and policy.reference is None:
            raise ConfigError(
                "ppo.ref_kl_coef > 0 needs a supervised reference (ActorCritic.from_forecast)"
            )
        self.policy, self.env, self.settings = policy, env, settings
        self.schedule = FreezeSchedule(settings.frozen_updates, settings.unfreeze_top)
        self.env_schedule = env_schedule
        self.feedback = feedback
        self._phase: int | None = None  # the env-schedule phase applied to the env
        self._phase_logs: dict[str, float] = {}
        self.buffer = ReplayBuffer(settings.bc_capacity) if settings.bc_coef > 0 else None
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))  # PPO updates done
        self.gen = torch.Generator()
        self.gen.manual_seed(settings.seed)
        self._obs: Observation | None = None
        self._ep_return = torch.zeros(env.n_envs)
        self._check_shapes()

    def _check_shapes(self) -> None:
        obs = self.env.reset(seed=self.settings.seed)
        try:
            with torch.no_grad():
                self.policy.to(obs.features.device)(obs)
        except RuntimeError as err:
            raise ConfigError(
                f"the policy cannot read the env's observations, features (E, S, W, F) = "
                f"{tuple(obs.features.shape)}; does the backbone's n_features match the env's "
                f"{self.env.n_features}? ({err})"
            ) from None

    def train_dataloader(self):
        """The update indices of one epoch: a dummy iterable, the data come from the env."""
        return range(self.settings.updates_per_epoch)

    def configure_optimizers(self):
        params = [p for n, p in self.policy.named_parameters() if not n.startswith("reference.")]
        return torch.optim.Adam(params, lr=self.settings.lr, eps=1e-5)

    def on_fit_start(self) -> None:
        if self.gen.device != self.device:  # sample where the policy runs
            self.gen = torch.Generator(device=self.device)
            self.gen.manual_seed(self.settings.seed + int(self.updates))
        self._restore_generator()

    def _enter_phase(self, update: int) -> bool:
        """Apply the env-schedule phase of ``update`` if it is not the env's; True if applied."""
        index = self.env_schedule.index(update)
        if index == self._phase:
            return False
        self._phase_logs = dict(self.env_schedule.apply(self.env, index) or {})
        self._phase = index
        return True

    def on_train_epoch_start(self) -> None:
        if self.env_schedule is not None:
            self._phase = None  # apply it again: a resumed run's env starts without it
            self._enter_phase(int(self.updates))
        self._obs = self.env.reset(seed=self.settings.seed + self.current_epoch)
        self._ep_return = torch.zeros(self.env.n_envs, device=self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["ppo_generator"] = self.gen.get_state()  # a uint8 tensor: weights_only-safe
        checkpoint["ppo_generator_device"] = self.gen.device.type

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "ppo_generator" in checkpoint:
            self._saved_gen = (checkpoint["ppo_generator_device"], checkpoint["ppo_generator"])
            self._restore_generator()

    def _restore_generator(self) -> None:
        """Set the sampling generator to the checkpoint's state. A state saved on another
        device type (CPU vs CUDA) cannot carry over: the generator is then seeded with
        ``seed + updates`` instead, and the resumed run differs from an uninterrupted one."""
        saved = getattr(self, "_saved_gen", None)
        if saved is not None and saved[0] == self.gen.device.type:
            self.gen.set_state(saved[1].cpu())

    @torch.no_grad()
    def rollout(self) -> dict:
        """``n_steps`` from every env with the current policy: the flat batch (rows in (t, env)
        order) and diagnostics. Stored observations are the env's as returned: ``step`` must
        return fresh tensors (or views of data it never overwrites); lazy windows
        (`protocol.LazyWindows`, `TradingEnv`'s) are kept as row indices and gathered per
        minibatch."""
        s, pol, env = self.settings, self.policy, self.env
        obs_list, acts, logps, values, rewards, terms, truncs, refs = [], [], [], [], [], [], [], []
        final_v = torch.zeros(s.n_steps, env.n_envs, device=self.device)
        finished: list[torch.Tensor] = []
        obs = self._obs
        # the supervised policy on each observation, once per step: the residual's base, the
        # KL penalty's target and the cloned actions (minibatches reuse it)
        with_ref = pol.residual or s.ref_kl_coef > 0 or self.buffer is not None
        for t in range(s.n_steps):
            # gather a lazy observation's windows once for both forwards; the batch keeps `obs`
            view = obs.materialize() if with_ref else obs
            ref = pol.reference_target(view) if with_ref else None
            out = pol(view, base=ref)
            action = pol.sample(out, self.gen)
            logp, _ = pol.log_prob_entropy(out, action, obs.mask)
            if with_ref:
                refs.append(ref)
            nxt, reward, term, trunc, info = env.step(pol.env_action(action))
            done_index = info.get("done_index")
            if done_index is not None and len(done_index):  # ended episodes' last states
                final_v[t, done_index] = pol.value(info["final_observation"])  # bootstrap
            self._ep_return += reward
            done = term | trunc
            finished.append(self._ep_return[done])
            self._ep_return[done] = 0
            obs_list.append(obs), acts.append(action), logps.append(logp), values.append(out.value)
            rewards.append(reward), terms.append(term), truncs.append(trunc)
            obs = nxt
        self._obs = obs
        values_t = torch.stack(values)  # (T, E)
        term_t, trunc_t = torch.stack(terms), torch.stack(truncs)
        next_v = torch.cat([values_t[1:], pol.value(obs)[None]])  # (T, E)
        next_v = torch.where(term_t | trunc_t, final_v, next_v)
        rewards_t = torch.stack(rewards)
        adv, ret = ppo.gae(rewards_t, values_t, next_v, term_t, trunc_t, s.gamma, s.gae_lambda)
        batch = {
            "obs": _cat(obs_list), "action": torch.cat(acts), "logp": torch.cat(logps),
            "value": values_t.reshape(-1), "adv": adv.reshape(-1), "ret": ret.reshape(-1),
            "next_value": next_v.reshape(-1),
        }  # fmt: skip
        if refs:
            batch["ref"] = torch.cat(refs)
        ended = torch.cat(finished)
        batch["episode_return"] = ended.mean() if len(ended) else None
        batch["reward"] = rewards_t.mean()
        return batch

    def _minibatch_loss(self, batch: dict, idx: torch.Tensor, stats: dict) -> torch.Tensor | None:
        """The PPO loss of one minibatch, or None when the KL early stop fires."""
        s, pol = self.settings, self.policy
        obs = _rows(batch["obs"], idx)
        out = pol(obs, base=batch["ref"][idx] if pol.residual else None)  # cached reference
        logp, ent = pol.log_prob_entropy(out, batch["action"][idx], obs.mask)
        kl = ppo.approx_kl(logp.detach(), batch["logp"][idx])
        stats["approx_kl"].append(kl)
        if s.target_kl is not None and kl > s.target_kl:
            return None
        adv = batch["adv"][idx]
        adv = ppo.normalize_advantages(adv) if s.norm_adv else adv
        pg, clip_frac = ppo.policy_loss(logp, batch["logp"][idx], adv, s.clip_coef)
        vl = ppo.value_loss(out.value, batch["value"][idx], batch["ret"][idx], s.clip_value)
        loss = pg - s.ent_coef * ent.mean() + s.vf_coef * vl
        aux = getattr(pol.backbone, "aux_loss", None)  # e.g. MoE load balancing, weighted
        if aux is not None:  # as in supervised training (set by this minibatch's forward)
            loss = loss + aux
            stats["aux_loss"].append(aux.detach())
        for name, v in (
            ("policy_loss", pg),
            ("value_loss", vl),
            ("entropy", ent.mean()),
            ("clip_fraction", clip_frac),
        ):
            stats[name].append(v.detach())
        if s.ref_kl_coef > 0:
            ref_kl = pol.kl_to_reference(out, batch["ref"][idx], obs.mask).mean()
            loss = loss + s.ref_kl_coef * ref_kl
            stats["ref_kl"].append(ref_kl.detach())
        if self.buffer is not None:
            bc = bc_loss(pol, *self.buffer.sample_with_base(len(idx), self.gen))
            loss = loss + s.bc_coef * bc
            stats["bc_loss"].append(bc.detach())
        if self.feedback is not None:  # analyst vetoes and approvals (rl.feedback)
            penalty, parts = self.feedback.loss(pol, self.gen)
            loss = loss + penalty
            for name, v in parts.items():
                stats[name].append(v)
        return loss

    def training_step(self, batch_idx_unused, batch_idx: int) -> None:
        s, pol = self.settings, self.policy
        pol.train(False)  # dropout off: the ratio must compare one function at two parameters
        update = int(self.updates)
        if self.env_schedule is not None and self._enter_phase(update):  # a new phase mid-epoch
            self._obs = self.env.reset(seed=s.seed + update)  # restart every episode in it
            self._ep_return = torch.zeros(self.env.n_envs, device=self.device)
        trainable = self.schedule.apply(pol.backbone, update)
        opt = self.optimizers()
        if s.anneal_lr:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            for group in opt.param_groups:
                group["lr"] = s.lr * ppo.linear_anneal(update, total)
        batch = self.rollout()
        if self.buffer is not None and pol.reference is not None:  # supervised actions to clone
            base = batch["ref"] if pol.residual else None  # the residual's, for bc_loss
            self.buffer.add(batch["obs"], pol.reference_action(batch["ref"]), base)
        names = ("policy_loss", "value_loss", "entropy", "clip_fraction", "approx_kl")
        names += ("ref_kl", "bc_loss", "aux_loss", "grad_norm", "feedback_veto", "feedback_approve")
        stats: dict[str, list] = {k: [] for k in names}
        n = len(batch["adv"])
        steps, stop = 0, False
        for _ in range(s.update_epochs):
            perm = torch.randperm(n, generator=self.gen, device=self.gen.device).to(self.device)
            for idx in perm.tensor_split(s.n_minibatches):
                loss = self._minibatch_loss(batch, idx, stats)
                if loss is None:
                    stop = True
                    break
                opt.zero_grad()
                self.manual_backward(loss)
                grads = [p.grad for p in pol.parameters() if p.grad is not None]
                stats["grad_norm"].append(
                    torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g) for g in grads])
                    )
                )
                self.clip_gradients(
                    opt, gradient_clip_val=s.max_grad_norm, gradient_clip_algorithm="norm"
                )
                opt.step()
                steps += 1
            if stop:
                break
        self.updates += 1
        logs = {f"train/{k}": torch.stack(v).mean() for k, v in stats.items() if v}
        logs["train/explained_variance"] = ppo.explained_variance(batch["value"], batch["ret"])
        logs["train/minibatch_steps"] = float(steps)
        logs["train/kl_stop"] = float(stop)
        logs["train/reward"] = batch["reward"]
        logs["train/lr"] = opt.param_groups[0]["lr"]
        logs["train/backbone_trainable"] = float(trainable)
        if pol.action_kind == "continuous":
            logs["train/std"] = pol.log_std.exp().detach()
        if batch["episode_return"] is not None:
            logs["train/episode_return"] = batch["episode_return"]
        logs.update({f"train/{k}": float(v) for k, v in self._phase_logs.items()})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=1)
        self.last_logs = {k: float(v) for k, v in logs.items()}
