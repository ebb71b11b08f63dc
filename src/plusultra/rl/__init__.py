"""Reinforcement learning: batched trading environments (``protocol``, ``env``, ``rewards``,
``gym``)."""

from plusultra.rl.protocol import ACTION_KINDS, BatchedEnv, Observation

__all__ = ["ACTION_KINDS", "BatchedEnv", "Observation"]
