"""plusultra.models."""
