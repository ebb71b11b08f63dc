-- Every trial of every study: number, state, sampled parameters, objective value(s), whether it is the study's best (or on its Pareto front), and the deflated Sharpe.
-- Launch: plusultra-catalogue --query sweep_trials
-- From `runs` (every multirun job, whatever its state: completed, failed, interrupted, pruned)
-- joined to the table `sweeps` (the completed trials with a test Sharpe, which the selection and
-- the deflation use). trial is the Optuna trial number (optuna.trial), else the job number;
-- params the sampled values (optuna.params, JSON); objectives one value per selected_by metric.
-- is_best is chosen by the validation objective (selected_by, direction): for a multi-objective
-- study, every trial on its validation Pareto front. test_sharpe is reported beside it.
-- deflated_sharpe is the probability that the trial's true Sharpe exceeds the best Sharpe
-- expected from n_trials unskilled trials (Bailey & Lopez de Prado).
SELECT
    r.study,
    coalesce(r."optuna.trial", r.job_num) AS trial,
    r.status AS state,
    r."optuna.params" AS params,
    s.selected_by,
    s.direction,
    coalesce(s.objective, r.objective) AS objective,
    coalesce(s.objectives, r.objectives) AS objectives,
    coalesce(s.is_best, false) AS is_best,
    s.test_sharpe,
    s.expected_max_sharpe,
    s.deflated_sharpe,
    s.n_trials,
    r."optuna.study" AS optuna_study,
    r.run_id
FROM runs AS r
LEFT JOIN sweeps AS s USING (run_id)
WHERE r.multirun
ORDER BY r.study, is_best DESC, trial, r.run_id
