-- Mean, standard deviation and count of validation and test Sharpe over seeds, per configuration.
-- Launch: plusultra-catalogue --query variance_over_seeds
-- A configuration is the completed runs sharing data, backbone, head, loss, simulator, depth,
-- d_model, window and horizon (everything a sweep usually varies, minus seed). std is the sample
-- standard deviation (NULL for a single seed). Sorted by mean validation Sharpe; a gap between
-- two configurations smaller than their std is noise.
SELECT
    data,
    backbone,
    head,
    loss,
    simulator,
    depth,
    d_model,
    "window",
    horizon,
    count(*) AS n_runs,
    count(DISTINCT seed) AS n_seeds,
    avg(val_sharpe) AS val_sharpe_mean,
    stddev_samp(val_sharpe) AS val_sharpe_std,
    avg(test_sharpe) AS test_sharpe_mean,
    stddev_samp(test_sharpe) AS test_sharpe_std
FROM runs
WHERE status = 'completed'
GROUP BY ALL
ORDER BY val_sharpe_mean DESC NULLS LAST, n_runs DESC
