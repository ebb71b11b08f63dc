-- The best model family of the results grid (sweep_name results/grid), chosen on VALIDATION only.
-- Launch: plusultra-catalogue --catalogue outputs/results/catalogue --query results_best_family
-- experiments/results/recipe.py reads the first row: the family, depth and horizon whose
-- completed runs have the highest mean validation Sharpe over seeds (tie-break: mean validation
-- IC, then the names, so the answer never depends on row order). No test column is read: the
-- parts run on the best family (alpha158, cross_asset, rl) are chosen without seeing test.
SELECT
    backbone AS family,
    depth,
    horizon,
    avg(val_sharpe) AS val_sharpe_mean,
    avg(val_ic) AS val_ic_mean,
    count(*) AS n_seeds
FROM runs
WHERE status = 'completed' AND sweep_name = 'results/grid'
GROUP BY backbone, depth, horizon
ORDER BY val_sharpe_mean DESC NULLS LAST, val_ic_mean DESC NULLS LAST, family, depth, horizon
