"""docs/results.md's writer (experiments/results/report.py) on a synthetic catalogue.

The catalogue imitates the results recipe: a grid of 2 families x 2 horizons x 3 seeds on
sp500_stocks, an rl part, a timing part on sp500; every metric is a known function of the key
and seed, so means, stds, the baseline dedupe, the order and the deflated Sharpe are checked
against numbers computed here.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from experiments.results import report, report_facts, report_tables

from plusultra.errors import DataError
from plusultra.evaluation.metrics.deflated import deflated_sharpe, expected_max_sharpe

SEEDS = (0, 1, 2)
FAMILIES = {"transformer": 0.4, "tcn": 0.9}  # validation Sharpe level: tcn is best on val
BASELINES = ("buyhold", "equal_weight", "momentum", "mean_reversion", "ridge", "lightgbm")
NEW = ("cost_drag", "excess_annual_return")  # metrics helper A adds; absent in old catalogues


def _metrics(prefix: str, level: float, seed: int, test_shift: float) -> dict:
    row = {}
    for seg, shift in (("val", 0.0), ("test", test_shift)):
        sharpe = level + 0.1 * seed + shift
        row |= {
            f"{seg}_{prefix}sharpe": sharpe,
            f"{seg}_{prefix}sharpe_lo": sharpe - 0.5,
            f"{seg}_{prefix}sharpe_hi": sharpe + 0.5,
            f"{seg}_{prefix}ic": 0.01 * level + 0.001 * seed,
            f"{seg}_{prefix}ic_ir": 0.1 * level,
            f"{seg}_{prefix}rank_ic": 0.02 * level,
            f"{seg}_{prefix}rank_ic_ir": 0.2 * level,
            f"{seg}_{prefix}annual_return": 0.05 * sharpe,
            f"{seg}_{prefix}excess_annual_return": 0.01 * sharpe,
            f"{seg}_{prefix}information_ratio": sharpe,
            f"{seg}_{prefix}information_ratio_benchmark": "cash",
            f"{seg}_{prefix}max_drawdown": -0.1 - 0.01 * seed,
            f"{seg}_{prefix}turnover": 0.3,
            f"{seg}_{prefix}cost_drag": 0.02 + 0.001 * seed,
        }
    return row


def _run(i: int, part: str, data: str, family: str, horizon: int, seed: int, **extra) -> dict:
    level = FAMILIES[family] + 0.05 * horizon
    row = {
        "run_id": f"r{i:03d}",
        "run_dir": f"/nonexistent/results/{part}/{i}",  # the equity test writes some
        "status": "completed",
        "multirun": True,
        "job_num": i,
        "started_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=i),
        "finished_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=i + 1),
        "duration_s": 60.0,
        "study": f"results/{part}",
        "sweep_name": f"results/{part}",
        "backbone": family,
        "data": data,
        "features": "full",
        "curriculum": "supervised",
        "evaluation": "default",
        "simulator": "realistic",
        "cross_asset.enabled": False,
        "seed": seed,
        "depth": 2,
        "horizon": horizon,
        "periods_per_year": 252.0,
        "test_skew": -0.2 + 0.1 * seed,
        "test_kurtosis": 4.0 + seed,
        "test_n_periods": 1400.0,
        **_metrics("", level, seed, test_shift=-0.3 * level),
    }
    for j, b in enumerate(BASELINES):  # independent of the model: a function of data and seed
        row |= _metrics(f"{b}_", 0.2 * j + (0.5 if data == "sp500" else 0.0), seed, 0.05)
    row.update(extra)
    return row


def synthetic_runs() -> pd.DataFrame:
    rows, i = [], 0
    for family in FAMILIES:
        for horizon in (2, 5):
            for seed in SEEDS:
                rows.append(_run(i, "grid", "sp500_stocks", family, horizon, seed))
                i += 1
    for seed in SEEDS[:2]:  # the rl part: its baseline copies must not count again
        for curriculum in ("rl", "supervised"):  # PPO, and its supervised reference
            rl = _run(i, "rl", "sp500_stocks", "tcn", 2, seed, curriculum=curriculum)
            rl |= {"evaluation": "weights", "test_sharpe": rl["test_sharpe"] + 0.01 * i}
            ppo = curriculum == "rl"  # seed 0 keeps the supervised start, seed 1 a PPO epoch
            rl |= {"ppo_best_epoch": (1 if seed else -1) if ppo else None}
            rl |= {"test_gross_exposure": 0.3 if ppo else 0.1}
            rl |= {c: v + 100.0 for c, v in rl.items() if "_buyhold_" in c and isinstance(v, float)}
            rows.append(rl)
            i += 1
    alpha = _run(i, "alpha158", "sp500_stocks", "tcn", 2, 0, features="alpha158")
    alpha |= {c: v + 50.0 for c, v in alpha.items() if "_lightgbm_" in c and isinstance(v, float)}
    shift = {c: v + 100.0 for c, v in alpha.items() if "_buyhold_" in c and isinstance(v, float)}
    rows.append(alpha | shift)
    i += 1
    cross = {"cross_asset.enabled": True}
    rows.append(_run(i, "cross_asset", "sp500_stocks", "tcn", 2, 0, **cross))
    i += 1
    for family in FAMILIES:
        for seed in SEEDS[:2]:
            rows.append(_run(i, "timing", "sp500", family, 2, seed))
            i += 1
    rows.append(_run(i, "grid", "sp500_stocks", "tcn", 2, 9, status="failed"))  # ignored
    return pd.DataFrame(rows)


def write_catalogue(out, runs: pd.DataFrame):
    (out / "catalogue").mkdir(parents=True, exist_ok=True)
    runs.to_parquet(out / "catalogue" / "runs.parquet", index=False)
    return out


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    runs = synthetic_runs()
    selected = runs.query("backbone == 'tcn' and horizon == 5 and sweep_name == 'results/grid'")
    days = pd.bdate_range("2020-01-01", periods=50, name="timestamp")
    for i, row in selected.iterrows():  # the selected configuration's test backtests
        run_dir = root / "runs" / str(i)
        run_dir.mkdir(parents=True)
        r = np.full(len(days), 0.001 * (1 + row["seed"]))
        pd.DataFrame({"strategy_return": r, "buyhold_return": 0.0005}, index=days).to_parquet(
            run_dir / "backtest.parquet"
        )
        runs.loc[i, "run_dir"] = str(run_dir)
    return write_catalogue(root, runs)


@pytest.fixture(scope="module")
def loaded(out):
    return report.load(out)


def _row(w, **key) -> pd.Series:
    hit = w
    for k, v in key.items():
        hit = hit[hit[k] == v]
    assert len(hit) == 1, key
    return hit.iloc[0]


def test_mean_and_sample_std_over_seeds(loaded):
    w, _, _, _ = loaded
    r = _row(w, kind="model", family="transformer", horizon=5, part="grid")
    level = FAMILIES["transformer"] + 0.25
    test = [level + 0.1 * s - 0.3 * level for s in SEEDS]
    assert r["n_seeds"] == 3 and r["variant"] == "plain"
    assert r["test_sharpe"] == pytest.approx(np.mean(test))
    assert r["test_sharpe_std"] == pytest.approx(np.std(test, ddof=1))
    assert r["test_sharpe_lo"] == pytest.approx(np.mean(test) - 0.5)
    assert r["test_cost_drag"] == pytest.approx(0.021)


def test_variants_named_from_the_config(loaded):
    w, _, _, _ = loaded
    tuned = _row(w, kind="model", part="rl", variant="rl, evaluation=weights")
    assert tuned["n_seeds"] == 2
    assert _row(w, kind="model", part="rl", variant="evaluation=weights")["n_seeds"] == 2
    assert _row(w, kind="model", part="cross_asset")["variant"] == "cross-asset"


def test_baselines_taken_once_per_data_horizon_seed(loaded):
    w, _, _, _ = loaded
    r = _row(w, kind="baseline", family="buyhold", horizon=2, tbl="main")
    values = [0.1 * s + 0.05 for s in SEEDS]  # the grid's copies, not the rl part's (+100)
    assert r["n_seeds"] == 3
    assert r["test_sharpe"] == pytest.approx(np.mean(values))
    assert r["test_sharpe_std"] == pytest.approx(np.std(values, ddof=1))
    assert r["ir_vs"] == "cash"
    timing = _row(w, kind="baseline", family="buyhold", tbl="timing")
    assert timing["test_sharpe"] == pytest.approx(np.mean([0.55, 0.65]))
    # six baselines x two horizons on the stocks, six on the index pair, and the two learned
    # ones again on alpha158 (the rule baselines read prices only: no alpha158 copy of them)
    assert (w["kind"] == "baseline").sum() == 20
    lgb = _row(w, kind="baseline", family="lightgbm", features="alpha158")
    assert lgb["n_seeds"] == 1 and lgb["test_sharpe"] == pytest.approx(1.0 + 0.05 + 50.0)
    assert not ((w["kind"] == "baseline") & (w["features"] == "alpha158")
                & (w["family"] == "buyhold")).any()  # fmt: skip
    # the evaluation group does not change a baseline: no evaluation=weights copies
    assert set(w.loc[w["kind"] == "baseline", "variant"]) == {"baseline"}


def _order(w: pd.DataFrame) -> list[tuple]:
    return [tuple(map(str, t)) for t in w[report_tables.KEY].itertuples(index=False)]


def test_order_and_selection_use_validation_only(tmp_path, loaded):
    w, d, _, _ = loaded
    main = report_tables.main_rows(w)
    val = main["val_sharpe"].to_numpy()
    assert (np.diff(val) <= 1e-12).all()  # best on validation first
    assert report_tables.best_family(w)["family"] == "tcn"
    runs = synthetic_runs()
    rng = np.random.default_rng(0)
    for c in runs.columns:  # scramble every test metric, keep validation
        if c.startswith("test_") and runs[c].dtype.kind == "f" and c != "test_n_periods":
            runs[c] = rng.normal(size=len(runs)) * 3
    w2, d2, _, _ = report.load(write_catalogue(tmp_path, runs))
    assert _order(w2) == _order(w)
    assert report_tables.best_family(w2)["family"] == "tcn"
    assert (d2["family"], d2["horizon"], d2["part"]) == (d["family"], d["horizon"], d["part"])


def test_equity_curves_of_the_selected_runs(loaded):
    _, d, _, _ = loaded
    curves, why = report.equity_curves(d)
    assert why == ""
    assert list(curves) == ["tcn, seed 0", "tcn, seed 1", "tcn, seed 2", "baseline: buy & hold"]
    assert curves["tcn, seed 2"].iloc[0] == pytest.approx(0.003)


def test_deflated_sharpe_equals_the_reference(loaded):
    _, d, _, _ = loaded
    runs = synthetic_runs()
    runs = runs[runs["status"] == "completed"]
    cfg = runs.groupby(["sweep_name", "data", "backbone", "horizon", "features", "curriculum"])
    sr = cfg["test_sharpe"].mean() / math.sqrt(252.0)
    # grid 4, rl 2 (PPO and its supervised reference), alpha158 1, cross-asset 1, timing 2
    assert d["n_configs"] == len(sr) == 10
    assert d["sharpe_variance"] == pytest.approx(sr.var(ddof=1))
    # selected on validation: tcn at horizon 5 of the grid (highest mean val Sharpe)
    assert (d["family"], d["horizon"], d["part"]) == ("tcn", 5, "grid")
    sel = runs.query("backbone == 'tcn' and horizon == 5 and sweep_name == 'results/grid'")
    expect = deflated_sharpe(
        sel["test_sharpe"].mean() / math.sqrt(252.0),
        10,
        sr.var(ddof=1),
        1400,
        sel["test_skew"].mean(),
        sel["test_kurtosis"].mean(),
    )
    assert d["dsr"] == pytest.approx(expect, rel=1e-12)
    assert d["sr0"] == pytest.approx(expected_max_sharpe(10, sr.var(ddof=1)))
    assert not d["normal_moments"]


def test_write_results_fills_markers_and_writes_plots(out, tmp_path):
    doc = tmp_path / "page" / "results.md"
    report.write_results(out, doc, "plusultra -m test")
    text = doc.read_text()
    for mark in report.MARKS:
        block = text.split(f"<!-- {mark} -->")[1].split(f"<!-- /{mark} -->")[0]
        assert block.strip(), mark
    assert "<!-- results-reproducing -->" in text  # the recipe's section is kept
    assert "## What the numbers cannot say" in text  # hand-written text kept
    assert "`plusultra -m test`" in text
    assert "| 1 | **tcn** | 2 | 5 | full | plain | sp500_stocks | 3 |" in text
    assert "8 configurations (18 runs) outside the timing part." in text
    n_runs = int((synthetic_runs()["status"] == "completed").sum())
    assert f"durations sum to {n_runs / 60:.2f} h (" in text  # 60 s each
    assert f"at least one run was going for {n_runs / 60:.2f} h of wall time" in text  # 1 a minute
    assert "results/grid 12 min" in text  # 2 families x 2 horizons x 3 seeds
    assert "| grid | tcn | 2 | supervised | 6 | 60; 60-60 | 6.0 |" in text  # run-time table
    assert "| rl | tcn | 2 | rl | 2 |" in text  # PPO apart from its supervised reference
    # the alpha158 copy of LightGBM (+50 on every metric) is its best on validation
    assert "- LightGBM at its best on validation (alpha158, horizon 2): test IC 50.0" in text
    variants = text.split("<!-- results-variants -->")[1].split("<!-- /results-variants -->")[0]
    assert "tcn, depth 2, horizon 5" in variants  # the grid's best on validation
    rows = [line for line in variants.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 3  # header; tcn d2 h5 plain, buy & hold and LightGBM at horizon 5
    timing = text.split("<!-- results-timing -->")[1].split("<!-- /results-timing -->")[0]
    assert timing.count("| sp500 |") == 2 + 6  # two families, six baselines
    for name in [*report_plots_names(), "results_equity.png"]:
        png = doc.parent / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text
    report.write_results(out, doc, "plusultra -m test")
    assert doc.read_text() == text  # rewriting replaces the blocks, adds nothing


def report_plots_names() -> list[str]:
    from experiments.results.report_plots import PLOTS

    return list(PLOTS)


def test_busy_seconds_is_the_union_of_the_runs_intervals():
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    start = pd.Series([t0, t0 + pd.Timedelta(seconds=30), t0 + pd.Timedelta(hours=5)])
    # two overlapping runs (0-60 s and 30-120 s), then one 5 hours later (a resumed recipe)
    assert report.busy_seconds(start, pd.Series([60.0, 90.0, 10.0])) == 120.0 + 10.0
    assert report.busy_seconds(start[:1], pd.Series([60.0])) == 60.0


def test_older_catalogue_without_new_columns(tmp_path):
    runs = synthetic_runs()
    drop = [c for c in runs.columns if "lightgbm" in c or any(c.endswith(n) for n in NEW)]
    drop += ["periods_per_year", "cross_asset.enabled", "test_skew", "test_kurtosis", "duration_s"]
    runs = runs.drop(columns=drop)
    out = write_catalogue(tmp_path / "out", runs)
    doc = tmp_path / "results.md"
    report.write_results(out, doc, "old")
    text = doc.read_text()
    main = text.split("<!-- results-main -->")[1].split("<!-- /results-main -->")[0]
    assert "LightGBM" not in main and "| n/a |" in main
    assert "LightGBM: not in this catalogue" in text
    assert "normal moments assumed" in text
    assert "durations sum to" not in text  # no duration_s: no compute line
    assert "_The catalogue records no run duration._" in text
    assert "*No equity plot: the selected configuration's run directories" in text
    w, d, _, _ = report.load(out)
    assert "test_cost_drag" not in w.columns
    assert d["periods_per_year"] == 252.0  # the default when neither column exists
    # cross_asset.enabled absent: that run reads as plain, beside the grid's row
    assert _row(w, kind="model", part="cross_asset")["variant"] == "plain"


def test_facts_count_what_beats_the_baselines(loaded):
    w, d, _, _ = loaded
    text = report_facts.facts(w, d)
    models = report_tables.main_rows(w)
    models = models[models["kind"] == "model"]
    bh = {2: np.mean([0.1 * s + 0.05 for s in SEEDS]), 5: np.mean([0.1 * s + 0.05 for s in SEEDS])}
    k = sum(r["test_sharpe"] > bh[r["horizon"]] for _, r in models.iterrows())
    assert f"- {k} of {len(models)} configurations have a higher mean test Sharpe" in text
    n = len(models)  # every model's validation Sharpe (level >= 0.5) beats buy & hold's (0.1)
    assert f"than buy & hold on the same data and horizon ({n} of {n} on validation)." in text
    assert "LightGBM on the same data and horizon" in text
    # test Sharpe rises with the horizon (level + 0.05 h): both (family, depth 2) pairs
    assert (
        "- The grid at horizon 5 against horizon 2: 2 of 2 (family, depth) pairs have the higher "
        "mean test Sharpe at horizon 5; median test turnover 0.30 a bar at horizon 2 against "
        "0.30, median cost drag 2.10% a year against 2.10%." in text
    )
    assert "- Timing the index pair: 1 of 2 configurations have a higher mean test Sharpe" in text
    drag = models["test_cost_drag"].median()  # each configuration's mean over its seeds
    assert f"- Test cost drag: {drag:.2%} a year at the median configuration" in text
    rl = _row(w, kind="model", part="rl", variant="rl, evaluation=weights")
    twin = _row(w, kind="model", part="rl", variant="evaluation=weights")  # traded alike
    assert rl["test_sharpe"] != twin["test_sharpe"]
    assert f"test Sharpe {rl['test_sharpe']:.2f} against {twin['test_sharpe']:.2f}" in text
    assert text.count("- RL fine-tuning") == 1  # the supervised reference is not an RL run


def test_rl_facts_seed_by_seed(out):
    w, d, _, seeds = report.load(out)
    assert seeds["seed"].tolist() == [0, 1] and seeds["ppo_best_epoch"].tolist() == [-1, 1]
    runs = synthetic_runs().query("sweep_name == 'results/rl' and seed == 1")
    ppo, sup = (runs[runs["curriculum"] == c].iloc[0] for c in ("rl", "supervised"))
    text = report_facts.facts(w, d, seeds)
    assert (
        "- RL seed by seed (tcn, depth 2, horizon 2, full, evaluation=weights): PPO replaced the "
        "supervised policy on validation in 1 of 2 seeds; in the other 1 no PPO epoch beat the "
        "supervised start on validation, so the run trades it unchanged (seed 1: test Sharpe "
        f"{ppo['test_sharpe']:.2f} against {sup['test_sharpe']:.2f}, validation "
        f"{ppo['val_sharpe']:.2f} against {sup['val_sharpe']:.2f}, gross exposure 0.30 against "
        "0.10)." in text
    )
    assert "RL seed by seed" not in report_facts.facts(w, d)  # without the query's rows


def test_no_results_runs_is_a_clear_error(tmp_path):
    runs = synthetic_runs().assign(sweep_name="other")
    with pytest.raises(DataError, match="no completed run with a sweep_name starting 'results/'"):
        report.load(write_catalogue(tmp_path, runs))


def test_structure_part_beside_the_grid_default(tmp_path):
    runs = synthetic_runs()
    runs["backbone.dilations"] = runs["backbone"].map({"tcn": "[1, 2, 4, 8]"})
    extra = []
    for k, seed in enumerate(SEEDS):  # tcn depth 2 horizon 5 with other dilations
        r = _run(900 + k, "structure", "sp500_stocks", "tcn", 5, seed)
        r |= {"backbone.dilations": "[4, 8]", "val_sharpe": r["val_sharpe"] + 0.2}
        r |= {"test_sharpe": r["test_sharpe"] - 0.5}
        extra.append(r)
    out = write_catalogue(tmp_path / "out", pd.concat([runs, pd.DataFrame(extra)]))
    w, d, _, _ = report.load(out)
    # results_deflated.sql names variants as results_table.sql does (the expression is in both):
    # the same configurations, the structure one apart from the grid's default
    assert d["n_configs"] == int((w["kind"] == "model").sum())
    deflated_key = (d["family"], d["depth"], d["horizon"], d["features"], d["variant"], d["part"])
    table_keys = set(w[["family", "depth", "horizon", "features", "variant", "part"]].itertuples(
        index=False, name=None))  # fmt: skip
    assert deflated_key in table_keys
    rows = report_tables.structure_rows(w)
    assert rows["variant"].tolist() == ["dilations=[4, 8]", "plain"]  # validation order
    assert rows["part"].tolist() == ["structure", "grid"]
    assert set(rows["horizon"]) == {5} and set(rows["family"]) == {"tcn"}
    grid = _row(w, kind="model", part="grid", family="tcn", horizon=5)
    assert rows.iloc[1]["test_sharpe"] == pytest.approx(grid["test_sharpe"])
    assert rows.iloc[0]["test_sharpe"] == pytest.approx(grid["test_sharpe"] - 0.5)
    # the structure rows are configurations of their own, not the best family's variants
    assert "structure" not in set(report_tables.variant_rows(w)["part"])
    text = report_facts.facts(w, d)
    assert (
        "- tcn (depth 2, horizon 5), 2 settings of its temporal structure: best on validation "
        f"dilations=[4, 8] (test Sharpe {grid['test_sharpe'] - 0.5:.2f}); the highest test Sharpe "
        f"at the default; the default (the grid's runs) has test Sharpe {grid['test_sharpe']:.2f}."
        in text
    )
    doc = tmp_path / "results.md"
    report.write_results(out, doc, "t")
    block = doc.read_text().split("<!-- results-structure -->")[1].split("<!-- /results-")[0]
    assert "| dilations=[4, 8] |" in block and "| plain |" in block
