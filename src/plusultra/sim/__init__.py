"""plusultra.sim."""
