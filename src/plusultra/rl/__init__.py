"""Reinforcement fine-tuning: batched trading environments (``protocol``, ``env``, ``market``,
``rewards``, ``gym``), PPO (``ppo``, ``module``), policies (``policy``), replay buffer
(``buffer``) and toy environments with a known optimum (``toy``)."""

from plusultra.rl.protocol import ACTION_KINDS, BatchedEnv, Observation

__all__ = ["ACTION_KINDS", "BatchedEnv", "Observation"]
