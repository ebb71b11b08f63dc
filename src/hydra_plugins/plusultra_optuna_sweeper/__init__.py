"""A Hydra sweeper on current Optuna (>= 4), schema-compatible with hydra-optuna-sweeper.

Selected with ``hydra/sweeper=plusultra_optuna``. It knows Hydra and Optuna only. See
docs/sweeps.md for its keys, the search-space syntax and the storage and resume rules.
"""
