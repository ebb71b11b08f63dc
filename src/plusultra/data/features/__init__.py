"""Features: indicators, the feature registry, regimes, alternative data, cross-asset views."""
