"""plusultra-report SWEEP_DIR: the study sections, ranking on validation only, the Pareto front,
a plain grid, bad paths; a real plusultra sweep in the slow tier."""

from __future__ import annotations

import base64
import io
import itertools
import json
from html.parser import HTMLParser
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from plusultra.evaluation.report.sweep import write_sweep_reports
from plusultra.evaluation.report.sweep_analysis import importance, pareto_front, rank_trials
from plusultra.evaluation.report.sweep_data import load_sweep
from tests.browser import assert_renders
from tests.conftest import TINY, run_cli

OURS = "hydra_plugins.plusultra_optuna_sweeper.sweeper.PlusUltraOptunaSweeper"
BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
SPACE = {
    "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
    "d_model": CategoricalDistribution([16, 32]),
    "depth": IntDistribution(1, 1),  # a single-valued parameter
}


class Page(HTMLParser):
    """Images (as decoded bytes) and tables (rows of cells) of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.tables, self.headings, self._cell = [], [], [], None
        self._heading = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            src = dict(attrs)["src"]
            assert src.startswith("data:image/png;base64,")
            self.images.append(base64.b64decode(src.split(",", 1)[1]))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""
        elif tag in ("h2", "h3"):
            self._heading = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None
        elif tag in ("h2", "h3"):
            self._heading = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        elif self._heading:
            self.headings.append(data)


def check_page(html_path: Path) -> Page:
    """Every image is a PNG matplotlib reads back; every table row is as wide as its header."""
    from matplotlib.image import imread

    page = Page(html_path.read_text())
    for png in page.images:
        assert png.startswith(b"\x89PNG") and imread(io.BytesIO(png)).ndim == 3
    for table in page.tables:
        assert len(table) >= 1 and all(len(row) == len(table[0]) for row in table)
    return page


def top_table(page: Page) -> list[dict[str, str]]:
    table = next(t for t in page.tables if t[0][:2] == ["rank", "trial"])
    return [dict(zip(table[0], row, strict=True)) for row in table[1:]]


def make_sweep(root: Path, name: str, directions: list[str], trials: list[dict], metric) -> Path:
    """A sweep dir laid out as plusultra -m with our sweeper writes it, and a real SQLite study.

    `trials`: dicts with `params`, `state`, `values` (complete), `last` (pruned), `metrics`
    (None: the job wrote no metrics.json). The storage dir is an interpolation, resolved from
    the job's resolved config.yaml as in a real sweep.
    """
    out = root / "outputs"
    url = f"sqlite:///{out / 'optuna' / f'{name}.db'}"
    (out / "optuna").mkdir(parents=True)
    study = optuna.create_study(study_name=name, storage=url, directions=directions)
    sweep = out / "multiruns" / "2026-11-30" / "10-00-00_1-abcdef"
    sweeper = {
        "_target_": OURS,
        "direction": directions if len(directions) > 1 else directions[0],
        "storage": None,
        "storage_dir": "${oc.select:paths.output_dir,outputs}/optuna",
        "study_name": None,
    }
    for num, spec in enumerate(trials):
        values = spec.get("values")
        state = spec.get("state", TrialState.COMPLETE)
        last = spec.get("last")
        study.add_trial(
            create_trial(
                params=spec["params"],
                distributions={k: SPACE[k] for k in spec["params"]},
                values=values if state == TrialState.COMPLETE else None,
                state=state,
                intermediate_values={0: last} if last is not None else None,
            )
        )
        if not spec.get("here", True):  # ran in an earlier invocation: a catalogue row only
            catalogue_row(
                out / "catalogue", out / "multiruns" / "earlier" / str(num), name, num, spec
            )
            continue
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        overrides = [f"{k}={v}" for k, v in spec["params"].items()]
        overrides += [f"++optuna.study={name}", f"++optuna.trial={num}"]
        cfg = {"optimized_metric": metric, "optuna": {"study": name, "trial": num}}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        hydra = {"hydra": {"sweeper": sweeper, "runtime": {"cwd": str(root)}}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
        paths = {"output_dir": str(out), "catalogue_dir": "outputs/catalogue"}  # relative: cwd
        (job / "config.yaml").write_text(yaml.safe_dump({**cfg, "paths": paths}))
        if spec.get("metrics") is not None:
            (job / "metrics.json").write_text(json.dumps(spec["metrics"]))
    return sweep


def catalogue_row(catalogue: Path, run_dir: Path, name: str, num: int, spec: dict) -> None:
    """The catalogue row a trial's job writes (as the catalogue callback builds it)."""
    from datetime import UTC, datetime

    from plusultra.catalogue.rows import build_row, new_run_id, write_row

    now = datetime.now(UTC)
    row = build_row(
        run_id=new_run_id(),
        run_dir=run_dir,
        status="completed",
        error=None,
        started_at=now,
        finished_at=now,
        git_rev="test",
        overrides=[],
        choices={},
        config={"optuna": {"study": name, "trial": num}},
        metrics=spec["metrics"],
        multirun=True,
        job_num=num,
        study="s",
    )
    write_row(catalogue, row)


def _metrics(val_sharpe: float, test_sharpe: float, dd: float = -0.1) -> dict:
    return {
        "val_sharpe": val_sharpe,
        "test_sharpe": test_sharpe,
        "val_max_drawdown": dd,
        "test_max_drawdown": dd * 2,
        "val_loss": 1.0,
        "test_loss": None,
    }


@pytest.fixture
def single(tmp_path) -> Path:
    """Maximise val_sharpe: trial 1 has the best test Sharpe but a worse val Sharpe than 0."""
    p = lambda lr, d: {"optim.lr": lr, "d_model": d, "depth": 1}  # noqa: E731
    trials = [
        {"params": p(1e-3, 16), "values": [1.2], "metrics": _metrics(1.2, 0.1)},
        {"params": p(3e-3, 32), "values": [0.4], "metrics": _metrics(0.4, 5.0)},
        {"params": p(2e-4, 16), "values": [0.9], "metrics": _metrics(0.9, 0.3)},
        {"params": p(5e-3, 32), "values": [-0.2], "metrics": _metrics(-0.2, 0.0)},
        {"params": p(1e-4, 16), "state": TrialState.PRUNED, "last": 0.1, "metrics": None},
        {"params": p(8e-3, 32), "state": TrialState.FAIL, "metrics": None},
    ]
    return make_sweep(tmp_path, "demo", ["maximize"], trials, "val_sharpe")


def test_single_objective_report_has_every_section(single):
    html_path, md_path = write_sweep_reports(single)
    assert html_path == single / "sweep_report.html" and md_path == single / "sweep_report.md"
    page = check_page(html_path)
    text = html_path.read_text()
    assert "Study: demo" in text and "Trials: 4 complete, 1 pruned, 1 failed" in text
    assert f"Storage: sqlite:///{single.parents[2] / 'optuna' / 'demo.db'}" in text
    assert "Directions: maximize val_sharpe" in text
    assert page.headings[:5] == [
        "Search space",
        "Optimisation history",
        "Parameter importance (fANOVA)",
        "val_sharpe",
        "Objective against the most important parameter",
    ]
    space = next(t for t in page.tables if t[0] == ["parameter", "distribution"])
    assert ["optim.lr", "float in [0.0001, 0.01], log scale"] in space
    assert ["d_model", "one of 16, 32"] in space
    assert "importance 0 by construction: depth" in text  # the single-valued parameter
    assert len(page.images) == 3  # history, importance, objective vs top parameter
    md = md_path.read_text()
    links = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(links) == 3 and all((single / link).is_file() for link in links)
    rows = top_table(page)
    assert [r["trial"] for r in rows] == ["0", "2", "1", "3"]  # pruned and failed not ranked
    assert rows[0]["val_sharpe"] == "1.2" and rows[0]["test_sharpe"] == "0.1"
    assert rows[0]["test_loss"] == "n/a"  # null in metrics.json
    assert "never used to rank" in text


def test_ranking_ignores_test_metrics(single):
    study = load_sweep(single).study
    assert [t.number for t in rank_trials(study)][:2] == [0, 2]
    rows = top_table(check_page(write_sweep_reports(single)[0]))
    # trial 1 has the best test Sharpe of the study (5.0) and the third val Sharpe: third
    assert max(rows, key=lambda r: float(r["test_sharpe"]))["trial"] == "1"
    assert [r["trial"] for r in rows][:3] == ["0", "2", "1"]
    rows = top_table(Page(write_sweep_reports(single, top=2)[0].read_text()))
    assert [r["trial"] for r in rows] == ["0", "2"]


def test_multi_objective_pareto_front(tmp_path):
    vals = [(1.0, -0.30), (0.8, -0.10), (0.5, -0.05), (0.7, -0.20), (0.4, -0.40), (0.9, -0.10)]
    p = lambda i: {"optim.lr": 1e-4 * (i + 1), "d_model": 16 << (i % 2), "depth": 1}  # noqa: E731
    trials = [
        {"params": p(i), "values": list(v), "metrics": _metrics(v[0], 0.0, v[1])}
        for i, v in enumerate(vals)
    ]
    sweep = make_sweep(
        tmp_path, "mo", ["maximize", "maximize"], trials, ["val_sharpe", "val_max_drawdown"]
    )

    def dominated(a, b):  # b dominates a: at least as good on both, better on one
        return all(y >= x for x, y in zip(a, b, strict=True)) and b != a

    expected = {i for i, a in enumerate(vals) if not any(dominated(a, b) for b in vals)}
    assert expected == {0, 2, 5}
    assert pareto_front(load_sweep(sweep).study) == expected
    page = check_page(write_sweep_reports(sweep)[0])
    assert "Pareto front" in page.headings and len(page.images) == 2 + 2 + 1
    rows = top_table(page)
    assert {int(r["trial"]) for r in rows if r["Pareto"] == "yes"} == expected
    assert [r["trial"] for r in rows] == ["0", "5", "2", "1", "3", "4"]  # front first
    assert rows[0]["objective: val_max_drawdown"] == "-0.3"


def test_importance_says_why_instead_of_failing(tmp_path):
    one = [{"params": {"optim.lr": 1e-3, "d_model": 16, "depth": 1}, "values": [1.0]}]
    sweep = make_sweep(tmp_path / "a", "one", ["minimize"], one, "val_loss")
    scores, note = importance(load_sweep(sweep).study, 0)
    assert scores is None and "2 or more complete trials; the study has 1" in note
    text = write_sweep_reports(sweep)[0].read_text()
    assert "Skipped: no parameter importance" in text
    flat = [{**one[0], "params": {**one[0]["params"], "optim.lr": lr}} for lr in (1e-3, 2e-3)]
    sweep = make_sweep(tmp_path / "b", "flat", ["minimize"], flat, "val_loss")
    scores, note = importance(load_sweep(sweep).study, 0)
    assert scores is None and "zero total variance" in note


def test_trials_of_an_earlier_invocation_come_from_the_catalogue(tmp_path, capsys):
    p = {"optim.lr": 1e-3, "d_model": 16, "depth": 1}
    trials = [
        {"params": p, "values": [0.5], "metrics": _metrics(0.5, 0.2), "here": False},
        {"params": p, "values": [0.9], "metrics": _metrics(0.9, 0.4), "here": False},
        {"params": p, "values": [0.7], "metrics": _metrics(0.7, 0.3)},
    ]
    sweep = make_sweep(tmp_path, "resumed", ["maximize"], trials, "val_sharpe")
    assert [j.trial for j in load_sweep(sweep).jobs] == [2]
    code, _, err = _cli(capsys, str(sweep))
    assert code == 0, err
    rows = top_table(check_page(sweep / "sweep_report.html"))
    assert [(r["trial"], r["job"], r["test_sharpe"]) for r in rows] == [
        ("1", "earlier/1", "0.4"),
        ("2", "2", "0.3"),
        ("0", "earlier/0", "0.2"),
    ]
    # without the catalogue the report still renders, naming what it could not find
    write_sweep_reports(sweep)
    assert "Job 'not found'" in (sweep / "sweep_report.md").read_text()


@pytest.mark.slow  # ~5 s: a subprocess sweep of the test app
def test_real_sweeper_layout_finds_its_study(tmp_path):
    """Job dirs written by our sweeper (tests/sweeper_app): no multirun.yaml, study from jobs."""
    from tests.test_sweeper import run_app

    run_app(tmp_path, "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert not (sweep / "multirun.yaml").exists()
    loaded = load_sweep(sweep)
    assert loaded.study is not None and len(loaded.study.trials) == 2
    rows = top_table(check_page(write_sweep_reports(sweep)[0]))
    assert sorted(r["job"] for r in rows) == ["0", "1"]


def test_plain_grid_gets_a_jobs_table(tmp_path):
    sweep = tmp_path / "grid"
    sweeper = {"hydra": {"sweeper": {"_target_": BASIC, "max_batch_size": None}}}
    (sweep).mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(sweeper))
    for num, seed in enumerate((1, 2, 3)):
        job = sweep / str(num)
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"seed={seed}", "depth=1"]))
        (job / ".hydra" / "config.yaml").write_text(
            "optimized_metric: val_loss\noptuna:\n  study: null\n"
        )
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(sweeper))
        if seed != 3:
            (job / "metrics.json").write_text(json.dumps(_metrics(0.5 * seed, -0.5 * seed)))
    html_path, md_path = write_sweep_reports(sweep)
    page = check_page(html_path)
    assert "Not an Optuna sweep" in html_path.read_text() and not page.images
    (table,) = page.tables
    assert table[0][:3] == ["job", "seed", "status"]  # depth is the same in every job
    assert [r[:3] for r in table[1:]] == [
        ["0", "1", "completed"],
        ["1", "2", "completed"],
        ["2", "3", "no metrics.json"],
    ]
    head = table[0]
    assert head[head.index("val_sharpe") + 1] == "test_sharpe"  # side by side
    assert table[2][head.index("test_sharpe")] == "-1"


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """`plusultra-report ARGS` in-process: (exit code, stdout, stderr)."""
    from plusultra.cli.report import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_sweep_dir_and_bad_paths(single, tmp_path, capsys):
    code, out, err = _cli(capsys, str(single), "--top", "1")
    assert code == 0 and "sweep_report.html" in out, err
    assert len(top_table(Page((single / "sweep_report.html").read_text()))) == 1
    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "notes.txt").write_text("x")
    (single.parents[2] / "optuna" / "demo.db").unlink()  # the study's storage is gone
    (single / "sweep_report.html").unlink()
    expected = {
        tmp_path / "neither": "neither a run dir",
        tmp_path / "missing": "not a directory",
        single: "does not exist",
    }
    for path, message in expected.items():
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        code, _, err = _cli(capsys, str(path))
        assert code == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("plusultra-report: error:"), lines
        assert message in lines[0]
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    code, helped, _ = _cli(capsys, "--help")
    assert code == 0 and "RUN_DIR|SWEEP_DIR" in helped and "sweep_report.html" in helped


@pytest.mark.slow
def test_real_plusultra_sweep_report(tiny_db, tmp_path):
    """A 3-trial plusultra_optuna sweep of the real model, then `plusultra-report SWEEP_DIR`."""
    res = run_cli(
        [
            "plusultra.run",
            "-m",
            "hydra/sweeper=plusultra_optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.sampler={_target_: optuna.samplers.RandomSampler, seed: 0}",
            "optim.lr=tag(log, interval(1e-4, 1e-2))",
            "d_model=choice(16, 32)",
            *[a for a in TINY if not a.startswith("d_model=")],
            "evaluation.bootstrap=0",
            "data=sqlite",
            f"data.path={tiny_db}",
        ],
        tmp_path,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    (sweep,) = (tmp_path / "multiruns").glob("*/*")
    done = run_cli(["plusultra.cli.report", str(sweep)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    page = check_page(sweep / "sweep_report.html")
    assert len(page.images) == 3
    assert_renders(sweep / "sweep_report.html", min_images=3, min_tables=2)  # in Chromium
    rows = top_table(page)
    assert sorted(r["job"] for r in rows) == ["0", "1", "2"]
    for r, (a, b) in itertools.product(rows, [("val_sharpe", "test_sharpe")]):
        assert r[a] != "n/a" and r[b] != "n/a"
    values = [float(r["objective: val_loss"]) for r in rows]
    assert values == sorted(values)  # val_loss, minimised: best first
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(values, rel=1e-3)
