"""plusultra.cli."""
