-- Supervised against RL fine-tuning (curriculum=rl) per data set: seeds' mean and std of validation and test Sharpe, drawdown, turnover, beside buy-and-hold and equal weight.
-- Launch: plusultra-catalogue --query rl_vs_supervised
-- experiments/rl_results.py reads it to write docs/rl.md's results table.
-- One row per data, simulator, evaluation and arm over the completed runs of curriculum
-- `supervised` or `rl` (arm = the curriculum); the baseline rows (arm `buyhold`, `equal_weight`)
-- average the same runs' baseline columns, traded on the same simulator and segments (they do
-- not depend on the model, so their std is 0 up to the bootstrap). sharpe_lo/hi are the means
-- over seeds of each run's 95% stationary-bootstrap interval of its test Sharpe (NULL for the
-- baselines, which have no interval). supervised_val_loss_mean is the supervised stage's best
-- validation loss: equal in both arms when the rl arm fine-tunes the supervised arm's model.
-- n_kept_initial counts the rl arm's runs whose PPO stage handed over the policy before
-- fine-tuning (ppo_best_epoch = -1: no PPO epoch beat it on validation); NULL for other arms.
-- std is the sample standard deviation (NULL for one seed).
-- Drawdowns are negative fractions of equity; turnover is traded notional / equity per bar.
WITH model AS (
    SELECT
        data,
        simulator,
        evaluation,
        curriculum AS arm,
        count(DISTINCT seed) AS n_seeds,
        CASE WHEN curriculum = 'rl' THEN count(*) FILTER (WHERE ppo_best_epoch = -1) END
            AS n_kept_initial,
        avg(supervised_best_val_loss) AS supervised_val_loss_mean,
        avg(val_sharpe) AS val_sharpe_mean,
        stddev_samp(val_sharpe) AS val_sharpe_std,
        avg(test_sharpe) AS test_sharpe_mean,
        stddev_samp(test_sharpe) AS test_sharpe_std,
        avg(test_sharpe_lo) AS test_sharpe_lo,
        avg(test_sharpe_hi) AS test_sharpe_hi,
        string_agg(printf('%.2f', test_sharpe), ', ' ORDER BY seed) AS test_sharpe_each,
        avg(val_max_drawdown) AS val_max_drawdown_mean,
        avg(test_max_drawdown) AS test_max_drawdown_mean,
        stddev_samp(test_max_drawdown) AS test_max_drawdown_std,
        avg(val_turnover) AS val_turnover_mean,
        avg(test_turnover) AS test_turnover_mean,
        stddev_samp(test_turnover) AS test_turnover_std,
        avg(test_gross_exposure) AS test_gross_exposure_mean
    FROM runs
    WHERE status = 'completed' AND curriculum IN ('supervised', 'rl')
    GROUP BY data, simulator, evaluation, curriculum
),
baselines AS (
    SELECT
        data,
        simulator,
        evaluation,
        b.arm,
        count(DISTINCT seed) AS n_seeds,
        NULL::BIGINT AS n_kept_initial,
        NULL::DOUBLE AS supervised_val_loss_mean,
        avg(CASE WHEN b.arm = 'buyhold' THEN val_buyhold_sharpe ELSE val_equal_weight_sharpe END)
            AS val_sharpe_mean,
        NULL::DOUBLE AS val_sharpe_std,
        avg(CASE WHEN b.arm = 'buyhold' THEN test_buyhold_sharpe ELSE test_equal_weight_sharpe END)
            AS test_sharpe_mean,
        stddev_samp(
            CASE WHEN b.arm = 'buyhold' THEN test_buyhold_sharpe ELSE test_equal_weight_sharpe END
        ) AS test_sharpe_std,
        NULL::DOUBLE AS test_sharpe_lo,
        NULL::DOUBLE AS test_sharpe_hi,
        NULL::VARCHAR AS test_sharpe_each,
        avg(CASE WHEN b.arm = 'buyhold' THEN val_buyhold_max_drawdown
            ELSE val_equal_weight_max_drawdown END) AS val_max_drawdown_mean,
        avg(CASE WHEN b.arm = 'buyhold' THEN test_buyhold_max_drawdown
            ELSE test_equal_weight_max_drawdown END) AS test_max_drawdown_mean,
        NULL::DOUBLE AS test_max_drawdown_std,
        avg(CASE WHEN b.arm = 'buyhold' THEN val_buyhold_turnover
            ELSE val_equal_weight_turnover END) AS val_turnover_mean,
        avg(CASE WHEN b.arm = 'buyhold' THEN test_buyhold_turnover
            ELSE test_equal_weight_turnover END) AS test_turnover_mean,
        NULL::DOUBLE AS test_turnover_std,
        NULL::DOUBLE AS test_gross_exposure_mean
    FROM runs, (VALUES ('buyhold'), ('equal_weight')) AS b(arm)
    WHERE status = 'completed' AND curriculum IN ('supervised', 'rl')
    GROUP BY data, simulator, evaluation, b.arm
)
SELECT * FROM model
UNION ALL
SELECT * FROM baselines
ORDER BY data, simulator, evaluation,
    CASE arm WHEN 'supervised' THEN 0 WHEN 'rl' THEN 1 WHEN 'buyhold' THEN 2 ELSE 3 END
