"""The service's own Prometheus metrics (prometheus-client), in a registry per app.

HTTP metrics (request counts, latency, sizes by handler and status) come from
prometheus-fastapi-instrumentator on the same registry; these are the model's telemetry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Model latency: one forward pass over the request's windows (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Step-1 forecasts (forward log return; a position head: its position in [-1, 1]).
PREDICTION_BUCKETS = (
    -1.0,
    -0.1,
    -0.05,
    -0.02,
    -0.01,
    -0.005,
    0.0,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    1.0,
)


class ServiceMetrics:
    """Model latency, prediction distribution, guardrail hits and feature drift.

    Names (all prefixed ``plusultra_``): ``model_latency_seconds`` (histogram),
    ``prediction`` (histogram of step-1 forecasts), ``guardrail_hits_total{rule}``,
    ``feature_psi{feature}``, ``feature_ks{feature}``, ``drift_features{level}``,
    ``drift_warnings``, ``predict_rejected_total{reason}``, ``model_reloads_total``,
    ``model_loaded_timestamp_seconds``.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        p = "plusultra_"
        self.latency = Histogram(
            p + "model_latency_seconds",
            "Model forward pass over one request's windows",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prediction = Histogram(
            p + "prediction",
            "Step-1 forecast (forward log return) of each symbol served",
            buckets=PREDICTION_BUCKETS,
            registry=registry,
        )
        self.guardrail_hits = Counter(
            p + "guardrail_hits", "Guardrail interventions by rule", ["rule"], registry=registry
        )
        self.psi = Gauge(
            p + "feature_psi",
            "PSI of a feature vs the training data",
            ["feature"],
            registry=registry,
        )
        self.ks = Gauge(
            p + "feature_ks",
            "Kolmogorov-Smirnov statistic of a feature vs the training data",
            ["feature"],
            registry=registry,
        )
        self.drift_features = Gauge(
            p + "drift_features", "Features by drift level", ["level"], registry=registry
        )
        self.drift_warnings = Gauge(
            p + "drift_warnings", "Regime-shift warnings now raised", registry=registry
        )
        self.rejected = Counter(
            p + "predict_rejected",
            "Refused predict requests by reason",
            ["reason"],
            registry=registry,
        )
        self.reloads = Counter(p + "model_reloads", "Model (re)loads", registry=registry)
        self.loaded = Gauge(
            p + "model_loaded_timestamp_seconds",
            "When the served model was loaded",
            registry=registry,
        )

    def record_drift(self, table, warnings: list[str]) -> None:
        """Set the drift gauges from a `drift_table` frame (feature, psi, ks_stat, level)."""
        for row in table.itertuples(index=False):
            self.psi.labels(feature=row.feature).set(float(row.psi))
            self.ks.labels(feature=row.feature).set(float(row.ks_stat))
        for level in ("none", "moderate", "major"):
            self.drift_features.labels(level=level).set(int((table["level"] == level).sum()))
        self.drift_warnings.set(len(warnings))
