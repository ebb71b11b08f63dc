-- The results recipe's rl part seed by seed: each PPO run beside its supervised reference traded the same way.
-- Launch: plusultra-catalogue --catalogue outputs/results/catalogue --query results_rl_seeds
-- experiments/results/report_facts.py reads it for docs/results.md's RL facts. One row per
-- completed curriculum=rl run of sweep_name results/rl, joined to the completed
-- curriculum=supervised run of the same part, family, depth, horizon, features, data,
-- evaluation and seed (its reference; NULL columns where it has none). ppo_best_epoch is the PPO
-- epoch kept on validation Sharpe, -1 where none beat the supervised start and the run trades
-- the supervised policy unchanged. Gross exposure is the mean sum of |weights| per bar.
SELECT
    r.backbone AS family,
    r.depth,
    r.horizon,
    r.features,
    r.data,
    r.evaluation,
    r.seed,
    r.ppo_best_epoch,
    r.val_sharpe AS rl_val_sharpe,
    s.val_sharpe AS supervised_val_sharpe,
    r.test_sharpe AS rl_test_sharpe,
    s.test_sharpe AS supervised_test_sharpe,
    r.test_gross_exposure AS rl_test_gross_exposure,
    s.test_gross_exposure AS supervised_test_gross_exposure
FROM runs AS r
LEFT JOIN runs AS s
    ON s.status = 'completed'
    AND s.sweep_name = r.sweep_name
    AND s.curriculum = 'supervised'
    AND s.backbone = r.backbone
    AND s.depth = r.depth
    AND s.horizon = r.horizon
    AND s.features = r.features
    AND s.data = r.data
    AND s.evaluation = r.evaluation
    AND s.seed = r.seed
WHERE r.status = 'completed' AND r.sweep_name = 'results/rl' AND r.curriculum = 'rl'
ORDER BY family, depth, horizon, features, data, evaluation, seed
