"""A conditional search space for the custom_search_space test: z exists only when y is 1."""


def suggest(cfg, trial) -> None:
    """Suggest z in [5, 6] for trials that drew y = 1."""
    if trial.params["y"] == 1:
        trial.suggest_int("z", 5, 6)
