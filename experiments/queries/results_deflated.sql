-- Issue 15's deflated Sharpe inputs (docs/results.md): the number of configurations tried, the variance of their per-period test Sharpes, and the best-on-validation configuration.
-- Launch: plusultra-catalogue --catalogue outputs/results/catalogue --query results_deflated
-- experiments/results/report.py passes the row to plusultra.evaluation.metrics.deflated.
-- A configuration: (part, data, backbone, depth, horizon, features, variant) of the completed
-- runs whose sweep_name starts with `results/`, every part counted (timing included), the
-- baselines not (they are not configurations of the sweep); variant as in results_table.sql.
-- Its Sharpe is the mean over seeds of the annualised test Sharpe; per period it is that
-- divided by sqrt(periods_per_year) (the run's metric; evaluation.periods_per_year for older
-- rows; 252 when neither), as deflated.py expects.
-- n_configs: N; sharpe_variance: var_samp of the per-period Sharpes over the N configurations
-- (NULL for N = 1); the other columns are the one configuration of the non-timing parts with the
-- highest mean VALIDATION Sharpe (ties: validation IC, then the key): its test Sharpe, and the
-- means over its seeds of test skew, kurtosis (not excess) and n_periods, and its runs'
-- directories (run_dirs, by seed). Never chosen on test.
WITH r AS (
    SELECT
        *,
        substr(sweep_name, 9) AS part,
        coalesce(nullif(concat_ws(', ',
            CASE WHEN coalesce(CAST("cross_asset.enabled" AS BOOLEAN), false) THEN 'cross-asset' END,
            CASE WHEN sweep_name = 'results/structure' THEN nullif(concat_ws(', ',
                'dilations=' || "backbone.dilations", 'scales=' || "backbone.scales"), '') END,
            CASE WHEN curriculum <> 'supervised' THEN curriculum END,
            CASE WHEN evaluation <> 'default' THEN 'evaluation=' || evaluation END,
            CASE WHEN simulator <> 'realistic' THEN 'simulator=' || simulator END), ''), 'plain')
            AS variant,
        coalesce(periods_per_year, "evaluation.periods_per_year", 252) AS ppy
    FROM runs
    WHERE status = 'completed' AND sweep_name LIKE 'results/%' AND isfinite(test_sharpe)
),
configs AS (
    SELECT
        part, data, backbone AS family, depth, horizon, features, variant,
        count(DISTINCT seed) AS n_seeds,
        avg(val_sharpe) AS val_sharpe,
        avg(val_ic) AS val_ic,
        avg(test_sharpe) AS test_sharpe,
        avg(ppy) AS periods_per_year,
        avg(test_sharpe) / sqrt(avg(ppy)) AS sharpe_per_period,
        avg(test_skew) AS test_skew,
        avg(test_kurtosis) AS test_kurtosis,
        avg(test_n_periods) AS test_n_periods,
        list(run_dir ORDER BY seed, run_id) AS run_dirs,  -- for the equity plot only
        list(seed ORDER BY seed, run_id) AS run_seeds
    FROM r
    GROUP BY ALL
),
trials AS (
    SELECT count(*) AS n_configs, var_samp(sharpe_per_period) AS sharpe_variance FROM configs
),
best AS (
    SELECT *
    FROM configs
    WHERE part <> 'timing'
    ORDER BY round(val_sharpe, 9) DESC NULLS LAST, round(val_ic, 9) DESC NULLS LAST, family, depth, horizon,
        features, variant, data, part  -- the order of results_table.sql
    LIMIT 1
)
SELECT trials.*, best.*
FROM trials LEFT JOIN best ON true
