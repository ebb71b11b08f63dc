"""plusultra.training."""
