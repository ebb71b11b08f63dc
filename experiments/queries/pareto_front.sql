-- Per study, the completed runs on the Pareto front of validation Sharpe against validation max drawdown, with test metrics beside.
-- Launch: plusultra-catalogue --query pareto_front
-- A run is on the front of its study (the `study` column; single runs form one group) when no
-- other completed run of that study has a val_sharpe at least as high and a val_max_drawdown at
-- least as shallow (drawdowns are negative fractions: closer to 0 is better), one of the two
-- strictly. Both are validation metrics; test is only shown. A multi-objective sweep on these two
-- (hparams_search=risk_pareto) has the same front as is_best in the table `sweeps`.
SELECT
    a.study,
    a."optuna.trial" AS trial,
    a.run_id,
    a.backbone,
    a.head,
    a.loss,
    a.val_sharpe,
    a.val_max_drawdown,
    a.test_sharpe,
    a.test_max_drawdown
FROM runs AS a
WHERE a.status = 'completed'
  AND a.val_sharpe IS NOT NULL
  AND a.val_max_drawdown IS NOT NULL
  AND NOT EXISTS (
      SELECT 1
      FROM runs AS b
      WHERE b.status = 'completed'
        AND b.study IS NOT DISTINCT FROM a.study
        AND b.val_sharpe >= a.val_sharpe
        AND b.val_max_drawdown >= a.val_max_drawdown
        AND (b.val_sharpe > a.val_sharpe OR b.val_max_drawdown > a.val_max_drawdown)
  )
ORDER BY a.study NULLS FIRST, a.val_sharpe DESC, a.run_id
