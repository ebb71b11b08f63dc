-- Completed runs ranked by validation Sharpe (best first), with their test metrics beside.
-- Launch: plusultra-catalogue --query leaderboard
-- Ranked on validation, never on test: the test columns are there to read, not to choose by.
-- val_sharpe, not val_loss: losses of different `loss=` options are not comparable, the
-- validation backtest's Sharpe is. Runs without a validation Sharpe come last.
SELECT
    row_number() OVER (ORDER BY val_sharpe DESC NULLS LAST, val_loss ASC NULLS LAST, run_id) AS rank,
    run_id,
    backbone,
    head,
    loss,
    depth,
    d_model,
    "window",
    seed,
    val_sharpe,
    val_loss,
    test_sharpe,
    test_max_drawdown,
    test_loss,
    n_params
FROM runs
WHERE status = 'completed'
ORDER BY rank
