"""Reinforcement fine-tuning: batched trading environments, PPO, policies and buffers."""
