"""`plusultra-serve` (docs/operations.md#service-plusultra-serve): a real uvicorn server on a
free loopback port, real HTTP requests. Predictions on the run's own data equal
`plusultra-predict`'s for the same last bar (symbols read from the database, and the same bars
sent in the body); malformed requests get a 4xx with a JSON body; the API key guards
POST /reload; /metrics exposes the named metrics; a new champion is picked up without a
restart; schemathesis fuzzes the OpenAPI schema and finds no 5xx.

Most tests pass the app small fakes of the guardrails and the drift monitor through its
factories (plusultra.service.hooks), so the figures they check are known; the last serves a
guardrails=standard run through the command's own app with the real parts.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
import uvicorn
import yaml
from hypothesis import HealthCheck, given, settings
from omegaconf import open_dict

from plusultra.cli.predict import predict
from plusultra.guardrails import GuardrailEvent
from plusultra.io import write_json_atomic
from plusultra.service.app import create_app
from plusultra.service.model import ServiceLimits
from tests.conftest import TINY, compose_config
from tests.test_run import run_in_process

KEY = "s3cret-key"


# --------------------------------------------------------------------------- fakes
class FakeGuardrails:
    """`Guardrails` interface: a per-symbol cap, the state counting the steps taken."""

    active = True
    history = 0  # no trailing returns kept: nothing to warm up
    factor_series = ()  # no supplied factor capped

    def __init__(self, symbols: list[str], cap: float) -> None:
        self.symbols, self.cap = symbols, cap

    def new_state(self) -> dict:
        return {"steps": 0, "previous": np.zeros(len(self.symbols))}

    def step(self, state, proposed, asset_returns, tradable, timestamp=None, factor_returns=None):
        assert factor_returns is None
        assert proposed.shape == asset_returns.shape == tradable.shape == (len(self.symbols),)
        out = np.clip(proposed, -self.cap, self.cap)
        events = [
            GuardrailEvent(
                timestamp, s, "symbol_cap", float(a), float(b), f"|w| capped at {self.cap}"
            )
            for s, a, b in zip(self.symbols, proposed, out, strict=True)
            if a != b
        ]
        state["steps"] += 1
        state["previous"] = out
        return out, events


class FakeDrift:
    """`DriftMonitor` interface: PSI = mean |row| of what it was shown."""

    def __init__(self, names: list[str]) -> None:
        self.names, self.rows = names, np.zeros((0, len(names)))

    def update(self, rows: np.ndarray) -> None:
        assert rows.shape[1] == len(self.names)
        self.rows = np.concatenate([self.rows, rows])

    def table(self) -> pd.DataFrame:
        psi = np.abs(self.rows).mean(axis=0) if len(self.rows) else np.zeros(len(self.names))
        level = np.where(psi < 0.1, "none", np.where(psi < 0.25, "moderate", "major"))
        return pd.DataFrame(
            {
                "feature": self.names,
                "psi": psi,
                "ks_stat": psi / 2,
                "ks_pvalue": 0.5,
                "level": level,
            }
        )

    def warnings(self) -> list[str]:
        return [f"{len(self.rows)} rows seen"]


GUARDS: dict[str, FakeGuardrails] = {}


def fake_guardrails(cfg, universe, sectors, periods_per_year):
    GUARDS["last"] = FakeGuardrails(universe, cap=0.2)
    return GUARDS["last"]


def fake_drift(run_dir, window):
    """A monitor over every model input but the first (the service picks those columns)."""
    names = json.loads((Path(run_dir) / "data.json").read_text())["features"]["columns"][1:]
    return FakeDrift(names), names


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def served_run(tiny_db, tmp_path_factory) -> Path:
    """One tiny run with a quantile head (so responses carry quantiles)."""
    tmp = tmp_path_factory.mktemp("serve")
    cfg = compose_config(
        [*TINY, "data=sqlite", f"data.path={tiny_db}", "head=quantile", "loss=pinball"]
        + ["evaluation.bootstrap=0"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
        cfg.hydra.runtime.output_dir = str(tmp / "run")
    (tmp / "run").mkdir()
    return run_in_process(cfg)[1]


@contextmanager
def serving(app):
    """`app` on a real uvicorn server on a free loopback port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server(served_run):
    """The run served with an API key, fake guardrails (cap 0.2) and a fake drift monitor."""
    app = create_app(
        run_dir=served_run,
        api_key=KEY,
        limits=ServiceLimits(max_symbols=10, max_bars=1000, max_body_bytes=400_000),
        guardrails_factory=fake_guardrails,
        drift_factory=fake_drift,
    )
    APPS["server"] = app
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


APPS: dict[str, object] = {}


def _live_symbols(run_dir: Path, db: Path, tmp_path: Path) -> tuple[pd.DataFrame, list[str]]:
    """plusultra-predict's rows at the database's last bar, and their symbols."""
    out = predict(run_dir, str(db), tmp_path / "p.parquet", 256, None, None, progress=False)
    preds = pd.read_parquet(out)
    last = preds[preds["timestamp"] == preds["timestamp"].max()].set_index("symbol")
    return last, list(last.index)


def _bars(db: Path, symbols: list[str]) -> dict:
    """Every bar (and indicator) of `symbols` in `db`, as a predict request body."""
    with sqlite3.connect(db) as con:
        series = pd.read_sql("SELECT * FROM series ORDER BY symbol, timestamp", con)
        ind = pd.read_sql("SELECT * FROM indicators", con)
        actions = pd.read_sql("SELECT * FROM corporate_actions", con)
    body = {}
    for s in symbols:
        rows = series[series["symbol"] == s]
        wide = ind[ind["symbol"] == s].pivot(index="timestamp", columns="name", values="value")
        wide = wide.reindex(rows["timestamp"])
        body[s] = {
            "timestamp": rows["timestamp"].tolist(),
            **{c: rows[c].tolist() for c in ("open", "high", "low", "close", "volume")},
            "indicators": {n: [None if np.isnan(v) else v for v in wide[n]] for n in wide},
            "corporate_actions": actions[actions["symbol"] == s]
            .drop(columns="symbol")
            .to_dict("records"),
        }
    return body


# --------------------------------------------------------------------------- tests
def test_predict_equals_plusultra_predict(served_run, tiny_db, server, tmp_path):
    """Symbols read from the run's database and the same bars sent in the body both give
    plusultra-predict's forecasts and positions at the last bar; the guardrails cap them."""
    expected, symbols = _live_symbols(served_run, tiny_db, tmp_path)
    by_symbols = server.post("/predict", json={"symbols": symbols})
    assert by_symbols.status_code == 200, by_symbols.text
    by_bars = server.post("/predict", json={"bars": _bars(tiny_db, symbols)})
    assert by_bars.status_code == 200, by_bars.text
    timing = by_symbols.headers["server-timing"]
    assert timing.startswith("model;dur=") and ", predict;dur=" in timing
    for response in (by_symbols.json(), by_bars.json()):
        assert pd.Timestamp(response["decision_timestamp"]) == expected["timestamp"].iloc[0]
        assert "next bar (its open)" in response["timing"]
        rows = {p["symbol"]: p for p in response["predictions"]}
        assert list(rows) == symbols
        for s in symbols:
            want = expected.loc[s, ["pred_1", "pred_2"]].to_numpy(dtype=float)
            np.testing.assert_allclose(rows[s]["prediction"], want, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(rows[s]["quantiles"]["0.5"], want, rtol=1e-5, atol=1e-7)
            assert rows[s]["quantiles"]["0.1"] <= rows[s]["quantiles"]["0.9"]
            assert rows[s]["proposed_position"] == pytest.approx(expected.loc[s, "position"])
            assert rows[s]["position"] == pytest.approx(
                np.clip(rows[s]["proposed_position"], -0.2, 0.2)
            )
        capped = [p["symbol"] for p in response["predictions"] if abs(p["proposed_position"]) > 0.2]
        assert capped and sorted(a["symbol"] for a in response["adjustments"]) == sorted(capped)
        assert all(a["rule"] == "symbol_cap" for a in response["adjustments"])
    # the book is the universe; the same decision bar twice replaces the decision (the state
    # is recomputed from before it), it does not advance the book
    assert GUARDS["last"].symbols == server.get("/model").json()["universe"]
    assert APPS["server"].state.holder.model._book[2]["steps"] == 1


def test_malformed_requests_get_a_4xx_with_a_body(served_run, tiny_db, server):
    good = _bars(tiny_db, ["SYM000"])["SYM000"]
    short = {k: (v[-20:] if isinstance(v, list) else v) for k, v in good.items()}
    short["indicators"] = {n: v[-20:] for n, v in good["indicators"].items()}
    cases = {
        "not json": (b"{nope", 422),
        "not an object": (b"[1, 2]", 422),
        "neither source": (b"{}", 422),
        "both sources": (json.dumps({"symbols": ["SYM000"], "bars": {"SYM000": good}}), 422),
        "wrong shape": (
            json.dumps({"bars": {"SYM000": {**good, "close": good["close"][:-1]}}}),
            422,
        ),
        "wrong type": (json.dumps({"bars": {"SYM000": {**good, "close": "abc"}}}), 422),
        "nan": (
            json.dumps({"bars": {"SYM000": good}}).replace(str(good["close"][5]), "NaN", 1),
            422,
        ),
        "infinity": (b'{"bars": {"S": {"timestamp": ["2020-01-01"], "close": [Infinity]}}}', 422),
        "unknown symbol": (json.dumps({"symbols": ["NOPE"]}), 422),
        "unknown in bars": (json.dumps({"bars": {"NOPE": good}}), 422),
        "too few bars": (json.dumps({"bars": {"SYM000": short}}), 422),
        "not a date": (json.dumps({"bars": {"SYM000": {**short, "timestamp": ["x"] * 20}}}), 422),
        "duplicate bars": (
            json.dumps({"bars": {"SYM000": {**short, "timestamp": short["timestamp"][:1] * 20}}}),
            422,
        ),
        "too many symbols": (json.dumps({"symbols": [f"S{i}" for i in range(11)]}), 413),
        "oversized body": (json.dumps({"symbols": ["SYM000"], "pad": "x" * 500_000}), 413),
        "missing indicator": (json.dumps({"bars": {"SYM000": {**good, "indicators": {}}}}), 422),
    }
    for name, (body, status) in cases.items():
        r = server.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, (name, r.text[:500])
        detail = r.json()["detail"]
        assert detail, name
    r = server.post("/predict", json={"bars": {"SYM000": short}})
    assert "too few bars" in r.json()["detail"] or "window" in r.json()["detail"]
    r = server.post("/predict", json={"bars": {"SYM000": {**good, "indicators": {}}}})
    assert "indicator 'sentiment'" in r.json()["detail"]


def test_a_chunked_body_past_the_limit_is_refused(server):
    """A body without Content-Length is counted while it is read."""

    def chunks():
        for _ in range(50):
            yield b"x" * 10_000

    r = server.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "limit of 400000 bytes" in r.json()["detail"]
    small = iter([b'{"symbols": ', b'["NOPE"]}'])
    r = server.post("/predict", content=small, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "NOPE" in r.json()["detail"]


def test_reload_needs_the_api_key(server):
    assert server.post("/reload").status_code == 401
    r = server.post("/reload", headers={"X-API-Key": "wrong"})
    assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
    r = server.post("/reload", headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json()["reloaded"] is True
    assert server.get("/health").json()["status"] == "ok"


def test_metrics_exposes_the_named_metrics(served_run, tiny_db, server, tmp_path):
    _, symbols = _live_symbols(served_run, tiny_db, tmp_path)
    assert server.post("/predict", json={"symbols": symbols}).status_code == 200
    assert server.post("/predict", json={"symbols": ["NOPE"]}).status_code == 422
    text = server.get("/metrics").text
    for name in (
        "http_requests_total",
        "http_request_duration_seconds",
        "plusultra_model_latency_seconds_count",
        "plusultra_prediction_bucket",
        'plusultra_guardrail_hits_total{rule="symbol_cap"}',
        'plusultra_feature_psi{feature="return_5"}',
        'plusultra_feature_ks{feature="ind_sentiment"}',
        'plusultra_drift_features{level="none"}',
        "plusultra_drift_warnings 1.0",
        'plusultra_predict_rejected_total{reason="unknown_symbol"}',
    ):
        assert name in text, name
    assert 'plusultra_feature_psi{feature="log_return"}' not in text  # not in the reference
    count = [
        line
        for line in text.splitlines()
        if line.startswith("plusultra_model_latency_seconds_count")
    ]
    assert float(count[0].split()[-1]) >= 1
    # every metric the documented alert rules use is exposed
    doc = (Path(__file__).parents[1] / "docs" / "operations.md").read_text()
    rules = yaml.safe_load(doc.split("## SLOs and alerts")[1].split("```yaml")[1].split("```")[0])
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    used = set(re.findall(r"\b(?:plusultra|http)_[a-z_]+", exprs))
    assert used and all(re.sub(r"_bucket$", "", name) in text for name in used), used
    model = server.get("/model").json()
    assert model["head"] == "quantiles" and model["metrics"]["val_loss"] > 0
    assert model["data_range"]["data_last_date"] and model["data_range"]["segments"]["test"]


def test_a_new_champion_is_served_without_a_restart(served_run, tmp_path):
    other = tmp_path / "other_run"
    shutil.copytree(served_run, other)
    pointer = tmp_path / "champion.json"
    record = {"promoted_at": "2026-01-01T00:00:00Z", "metric": "val_sharpe", "value": 1.0}
    write_json_atomic(pointer, {"run_dir": str(served_run), **record, "previous": None})
    app = create_app(champion=pointer, poll_seconds=0.05)
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/health").json()["run_dir"] == str(served_run.resolve())
        write_json_atomic(pointer, {"run_dir": str(other), **record, "previous": None})
        health = _wait(client, lambda h: h["run_dir"] == str(other.resolve()))
        assert health["status"] == "ok"
        # a pointer to something that is not a run: the old model keeps serving, degraded
        write_json_atomic(pointer, {"run_dir": str(tmp_path), **record, "previous": None})
        health = _wait(client, lambda h: h["status"].startswith("degraded"))
        assert (
            health["run_dir"] == str(other.resolve()) and "not a finished run" in health["status"]
        )
        assert client.get("/model").json()["run_dir"] == str(other.resolve())


def _wait(client: httpx.Client, ok, seconds: float = 30.0) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = client.get("/health").json()
        if ok(health):
            return health
        time.sleep(0.05)
    raise AssertionError(f"condition not met; last /health: {health}")


# --------------------------------------------------------------------------- fuzzing
@pytest.mark.parametrize("examples", [3, pytest.param(60, marks=pytest.mark.slow)])
def test_fuzzed_requests_never_get_a_5xx(server, examples):
    """schemathesis cases of every operation of the OpenAPI schema (valid and, through
    hypothesis, edge-case bodies and headers), sent to the live server: none is a 5xx, every
    refusal has a JSON detail. A few examples per operation in the fast tier, more in slow."""
    schema = schemathesis.openapi.from_url(str(server.base_url.join("/openapi.json")))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/health", "/model", "/reload"}
    calls: dict[str, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case):
            calls[case.path] = calls.get(case.path, 0) + 1
            response = case.call(base_url=str(server.base_url), timeout=60)
            assert response.status_code < 500, (case.path, case.body, response.text[:500])
            if response.status_code >= 400:
                assert response.json()["detail"], (case.path, response.text[:500])

        check()
    assert all(n >= 1 for n in calls.values())


@pytest.mark.slow  # three subprocesses, each importing torch (about 15 s)
def test_cli_help_and_bad_input(tmp_path):
    from tests.conftest import run_cli

    res = run_cli(["plusultra.cli.serve", "--help"], tmp_path)
    assert res.returncode == 0 and "--champion" in res.stdout and "127.0.0.1" in res.stdout
    res = run_cli(["plusultra.cli.serve", str(tmp_path)], tmp_path)
    assert res.returncode == 2 and "not a finished run" in res.stderr
    res = run_cli(["plusultra.cli.serve"], tmp_path)
    assert res.returncode == 2 and "--champion" in res.stderr


# ------------------------------------------------------------- the real parts, wired
@pytest.fixture(scope="module")
def guarded_run(tiny_db, tmp_path_factory) -> Path:
    """A tiny run with guardrails=standard: its config carries real guardrails and its run dir
    the drift reference, which the service's default factories load."""
    tmp = tmp_path_factory.mktemp("serve_guarded")
    cfg = compose_config(
        [*TINY, "data=sqlite", f"data.path={tiny_db}", "guardrails=standard"]
        + ["evaluation.bootstrap=0"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
        cfg.hydra.runtime.output_dir = str(tmp / "run")
    (tmp / "run").mkdir()
    return run_in_process(cfg)[1]


def test_the_cli_app_serves_real_guardrails_drift_and_reviews(
    guarded_run, tiny_db, tmp_path, monkeypatch
):
    """`plusultra-serve`'s own app (cli.serve.make_app): the run's guardrails (standard) adjust
    the proposed book with their reasons, the drift gauges come from its drift_reference, and
    the review router reviews the served run's trades behind the API key."""
    from plusultra.cli.serve import build_parser, make_app
    from plusultra.guardrails import Guardrails

    monkeypatch.setenv("PLUSULTRA_TEST_KEY", KEY)
    db = tmp_path / "reviews.sqlite"
    args = build_parser().parse_args(
        [str(guarded_run), "--api-key-env", "PLUSULTRA_TEST_KEY", "--review-db", str(db)]
    )
    app = make_app(args)
    assert isinstance(app.state.holder.model.guardrails, Guardrails)
    assert app.state.run_dir == str(app.state.holder.model.run_dir)
    traded = pd.read_parquet(guarded_run / "predictions.parquet").iloc[-1]
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        _, symbols = _live_symbols(guarded_run, tiny_db, tmp_path)  # complete at the last bar
        body = client.post("/predict", json={"symbols": symbols})
        assert body.status_code == 200, body.text
        out = body.json()
        proposed = np.array([p["proposed_position"] for p in out["predictions"]])
        guarded = np.array([p["position"] for p in out["predictions"]])
        assert np.abs(proposed).sum() > 0
        if out["adjustments"]:  # every adjustment names a rule of the standard set and why
            assert all(a["rule"] and a["detail"] for a in out["adjustments"])
        else:  # nothing to adjust: the book went through unchanged
            np.testing.assert_allclose(guarded, proposed)
        metrics = client.get("/metrics").text
        assert re.search(r"^plusultra_feature_psi\{", metrics, re.M), "no drift gauges"
        review = {
            "symbol": traded["symbol"],
            "timestamp": str(pd.Timestamp(traded["timestamp"]).date()),
            "verdict": "veto",
            "rationale": "too large",
            "author": "ana",
        }
        assert client.post("/reviews", json=review).status_code == 401
        made = client.post("/reviews", json=review, headers={"X-API-Key": KEY})
        assert made.status_code == 201, made.text
        listed = client.get("/reviews", params={"verdict": "veto"}).json()
        assert listed["count"] == 1 and listed["reviews"][0]["symbol"] == traded["symbol"]


def test_the_first_decision_warms_the_guardrails_up_with_the_bars_before_it(
    guarded_run, tiny_db, tmp_path
):
    """Before the book's first decision the service fills the guardrails' vol, CVaR and beta
    lookbacks with the universe's close-to-close returns of the bars before it (closes carried
    over a missing bar, as in backtests); later decisions add one bar each."""
    from plusultra.service.model import LoadedModel
    from plusultra.service.schemas import PredictRequest

    model = LoadedModel(guarded_run)
    assert "market" in model.guardrails.config.factor_caps  # guardrails=standard caps it
    _, symbols = _live_symbols(guarded_run, tiny_db, tmp_path)
    model.predict(PredictRequest(symbols=symbols[:2]))
    _, dm = model._own_data()
    close = pd.DataFrame(dm.panel.fields["close"]).ffill().to_numpy()
    every = np.full((len(close), len(model.universe)), np.nan)
    at = [model.universe.index(s) for s in dm.panel.symbols]
    every[1:, at] = close[1:] / close[:-1] - 1.0
    state = model._book[2]
    history = model.guardrails.history
    assert history > 1 and state.returns.shape == (history, len(model.universe))
    np.testing.assert_allclose(state.returns, every[-history:], rtol=0, atol=1e-12)


def test_market_rows_hold_the_universes_returns_and_the_capped_factor_values():
    """`LoadedModel._market`: (K + 1, U) universe returns in the run's universe order (NaN for
    a symbol the request's data lacks, closes carried over a gap) and (K + 1, F) values of the
    capped supplied factors (NaN where the data has no such series)."""
    from types import SimpleNamespace

    from plusultra.guardrails import GuardrailConfig, Guardrails
    from plusultra.service.model import LoadedModel

    config = GuardrailConfig(factor_caps={"market": 0.5, "etf_a": 0.2, "etf_b": 0.3})
    universe = ["A", "B", "C"]
    guards = Guardrails(config, universe, {}, 252.0)
    close = np.array([[10.0, 20.0], [11.0, np.nan], [12.1, 22.0], [12.1, 24.2]])  # C, A
    dm = SimpleNamespace(
        panel=SimpleNamespace(dates=np.arange(4), symbols=["C", "A"], fields={"close": close}),
        market_series={"etf_a": np.array([0.01, 0.02, 0.03, 0.04])},
    )
    fresh = SimpleNamespace(
        guardrails=guards, _book=(None, None, None), universe=universe,
        _universe_at={s: i for i, s in enumerate(universe)},
    )  # fmt: skip
    returns, factors = LoadedModel._market(fresh, dm)
    assert returns.shape == (3, 3) and factors.shape == (3, 2)  # K = 2: the bars available
    np.testing.assert_allclose(returns[:, 2], [0.1, 0.1, 0.0])  # C
    np.testing.assert_allclose(returns[:, 0], [0.0, 0.1, 0.1])  # A: its gap carries 20
    assert np.isnan(returns[:, 1]).all()  # B: not in the data
    np.testing.assert_allclose(factors[:, 0], [0.02, 0.03, 0.04])
    assert np.isnan(factors[:, 1]).all()  # etf_b: no such series
    later = SimpleNamespace(**{**vars(fresh), "_book": ("t", None, None)})
    returns, factors = LoadedModel._market(later, dm)
    assert returns.shape == (1, 3) and factors.shape == (1, 2)  # after the first decision
    np.testing.assert_allclose(factors[0], [0.04, np.nan])


def test_bars_for_part_of_the_universe_are_refused_when_features_span_it():
    """A run whose inputs are computed across symbols (market, cross-sectional, sector
    regimes) is served `bars` only for its whole universe: a subset would change them."""
    from types import SimpleNamespace

    from plusultra.service.model import LoadedModel, RequestError, _universe_wide
    from plusultra.service.schemas import PredictRequest

    columns = ["log_return", "beta_mkt_20", "cs_rank_return_5", "regime_sector_rank"]
    assert _universe_wide(columns) == columns[1:]
    assert _universe_wide(["log_return", "volatility_20", "regime_volatility"]) == []
    bars = {"timestamp": ["2020-01-01"], "close": [1.0]}
    model = SimpleNamespace(limits=ServiceLimits(), universe=["A", "B"], universe_wide=columns[1:])
    with pytest.raises(RequestError, match=r"bars for \['B'\] are missing") as err:
        LoadedModel.check_request(model, PredictRequest(bars={"A": bars}))
    assert err.value.status == 422 and err.value.reason == "partial_universe"
    both = PredictRequest(bars={"A": bars, "B": bars})
    assert LoadedModel.check_request(model, both) == ["A", "B"]
    assert LoadedModel.check_request(model, PredictRequest(symbols=["A"])) == ["A"]
    narrow = SimpleNamespace(**{**vars(model), "universe_wide": []})
    assert LoadedModel.check_request(narrow, PredictRequest(bars={"A": bars})) == ["A"]


@pytest.mark.slow
def test_compile_serves_one_window_compiled_and_the_rest_eagerly(served_run, tiny_db):
    """`--compile` (create_app(compile=True)): warm-up compiles the one-window forward pass;
    a one-symbol request uses it and answers as the eager model does (to float rounding); a
    request of several symbols uses the eager model, so it never waits for a compilation."""
    from plusultra.service.model import LoadedModel
    from plusultra.service.schemas import PredictRequest

    eager = LoadedModel(served_run)
    compiled = LoadedModel(served_run, compile=True)
    assert compiled.describe()["compiled"] and not eager.describe()["compiled"]
    key, dm = compiled._own_data()
    last = len(dm.panel.dates) - 1
    ready = [s for i, s in enumerate(dm.panel.symbols) if dm.input_ok[last, i]]
    calls = []
    forward = compiled._compiled.forward
    compiled._compiled.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    for symbols in ([ready[0]], ready[:3]):
        want = eager.predict(PredictRequest(symbols=symbols))["response"]["predictions"]
        got = compiled.predict(PredictRequest(symbols=symbols))["response"]["predictions"]
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a["prediction"], b["prediction"], rtol=1e-5, atol=1e-6)
    assert len(calls) == 1  # the one-symbol request only
