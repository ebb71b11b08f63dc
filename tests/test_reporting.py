"""plusultra-report: attribution and scenarios against naive loops, the files it writes, its CLI."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plusultra.errors import DataError
from plusultra.evaluation.report.analysis import (
    annual_sharpe,
    attribution,
    high_vol_mask,
    scenarios,
    worst_windows,
)
from plusultra.evaluation.report.render import load_run, write_reports

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
SYMBOLS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]
SECTORS = {"AAA": "tech", "BBB": "tech", "CCC": "energy", "DDD": None, "EEE": "energy"}  # no FFF
COSTS = ("commission", "spread", "impact", "borrow", "funding")


def make_run(path: Path, n_bars: int = 300, costs: bool = False, seed: int = 0) -> Path:
    """A fake finished run: 6 symbols, business days across two calendar years."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    dates = pd.bdate_range("2021-06-01", periods=n_bars, name="timestamp")
    rets = rng.normal(0.0003, 0.015, (n_bars, len(SYMBOLS)))
    rets[-1] = np.nan  # the next close of the last bar is unknown
    pos = rng.normal(0, 1, (n_bars, len(SYMBOLS)))
    pos = (pos - pos.mean(1, keepdims=True)) / np.abs(pos).sum(1, keepdims=True)
    preds = pd.DataFrame(
        {
            "symbol": np.tile(SYMBOLS, n_bars),
            "timestamp": np.repeat(dates, len(SYMBOLS)),
            "pred_1": rng.normal(0, 0.01, n_bars * len(SYMBOLS)),
            "position": pos.ravel(),
            "realized_return": rets.ravel(),
        }
    )
    preds.to_parquet(path / "predictions.parquet", index=False)
    strat = np.nan_to_num((pos * rets).sum(1))
    bench = np.nan_to_num(rets).mean(1)
    bt = pd.DataFrame(
        {
            "strategy_return": strat,
            "strategy_equity": 1e6 * np.cumprod(1 + strat),
            "turnover": np.abs(rng.normal(0.3, 0.1, n_bars)),
            "gross_exposure": np.ones(n_bars),
            "buyhold_return": bench,
            "buyhold_equity": 1e6 * np.cumprod(1 + bench),
            "momentum_return": rng.normal(0, 0.01, n_bars),
            "momentum_equity": 1e6 * np.cumprod(1 + rng.normal(0, 0.01, n_bars)),
        },
        index=dates,
    )
    if costs:
        for c in COSTS:
            bt[f"cost_{c}"] = np.abs(rng.normal(10.0, 3.0, n_bars))
    bt.to_parquet(path / "backtest.parquet")
    data = {
        "sectors": SECTORS,
        "segment_dates": {"test": [str(dates[0].date()), str(dates[-1].date())]},
    }
    (path / "data.json").write_text(json.dumps(data))
    (path / "run_id.txt").write_text("run-42\n")
    metrics = {
        "val_loss": 0.98,
        "test_loss": 1.01,
        "test_sharpe": 0.7,
        "test_sharpe_lo": -0.2,
        "test_sharpe_hi": 1.5,
        "test_total_return": float(np.prod(1 + strat) - 1),
        "test_annual_return": 0.05,
        "test_annual_return_lo": None,
        "test_annual_return_hi": None,
        "test_max_drawdown": -0.1,
        "test_buyhold_sharpe": 0.4,
        "test_buyhold_total_return": 0.03,
        "test_momentum_sharpe": None,
    }
    if costs:
        metrics["test_cost_share"] = 0.12
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {
        "frictionless": make_run(root / "frictionless"),
        "costs": make_run(root / "costs", costs=True, seed=1),
    }


def test_attribution_sums_match_naive_loop(runs):
    run = load_run(runs["frictionless"])
    by_symbol, by_sector = attribution(run.predictions, run.sectors)
    naive: dict[str, float] = {}
    naive_sector: dict[str, float] = {}
    hits: dict[str, list[bool]] = {}
    for _, row in run.predictions.iterrows():
        r = row["realized_return"]
        c = 0.0 if np.isnan(r) else row["position"] * r
        naive[row["symbol"]] = naive.get(row["symbol"], 0.0) + c
        sector = SECTORS.get(row["symbol"]) or "unknown"
        naive_sector[sector] = naive_sector.get(sector, 0.0) + c
        if c != 0:
            hits.setdefault(row["symbol"], []).append(c > 0)
    total = sum(naive.values())
    for s, v in naive.items():
        assert by_symbol.loc[s, "pnl"] == pytest.approx(v, abs=1e-12)
        assert by_symbol.loc[s, "share"] == pytest.approx(v / total)
        assert by_symbol.loc[s, "hit_rate"] == pytest.approx(np.mean(hits[s]))
    assert set(by_sector.index) == {"tech", "energy", "unknown"}
    for s, v in naive_sector.items():
        assert by_sector.loc[s, "pnl"] == pytest.approx(v, abs=1e-12)
    assert by_symbol["pnl"].sum() == pytest.approx(total)
    assert by_sector["pnl"].sum() == pytest.approx(total)
    assert by_symbol["share"].sum() == pytest.approx(1.0)
    # with frictionless weights held bar to bar, contributions add to the portfolio return
    assert total == pytest.approx(run.backtest["strategy_return"].sum())


def test_scenarios_by_year_compound_by_hand(runs):
    bt = load_run(runs["frictionless"]).backtest
    scen = scenarios(bt, 252)
    by_year = scen["by_year"]
    assert list(by_year.index) == [2021, 2022]
    for year in (2021, 2022):
        growth_model, growth_bench = 1.0, 1.0
        for ts, row in bt.iterrows():
            if ts.year == year:
                growth_model *= 1 + row["strategy_return"]
                growth_bench *= 1 + row["buyhold_return"]
        assert by_year.loc[year, "model_return"] == pytest.approx(growth_model - 1)
        assert by_year.loc[year, "buyhold_return"] == pytest.approx(growth_bench - 1)
    assert by_year["bars"].sum() == len(bt)
    assert scen["volatility"]["bars"].sum() == len(bt)
    crashes = scen["crashes"]
    assert len(crashes) == 5
    assert crashes["buyhold_return"].is_monotonic_increasing  # worst first


def test_regime_is_causal_and_crash_windows_are_the_worst():
    rng = np.random.default_rng(3)
    bench = pd.Series(rng.normal(0, 0.01, 200))
    flag = high_vol_mask(bench)
    changed = bench.copy()
    changed.iloc[150:] *= 10  # the future must not change earlier flags
    assert flag.iloc[:151].equals(high_vol_mask(changed).iloc[:151])
    assert flag.iloc[:21].isna().all() and flag.iloc[21:].notna().all()
    starts = worst_windows(bench, n=3, length=5)
    windows = [np.prod(1 + bench.iloc[i : i + 5]) - 1 for i in range(196)]
    assert starts[0] == int(np.argmin(windows))
    assert all(abs(a - b) >= 5 for a in starts for b in starts if a != b)


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.srcs: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs["src"])
        for key in ("href", "src"):
            if key in attrs:
                self.hrefs.append(attrs[key])


@pytest.mark.parametrize(("name", "n_images"), [("frictionless", 5), ("costs", 6)])
def test_write_reports(runs, tmp_path, name, n_images):
    html_path, md_path = write_reports(runs[name], tmp_path / "out")
    assert html_path == tmp_path / "out" / "report.html" and md_path.is_file()
    text = html_path.read_text()
    parser = _Images()
    parser.feed(text)
    parser.close()
    assert len(parser.srcs) == n_images
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    assert not re.search(r"https?://", text)
    assert ("Frictionless: no costs" in text) == (name == "frictionless")
    assert "run-42" in text and "By sector" in text and "Worst buy &amp; hold" in text
    md = md_path.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == n_images
    for link in links:
        assert (md_path.parent / link).read_bytes().startswith(PNG)
    assert "| metric | val | test: model | buy & hold |" in md
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_default_out_is_run_dir(tmp_path):
    run = make_run(tmp_path / "run", n_bars=120)
    html_path, md_path = write_reports(run)
    assert html_path.parent == run and (run / "report" / "equity.png").is_file()


def test_unfinished_run_is_a_data_error(tmp_path):
    run = make_run(tmp_path / "run", n_bars=60)
    (run / "metrics.json").unlink()
    with pytest.raises(DataError, match="metrics.json"):
        load_run(run)
    with pytest.raises(DataError, match="metrics.json"):
        write_reports(run)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "plusultra.cli.report", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli(tmp_path):
    run = make_run(tmp_path / "run", n_bars=80, costs=True)
    done = _cli(str(run))
    assert done.returncode == 0, done.stderr
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    bad = _cli(str(tmp_path))
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("plusultra-report: error:")
    assert "metrics.json" in lines[0]
    helped = _cli("--help")
    assert helped.returncode == 0 and "plusultra-report" in helped.stdout


# ---------------------------------------------------------------- header, loss name, periods


def _with_hydra(run: Path, overrides: list[str], choices: dict) -> Path:
    """Add the `.hydra` files Hydra writes (choices stored in reverse defaults-list order)."""
    import yaml

    (run / ".hydra").mkdir(exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"runtime": {"choices": choices}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra, sort_keys=False))
    return run


def test_header_lists_overrides_as_typed_model_size_and_choices(tmp_path):
    run = make_run(tmp_path / "run", n_bars=80)
    metrics = json.loads((run / "metrics.json").read_text()) | {"n_params": 12345}
    (run / "metrics.json").write_text(json.dumps(metrics))
    typed = [
        "head=quantile",
        "depth=1",
        "trainer.max_epochs=1",
        "+trainer.gradient_clip_algorithm=norm",
    ]
    hydra_order = {"experiment": None, "hydra": "default", "hardware": "cpu", "head": "quantile"}
    hydra_order |= {"loss": "pinball", "backbone": "hybrid", "data": "synthetic"}
    _with_hydra(run, typed, hydra_order)
    loaded = load_run(run)
    assert loaded.overrides == typed
    assert list(loaded.choices) == ["data", "backbone", "loss", "head", "hardware"]
    _, md_path = write_reports(run, tmp_path / "out")
    md = md_path.read_text()
    assert "Overrides: " + " ".join(typed) + "  \n" in md
    assert "Model size: 12,345 parameters" in md
    assert "Configuration: data=synthetic, backbone=hybrid, loss=pinball, head=quantile" in md
    assert "| loss (pinball) | 0.9800 | 1.0100 |" in md  # the summary names the loss used
    assert "scaled MSE" not in md


def test_header_of_a_default_run_says_so(tmp_path):
    run = _with_hydra(make_run(tmp_path / "run", n_bars=60), [], {"loss": "mse"})
    md = write_reports(run, tmp_path / "out")[1].read_text()
    assert "Overrides: none (the default experiment)" in md and "| loss (mse) |" in md


def test_report_annualises_with_the_runs_periods_per_year(tmp_path):
    run = make_run(tmp_path / "run", n_bars=80)
    assert load_run(run).periods_per_year == 252  # no metric: derived from the business days
    metrics = json.loads((run / "metrics.json").read_text()) | {"periods_per_year": 52}
    (run / "metrics.json").write_text(json.dumps(metrics))
    loaded = load_run(run)
    assert loaded.periods_per_year == 52
    r = loaded.backtest["strategy_return"]
    by_year = scenarios(loaded.backtest, loaded.periods_per_year)["by_year"]
    in_2021 = r[r.index.year == 2021]
    naive = in_2021.mean() / in_2021.std(ddof=1) * np.sqrt(52)
    assert by_year.loc[2021, "model_sharpe"] == pytest.approx(naive)
    assert annual_sharpe(r, 52) == pytest.approx(annual_sharpe(r, 252) * np.sqrt(52 / 252))
    md = write_reports(run, tmp_path / "out")[1].read_text()
    assert "Annualisation: 52 bars a year" in md
