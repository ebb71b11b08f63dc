-- The completed runs on the Pareto front of validation Sharpe against validation max drawdown, with test metrics beside.
-- Launch: plusultra-catalogue --query pareto_front
-- A run is on the front when no other completed run has a val_sharpe at least as high and a
-- val_max_drawdown at least as shallow (drawdowns are negative fractions: closer to 0 is
-- better), one of the two strictly. Both are validation metrics; test is only shown.
SELECT
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
        AND b.val_sharpe >= a.val_sharpe
        AND b.val_max_drawdown >= a.val_max_drawdown
        AND (b.val_sharpe > a.val_sharpe OR b.val_max_drawdown > a.val_max_drawdown)
  )
ORDER BY a.val_sharpe DESC, a.run_id
