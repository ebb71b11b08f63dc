"""PlusUltra: a Hydra-configured research framework for deep-learning trading agents."""

__version__ = "0.1.0"
