"""The inference service (`plusultra-serve`: FastAPI app, served model, metrics, API key) and
the analyst-feedback store.

Kept free of imports: `plusultra.service.feedback` (a plain SQLite store) is read by the RL stage,
which must not pull in the web stack.
"""
