"""`plusultra-serve` on a PPO run (docs/operations.md#service-plusultra-serve): a real uvicorn
server serves the policy's positions at the database's last bar, equal to
`plusultra-predict`'s rollout (symbols read from the run's database; the live symbols' bars
sent in the body equal predict --symbols on them); the rollout of the run's database is cached
per database version.

The tests share one tiny curriculum=rl run (`rl_run` of tests/test_rl_predict.py, about 20 s),
so they are slow-marked."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from plusultra.cli.predict import predict
from plusultra.rl import predict as rl_predict
from plusultra.service.app import create_app
from tests.test_rl_predict import rl_run  # noqa: F401 - the module-scoped run fixture
from tests.test_service import _bars, fake_guardrails, serving

pytestmark = pytest.mark.slow
CAP = 0.2  # fake_guardrails' per-symbol cap


@pytest.fixture(scope="module")
def policy_run(rl_run, tiny_db, tmp_path_factory) -> Path:  # noqa: F811
    """A copy of the rl run reading its own copy of the database (so a test may touch it)."""
    tmp = tmp_path_factory.mktemp("serverl")
    run = tmp / "run"
    shutil.copytree(rl_run, run)
    db = tmp / "tiny.sqlite"
    shutil.copy(tiny_db, db)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.data.path = str(db)
    OmegaConf.save(cfg, run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def client(policy_run):
    app = create_app(run_dir=policy_run, guardrails_factory=fake_guardrails)
    with serving(app) as url, httpx.Client(base_url=url, timeout=120) as c:
        yield c


def _database(run_dir: Path) -> Path:
    return Path(OmegaConf.load(run_dir / "config.yaml").data.path)


def _expected(run_dir: Path, tmp_path: Path, symbols: list[str] | None = None) -> pd.DataFrame:
    """plusultra-predict's rows (no --rollout-start; `symbols`: its --symbols) at the
    database's last bar."""
    db = str(_database(run_dir))
    out = predict(run_dir, db, tmp_path / "p.parquet", 256, None, None, False, symbols=symbols)
    preds = pd.read_parquet(out)
    return preds[preds["timestamp"] == preds["timestamp"].max()].set_index("symbol")


def _check(response: httpx.Response, expected: pd.DataFrame, symbols: list[str]) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert pd.Timestamp(body["decision_timestamp"]) == expected["timestamp"].iloc[0]
    rows = {p["symbol"]: p for p in body["predictions"]}
    assert list(rows) == symbols
    for s in symbols:
        assert rows[s]["quantiles"] is None and rows[s]["probabilities"] is None
        np.testing.assert_allclose(rows[s]["prediction"], [expected.loc[s, "pred_1"]], atol=1e-6)
        assert rows[s]["proposed_position"] == pytest.approx(expected.loc[s, "position"], abs=1e-6)
        capped = np.clip(rows[s]["proposed_position"], -CAP, CAP)
        assert rows[s]["position"] == pytest.approx(capped)
    return body


def test_served_policy_positions_equal_plusultra_predict(policy_run, client, tmp_path):
    """By symbols, the served positions are plusultra-predict's on the run's database at its
    last bar (the rollout's book: the whole universe, a delisted symbol included; a requested
    subset keeps those values); the bars of the live symbols sent in the body give
    plusultra-predict's on those symbols (--symbols)."""
    expected = _expected(policy_run, tmp_path)
    symbols = list(expected.index)
    assert expected["pred_1"].abs().max() > 0  # the policy holds positions
    assert client.get("/model").json()["head"] == "policy"
    by_symbols = _check(client.post("/predict", json={"symbols": symbols}), expected, symbols)
    capped = [p["symbol"] for p in by_symbols["predictions"] if abs(p["proposed_position"]) > CAP]
    assert sorted(a["symbol"] for a in by_symbols["adjustments"]) == sorted(capped)
    _check(client.post("/predict", json={"symbols": symbols[1:3]}), expected, symbols[1:3])
    sent = _expected(policy_run, tmp_path, symbols=symbols)
    body = {"bars": _bars(_database(policy_run), symbols)}
    _check(client.post("/predict", json=body), sent, symbols)


def test_a_repeated_request_is_served_from_the_cached_rollout(
    policy_run, client, tmp_path, monkeypatch
):
    """The run's database is rolled out once per version (file mtime and size): at warm-up,
    then again only after the file changes; bars in the body are rolled out per request."""
    symbols = list(_expected(policy_run, tmp_path).index)
    calls = []
    real = rl_predict.rollout_positions

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(rl_predict, "rollout_positions", counted)
    first = client.post("/predict", json={"symbols": symbols})
    assert first.status_code == 200 and len(calls) == 0  # the warm-up's rollout
    db = _database(policy_run)
    stat = db.stat()
    os.utime(db, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a new database version
    again = [client.post("/predict", json={"symbols": symbols}) for _ in range(3)]
    assert len(calls) == 1
    assert all(r.json()["predictions"] == first.json()["predictions"] for r in again)
    body = {"bars": _bars(db, symbols)}
    assert client.post("/predict", json=body).status_code == 200
    assert client.post("/predict", json=body).status_code == 200
    assert len(calls) == 3
