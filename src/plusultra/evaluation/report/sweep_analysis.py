"""What the sweep report computes from a study: trial counts, search space, ranking on the
validation objective, best-so-far, the Pareto front and fANOVA parameter importance.

Ranking sees only the values told to the study: each job returns its `optimized_metric`, a
`val_*` metric (a `test_*` one is refused, docs/catalogue.md), so no test metric can move a
trial up or down. Test metrics are read afterwards, only to be shown beside it.
"""

from __future__ import annotations

import math
import warnings

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

STATES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}
FANOVA_SEED = 0  # the random forest behind fANOVA: a fixed seed, so a report is reproducible


def state_counts(study: Study) -> dict[str, int]:
    """complete, pruned, failed (always), then running and waiting where there are any."""
    counts = dict.fromkeys(STATES.values(), 0)
    for t in study.get_trials(deepcopy=False):
        counts[STATES[t.state]] += 1
    return {k: v for k, v in counts.items() if v or k in ("complete", "pruned", "failed")}


def search_space(study: Study) -> dict[str, BaseDistribution]:
    """Every sampled parameter and its distribution (the latest trial's, where they differ)."""
    space: dict[str, BaseDistribution] = {}
    for t in study.get_trials(deepcopy=False):
        space.update(t.distributions)
    return space


def describe_distribution(d: BaseDistribution) -> str:
    """`float in [0.0001, 0.01], log scale`, `int in [1, 8] step 2`, `one of 16, 32`."""
    if isinstance(d, CategoricalDistribution):
        return "one of " + ", ".join(str(c) for c in d.choices)
    if isinstance(d, FloatDistribution | IntDistribution):
        kind = "float" if isinstance(d, FloatDistribution) else "int"
        text = f"{kind} in [{d.low:g}, {d.high:g}]"
        if d.log:
            text += ", log scale"
        if d.step is not None and not (kind == "int" and d.step == 1):
            text += f", step {d.step:g}"
        return text
    return repr(d)


def objective_names(study: Study, optimized_metric: list[str]) -> list[str]:
    """The jobs' `optimized_metric`, else Optuna's metric names, else `objective <i>`."""
    n = len(study.directions)
    if len(optimized_metric) == n:
        return list(optimized_metric)
    if study.metric_names and len(study.metric_names) == n:
        return list(study.metric_names)
    return [f"objective {i + 1}" for i in range(n)]


def directions(study: Study) -> list[str]:
    return ["maximize" if d == StudyDirection.MAXIMIZE else "minimize" for d in study.directions]


def complete_trials(study: Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def pareto_front(study: Study) -> set[int]:
    """Numbers of the best trials (one objective) or the Pareto front (several), by Optuna."""
    if not complete_trials(study):
        return set()
    return {t.number for t in study.best_trials}


def rank_trials(study: Study) -> list[FrozenTrial]:
    """Complete trials, best first, on the values told to the study (validation only).

    One objective: by value in the study's direction. Several: the Pareto front first, then
    the others; within each, by the first objective in its direction. Ties: trial number.
    """
    sign = [-1.0 if d == "maximize" else 1.0 for d in directions(study)]
    front = pareto_front(study)

    def key(t: FrozenTrial) -> tuple:
        return (t.number not in front, sign[0] * t.values[0], t.number)

    return sorted(complete_trials(study), key=key)


def best_so_far(values: list[float], direction: str) -> list[float]:
    """Running best of `values` in trial order (`maximize`: running max, else running min)."""
    pick = max if direction == "maximize" else min
    out: list[float] = []
    for v in values:
        out.append(v if not out else pick(out[-1], v))
    return out


def last_value(trial: FrozenTrial) -> float | None:
    """A pruned trial's last reported intermediate value, if it reported any."""
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def importance(study: Study, index: int) -> tuple[dict[str, float] | None, str]:
    """fANOVA importance of each parameter for objective `index`, and a note.

    Uses `optuna.importance.FanovaImportanceEvaluator` (a random forest from scikit-learn) on
    the complete trials. None and the reason instead of failing when it cannot say anything:
    fewer than 2 complete trials, no parameter sampled in every complete trial, or no
    variation at all. A parameter that took a single value has importance 0 by construction;
    the note names it.
    """
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    trials = complete_trials(study)
    if len(trials) < 2:
        return None, f"fANOVA needs 2 or more complete trials; the study has {len(trials)}."
    common = set.intersection(*(set(t.params) for t in trials))
    if not common:
        return None, "No parameter was sampled in every complete trial: fANOVA has no input."
    single = sorted(p for p in common if len({repr(t.params[p]) for t in trials}) == 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning and sklearn's
            scores = get_param_importances(
                study,
                evaluator=FanovaImportanceEvaluator(seed=FANOVA_SEED),
                target=lambda t: t.values[index],
            )
    except RuntimeError as exc:  # "zero total variance": every trial scored the same
        return None, f"fANOVA cannot rank the parameters: {exc}."
    except ImportError as exc:  # scikit-learn is a dependency of plusultra; a broken install
        return None, f"fANOVA needs scikit-learn, which cannot be imported: {exc}."
    note = f"fANOVA over {len(trials)} complete trials (random forest seed {FANOVA_SEED})."
    if single:
        note += (
            f" Took a single value in every complete trial, so importance 0 by construction: "
            f"{', '.join(single)}."
        )
    return {k: float(v) for k, v in scores.items() if math.isfinite(float(v))}, note
