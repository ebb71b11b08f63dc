-- Per backbone, the completed run with the highest validation Sharpe, and its test metrics.
-- Launch: plusultra-catalogue --query best_per_backbone
-- Chosen by val_sharpe (highest; ties: lower val_loss, then run_id), never by a test metric;
-- n_runs counts the completed runs of that backbone the best was chosen from.
SELECT
    backbone,
    n_runs,
    run_id,
    head,
    loss,
    depth,
    d_model,
    "window",
    seed,
    val_sharpe,
    val_loss,
    test_sharpe,
    test_max_drawdown
FROM (
    SELECT
        *,
        count(*) OVER (PARTITION BY backbone) AS n_runs,
        row_number() OVER (
            PARTITION BY backbone ORDER BY val_sharpe DESC NULLS LAST, val_loss ASC NULLS LAST, run_id
        ) AS pick
    FROM runs
    WHERE status = 'completed'
)
WHERE pick = 1
ORDER BY val_sharpe DESC NULLS LAST, backbone
