-- Every trial of every study: its validation objective, whether it is the study's best, and the deflated Sharpe.
-- Launch: plusultra-catalogue --query sweep_trials
-- From the table `sweeps` (completed multirun jobs sharing `study`, across invocations). is_best
-- is chosen by the validation objective (`selected_by`, `direction`); test_sharpe is reported
-- beside it. deflated_sharpe is the probability that the trial's true Sharpe exceeds the best
-- Sharpe expected from n_trials unskilled trials (Bailey & Lopez de Prado).
SELECT
    study,
    job_num AS trial,
    run_id,
    selected_by,
    direction,
    objective,
    is_best,
    test_sharpe,
    expected_max_sharpe,
    deflated_sharpe,
    n_trials,
    sweep_dir
FROM sweeps
ORDER BY study, is_best DESC, trial
