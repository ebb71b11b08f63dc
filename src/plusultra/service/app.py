"""The FastAPI app of `plusultra-serve`: predict, health, model, metrics, reload.

`create_app(run_dir=...)` or `create_app(champion=...)` loads the model (and warms it up)
before it returns, so a server built from it answers its first request at full speed. Every
refused request is a 4xx with a JSON body whose ``detail`` says what is wrong and where; a 5xx
is a bug. Inference endpoints are plain ``def`` functions, which FastAPI runs in its threadpool
(the event loop never waits on torch).

With a champion pointer (a JSON file ``{"run_dir": ..., "promoted_at": ..., "metric": ...,
"value": ..., "previous": ...}``, written atomically by `plusultra-retrain`), a watcher thread
re-reads it every `poll_seconds` (1 s) and loads the new run when its ``run_dir`` changes; the
old model serves until the new one is loaded and warmed up. A pointer that cannot be read, or
a run that cannot be loaded, leaves the old model serving and is reported by GET /health.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator

from plusultra.errors import ConfigError, DataError
from plusultra.service.hooks import (
    DriftFactory,
    GuardrailsFactory,
    default_drift,
    default_guardrails,
)
from plusultra.service.limits import BodyLimit
from plusultra.service.metrics import ServiceMetrics
from plusultra.service.model import LoadedModel, RequestError, ServiceLimits
from plusultra.service.schemas import Health, PredictRequest, PredictResponse, ReloadResponse
from plusultra.service.security import require_api_key

log = logging.getLogger(__name__)


def read_champion(path: Path) -> Path:
    """The run directory a champion pointer names.

    Raises:
        ConfigError: the file is missing, not JSON, or has no string ``run_dir``.
    """
    try:
        pointer = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"champion pointer {path}: cannot read it ({exc})") from None
    run_dir = pointer.get("run_dir") if isinstance(pointer, dict) else None
    if not isinstance(run_dir, str) or not run_dir:
        raise ConfigError(f"champion pointer {path}: needs a string 'run_dir', got {pointer!r}")
    return Path(run_dir)


class ModelHolder:
    """The model being served and how to replace it (a reload, or a new champion)."""

    def __init__(self, load, run_dir: Path | None, champion: Path | None, metrics) -> None:
        self._load, self.champion, self.metrics = load, champion, metrics
        self.source = read_champion(champion) if champion is not None else Path(run_dir)
        self.model: LoadedModel = load(self.source)
        self.error: str | None = None
        self._swap = threading.Lock()
        self.on_load = None  # called with each newly loaded model (the app's state follows it)
        self._loaded()

    def _loaded(self) -> None:
        self.metrics.reloads.inc()
        self.metrics.loaded.set(datetime.now(UTC).timestamp())
        if self.on_load is not None:
            self.on_load(self.model)

    def reload(self, force: bool) -> bool:
        """Load the champion's run when it changed (or the same run when `force`); True when
        a model was (re)loaded. Errors propagate; the old model keeps serving."""
        with self._swap:
            source = read_champion(self.champion) if self.champion is not None else self.source
            if not force and source.resolve() == self.model.run_dir:
                return False
            model = self._load(source)  # loads and warms up before it is swapped in
            self.model, self.source, self.error = model, source, None
            self._loaded()
            log.info("serving %s", model.run_dir)
            return True

    def poll(self) -> None:
        """One watcher check: reload on a new champion; record (not raise) a failure."""
        try:
            self.reload(force=False)
        except Exception as exc:  # noqa: BLE001 - the watcher outlives any failed load
            if str(exc) != self.error:
                log.error("champion reload failed, still serving %s: %s", self.model.run_dir, exc)
            self.error = str(exc)


def create_app(
    run_dir: str | Path | None = None,
    champion: str | Path | None = None,
    api_key: str | None = None,
    limits: ServiceLimits | None = None,
    device: str | None = None,
    precision: str | None = None,
    compile: bool = False,
    routers: Sequence[APIRouter] = (),
    guardrails_factory: GuardrailsFactory = default_guardrails,
    drift_factory: DriftFactory = default_drift,
    poll_seconds: float = 1.0,
) -> FastAPI:
    """The service app, its model loaded and warmed up.

    Args:
        run_dir: a finished run to serve; or
        champion: a champion pointer file to follow (exactly one of the two).
        api_key: the key POST /reload (and any mutating router) requires in X-API-Key;
            None: no key.
        limits: request bounds (symbols, bars per symbol, body bytes); None: the defaults.
        device, precision: override the run's inference device / precision.
        compile: torch.compile the one-window forward pass at warm-up (`LoadedModel`).
        routers: more routers to mount (e.g. the analyst review router).
        guardrails_factory, drift_factory: see `plusultra.service.hooks`.
        poll_seconds: how often the champion pointer is checked.
    """
    if (run_dir is None) == (champion is None):
        raise ConfigError("serve exactly one of a run directory or a --champion pointer")
    limits = limits or ServiceLimits()
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)

    def load(path: Path) -> LoadedModel:
        return LoadedModel(
            path, device, precision, limits, guardrails_factory, drift_factory, compile=compile
        )

    holder = ModelHolder(load, run_dir, None if champion is None else Path(champion), metrics)
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(poll_seconds):
            holder.poll()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        watcher = None
        if holder.champion is not None:
            watcher = threading.Thread(target=watch, name="champion-watcher", daemon=True)
            watcher.start()
        yield
        stop.set()
        if watcher is not None:
            watcher.join(timeout=5)

    app = FastAPI(
        title="plusultra-serve",
        description="Forecasts, guarded positions and telemetry of a finished PlusUltra run.",
        lifespan=lifespan,
    )
    app.state.api_key, app.state.holder, app.state.metrics = api_key, holder, metrics

    def follow(model: LoadedModel) -> None:  # the review router reviews the served run
        app.state.run_dir = str(model.run_dir)

    holder.on_load = follow
    follow(holder.model)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    _errors(app, metrics)

    @app.post("/predict", response_model=PredictResponse)
    def predict(request: PredictRequest, response: Response) -> dict:
        """Forecasts, proposed and guarded positions for the requested symbols' last bar.
        Positions are decided at that bar's close and are to be filled at the next bar. The
        ``Server-Timing`` header gives the model's forward pass (``model;dur=`` ms) and the
        whole decision (``predict;dur=`` ms: inputs, forward, positions, guardrails, drift)."""
        start = time.perf_counter()
        result = holder.model.predict(request)
        metrics.latency.observe(result["seconds"])
        handled = (time.perf_counter() - start) * 1000
        response.headers["Server-Timing"] = (
            f"model;dur={result['seconds'] * 1000:.3f}, predict;dur={handled:.3f}"
        )
        for value in result["step1"]:
            metrics.prediction.observe(float(value))
        for event in result["events"]:
            metrics.guardrail_hits.labels(rule=event.rule).inc()
        if result["drift_updated"]:  # the gauges change only when the monitor does
            metrics.record_drift(result["drift_table"], result["drift_warnings"])
        return result["response"]

    @app.get("/health", response_model=Health)
    def health() -> dict:
        """Liveness and what is served; ``degraded`` when the last champion reload failed."""
        status = "ok" if holder.error is None else f"degraded: {holder.error}"
        model = holder.model
        return {"status": status, "run_dir": str(model.run_dir), "loaded_at": model.loaded_at}

    @app.get("/model")
    def model_info() -> dict:
        """Config, data range and metrics of the served run."""
        return holder.model.describe()

    @app.post("/reload", response_model=ReloadResponse, dependencies=[Depends(require_api_key)])
    def reload() -> dict:
        """Reload the champion pointer's run (or the served run directory) from disk."""
        try:
            changed = holder.reload(force=True)
        except Exception as exc:  # noqa: BLE001 - any failed load keeps the old model
            message = f"reload failed, still serving the old model: {exc}"
            raise RequestError(409, message, "reload") from None
        model = holder.model
        return {"run_dir": str(model.run_dir), "reloaded": changed, "loaded_at": model.loaded_at}

    for router in routers:
        app.include_router(router)
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(app)
    return app


def _errors(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Refusals as 4xx JSON: request errors, validation errors (without echoing the input,
    which may hold NaN), and data/config errors raised while building a request's inputs."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> JSONResponse:
        metrics.rejected.labels(reason=exc.reason).inc()
        return JSONResponse({"detail": exc.message, "reason": exc.reason}, exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.rejected.labels(reason="invalid").inc()
        errors = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg")), "type": str(e.get("type"))}
            for e in exc.errors()[:50]
        ]
        return JSONResponse({"detail": errors, "reason": "invalid"}, 422)

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError) -> JSONResponse:
        metrics.rejected.labels(reason="data").inc()
        return JSONResponse({"detail": str(exc), "reason": "data"}, 422)
