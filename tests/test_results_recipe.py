"""Issue 15's results recipe (experiments/results): its grid, resume, best-family selection on
validation only, and (slow) the smoke recipe's metrics against tests/data/results_smoke.json."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from experiments.results import smoke
from experiments.results.plan import FAMILIES, Job, batches, finished, multirun_overrides, pending
from experiments.results.recipe import (
    FULL,
    SMOKE,
    Best,
    best_family,
    check_settings,
    evaluation_overrides,
    extends,
    part_jobs,
)

from plusultra.catalogue.rows import CORE_COLUMNS, write_row

REPO = Path(__file__).resolve().parents[1]


def _values(jobs: list[Job], key: str) -> set[str | None]:
    return {j.value(key) for j in jobs}


def test_grid_is_six_families_two_depths_two_horizons_three_seeds():
    jobs = part_jobs("grid", FULL, [], None)
    assert len(jobs) == 6 * 2 * 2 * 3 == len({j.key for j in jobs})
    assert _values(jobs, "backbone") == set(FAMILIES)
    assert len(_values(jobs, "depth")) == 2 and len(_values(jobs, "horizon")) == 2
    assert _values(jobs, "seed") == {"0", "1", "2"}
    assert _values(jobs, "sweep_name") == {"results/grid"}
    assert _values(jobs, "experiment") == {"results"}


def test_parts_on_the_best_family():
    best = Best("tcn", 2, 5)
    for part in ("alpha158", "cross_asset"):
        jobs = part_jobs(part, FULL, [], best)
        assert len(jobs) == 3 and _values(jobs, "backbone") == {"tcn"}
        assert _values(jobs, "depth") == {"2"} and _values(jobs, "horizon") == {"5"}
        assert _values(jobs, "sweep_name") == {f"results/{part}"}
    rl = part_jobs("rl", FULL, [], best)  # 3 PPO runs and their supervised reference
    assert sorted(j.value("curriculum") for j in rl) == ["rl"] * 3 + ["supervised"] * 3
    assert {j.value("evaluation") for j in rl if j.value("curriculum") == "supervised"} == {
        "weights"
    }
    timing = part_jobs("timing", FULL, [], None)
    assert len(timing) == 18 and _values(timing, "data") == {"sp500"}
    with pytest.raises(ValueError, match="best family"):
        part_jobs("alpha158", FULL, [], None)
    smoke_grid = part_jobs("grid", SMOKE, [], None)
    assert len(smoke_grid) == 2 and _values(smoke_grid, "experiment") == {"results_smoke"}


def test_structure_part_sweeps_dilations_and_scales():
    jobs = part_jobs("structure", FULL, [], None)  # needs no best family
    assert len(jobs) == 2 * 2 * 3 == len({j.key for j in jobs})  # 2 families x 2 values x seeds
    assert _values(jobs, "sweep_name") == {"results/structure"}
    assert _values(jobs, "depth") == {"2"} and _values(jobs, "horizon") == {"5"}
    tcn = [j for j in jobs if j.value("backbone") == "tcn"]
    assert _values(tcn, "backbone.dilations") == {"[4,8]", "[8,16]"}
    assert _values(tcn, "backbone.scales") == {None}
    ms = [j for j in jobs if j.value("backbone") == "multiscale"]
    assert _values(ms, "backbone.scales") == {"[1]", "[1,5,21,63]"}
    # one multirun per value (the value is not a swept key), each over the seeds
    groups = batches(jobs)
    assert len(groups) == 4 and all(len(g) == 3 for g in groups)
    assert any("backbone.dilations=[4,8]" in multirun_overrides(g) for g in groups)
    assert len(part_jobs("structure", SMOKE, [], None)) == 1


def test_settings_stamp_accepts_added_parts_only(tmp_path):
    out = tmp_path / "out"
    check_settings(out, FULL, ["evaluation.bootstrap=10"])
    stamp = json.loads((out / "recipe.json").read_text())
    check_settings(out, FULL, ["evaluation.bootstrap=10"])  # the same settings again
    older = json.loads(json.dumps(stamp))  # a recipe from before the structure part
    older["sizes"]["parts"].remove("structure")
    for key in ("structure", "structure_depth", "structure_horizon"):
        del older["sizes"][key]
    assert extends(older, stamp) and not extends(stamp, older)  # parts may only be added
    (out / "recipe.json").write_text(json.dumps(older))
    check_settings(out, FULL, ["evaluation.bootstrap=10"])  # kept, and the stamp updated
    assert json.loads((out / "recipe.json").read_text()) == stamp
    changed = json.loads(json.dumps(stamp))
    changed["sizes"]["seeds"] = [0, 1]
    assert not extends(changed, stamp)
    with pytest.raises(SystemExit, match="other recipe settings"):
        check_settings(out, FULL, ["evaluation.bootstrap=20"])


def _expand(overrides: list[str]) -> set[frozenset[str]]:
    """What Hydra's basic sweeper runs for these overrides (comma lists, no brackets here)."""
    options = [
        [f"{o.partition('=')[0]}={v}" for v in o.partition("=")[2].split(",")] for o in overrides
    ]
    return {frozenset(c) for c in itertools.product(*options)}


def test_batches_run_every_pending_job_exactly_once():
    jobs = part_jobs("grid", FULL, [], None)
    todo = [j for i, j in enumerate(jobs) if i % 7 not in (0, 3)]  # a resumed, ragged grid
    launched: list[frozenset[str]] = []
    groups = batches(todo)
    for batch in groups:
        expanded = _expand(multirun_overrides(batch))
        assert expanded == {j.key for j in batch}
        launched.extend(expanded)
    assert sorted(map(sorted, launched)) == sorted(sorted(j.key) for j in todo)
    assert len(groups) < len(todo)  # multiruns, not one process per job
    assert len(batches(jobs)) == 1  # the full grid is one product


def _row(run_id: str, overrides: str, status: str = "completed", **values) -> dict:
    finished_at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=len(run_id))
    return {
        **dict.fromkeys(CORE_COLUMNS),  # a catalogue row's fixed columns
        "run_id": run_id,
        "status": status,
        "started_at": finished_at - timedelta(minutes=1),
        "finished_at": finished_at,
        "overrides": overrides,
        **values,
    }


def test_resume_skips_completed_runs_only(tmp_path):
    jobs = part_jobs("grid", FULL, [], None)[:4]
    cat = tmp_path / "catalogue"
    assert finished(cat) == set()
    # the catalogue's order of the overrides need not be the recipe's
    write_row(cat, _row("a", " ".join(reversed(jobs[0].overrides))))
    write_row(cat, _row("b", " ".join(jobs[1].overrides), status="failed"))
    write_row(cat, _row("c", " ".join(jobs[2].overrides[:-1])))  # another (partial) set
    assert pending(jobs, finished(cat)) == jobs[1:]


def _grid_catalogue(cat: Path, rng_test: float = 0.0) -> None:
    """Two families x 2 seeds; tcn has the better validation Sharpe, hybrid the better test."""
    n = 0
    for family, val, test in (("hybrid", 0.2, 2.0), ("tcn", 0.5, -1.0)):
        for seed in (0, 1):
            n += 1
            write_row(
                cat,
                _row(
                    f"{family}{seed}",
                    f"backbone={family} depth=2 horizon=5 seed={seed} sweep_name=results/grid",
                    sweep_name="results/grid",
                    backbone=family,
                    depth=2,
                    horizon=5,
                    seed=seed,
                    val_sharpe=val + 0.01 * seed,
                    val_ic=0.01,
                    test_sharpe=test + rng_test * n,
                    test_ic=0.05 - rng_test * n,
                ),
            )
    # another part's run with a higher validation Sharpe is not the grid's
    write_row(
        cat,
        _row(
            "x",
            "backbone=ssm",
            sweep_name="results/timing",
            backbone="ssm",
            depth=2,
            horizon=5,
            seed=0,
            val_sharpe=9.0,
            val_ic=0.1,
            test_sharpe=9.0,
        ),
    )


def test_best_family_is_chosen_on_validation_only(tmp_path):
    _grid_catalogue(tmp_path / "a")
    assert best_family(tmp_path / "a") == Best("tcn", 2, 5)
    _grid_catalogue(tmp_path / "b", rng_test=7.5)  # every test column perturbed
    assert best_family(tmp_path / "b") == Best("tcn", 2, 5)
    # a validation change does move it (the check above could fail)
    cat = tmp_path / "a"
    write_row(
        cat,
        _row(
            "hybrid0",
            "backbone=hybrid depth=2 horizon=5 seed=0",
            sweep_name="results/grid",
            backbone="hybrid",
            depth=2,
            horizon=5,
            seed=0,
            val_sharpe=5.0,
            val_ic=0.0,
            test_sharpe=0.0,
        ),
    )
    assert best_family(cat) == Best("hybrid", 2, 5)
    assert best_family(tmp_path / "empty") is None


def test_best_family_query_reads_no_test_column():
    sql = (REPO / "experiments" / "queries" / "results_best_family.sql").read_text()
    body = "\n".join(line for line in sql.splitlines() if not line.startswith("--"))
    assert "test" not in body.lower()


def test_evaluation_overrides_follow_the_checkout(tmp_path):
    plain = tmp_path / "plain.yaml"
    plain.write_text("baselines: [buyhold, ridge]\nbootstrap: 1000\n")
    assert evaluation_overrides(plain) == []
    full = tmp_path / "full.yaml"
    full.write_text("baselines: [buyhold]\nridge_alphas: [1.0]\nlightgbm:\n  num_leaves: 31\n")
    got = evaluation_overrides(full)
    assert got[0].startswith("evaluation.baselines=[") and got[0].endswith(",lightgbm]")
    assert got[1].startswith("evaluation.ridge_alphas=[")


def test_smoke_compare_reports_each_difference():
    expected = {"best": ["tcn", 1, 2], "runs": {"k": {"val_sharpe": 1.0, "test_ic": 0.02}}}
    assert smoke.compare(json.loads(json.dumps(expected)), expected) == []
    close = {"best": ["tcn", 1, 2], "runs": {"k": {"val_sharpe": 1.0 + 1e-6, "test_ic": 0.02}}}
    assert smoke.compare(close, expected) == []
    moved = {"best": ["hybrid", 1, 2], "runs": {"k": {"val_sharpe": 1.1}, "new": {}}}
    problems = smoke.compare(moved, expected)
    assert len(problems) == 4, problems  # best, val_sharpe, test_ic missing, run 'new'


@pytest.mark.slow
def test_smoke_recipe_reproduces_its_stored_metrics(tmp_path):
    """The smoke recipe (sp500_stocks, pinned seeds, 2 torch threads) against the stored values.

    Regenerate after an intended change: python -m experiments.results --smoke --write-expected
    """
    out = tmp_path / "smoke"
    args = [sys.executable, "-m", "experiments.results", "--smoke", "--out", str(out)]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / "results.md").is_file() or "printing the catalogue" in done.stdout
    best = best_family(out / "catalogue")
    actual = smoke.collect(out / "catalogue", (best.family, best.depth, best.horizon))
    expected = json.loads(smoke.EXPECTED.read_text())
    assert smoke.compare(actual, expected) == []
    # resume: the same command again starts nothing
    again = subprocess.run(
        [*args, "--no-doc"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "starting 0" in again.stdout and "starting 1" not in again.stdout


def test_jobs_match_the_overrides_hydra_records():
    """The sweeper rewrites values (true -> True, ${seed} escaped); a job still finds its row."""
    job = Job("rl", ("cross_asset.enabled=true", "curriculum.stages.1.ppo.seed=${seed}", "seed=0"))
    recorded = r"cross_asset.enabled=True curriculum.stages.1.ppo.seed=$\{seed\} seed=0"
    assert pending([job], {frozenset(recorded.split())}) == []
    assert pending([job], {frozenset(recorded.replace("seed=0", "seed=1").split())}) == [job]


def test_batches_never_impose_a_key_on_a_job_without_it():
    jobs = [Job("x", ("seed=0",)), Job("x", ("seed=0", "depth=2"))]
    groups = batches(jobs)
    assert sorted(len(g) for g in groups) == [1, 1]
    assert {frozenset(multirun_overrides(g)) for g in groups} == {j.key for j in jobs}
