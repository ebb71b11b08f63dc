"""plusultra.data."""
