"""The inference service (`plusultra-serve`): FastAPI app, served model, metrics, API key."""
