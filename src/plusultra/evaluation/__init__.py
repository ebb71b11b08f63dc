"""plusultra.evaluation."""
