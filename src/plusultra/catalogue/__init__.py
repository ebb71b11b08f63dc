"""plusultra.catalogue."""
