-- Issue 15's results tables (docs/results.md), long format: per configuration or baseline, split and metric, the mean, sample std and count over seeds.
-- Launch: plusultra-catalogue --catalogue outputs/results/catalogue --query results_table
-- experiments/results/report.py pivots it into the main, variant and timing tables.
-- Rows: the completed runs whose sweep_name starts with `results/` (the recipe's parts:
-- results/grid, results/alpha158, results/cross_asset, results/rl, results/timing,
-- results/structure).
-- kind 'model': one row per (part, data, family = backbone, depth, horizon, features, variant)
--   where variant names what differs from a plain supervised run: `cross-asset` when
--   cross_asset.enabled, in the structure part the backbone's `dilations=[..]` or
--   `scales=[..]`, the curriculum when it is not `supervised`, `evaluation=X` when not
--   `default`, `simulator=X` when not `realistic`; `plain` when nothing does.
-- kind 'baseline': the runs' baseline columns ({seg}_{baseline}_{metric}). A baseline does not
--   depend on the model or on how the model's output is traded (the `evaluation` group), so
--   one run per key gives its value (the results/grid run first, then the earliest started):
--   no configuration's copy counts twice. The learned baselines (ridge, lightgbm) are fitted on
--   the run's features and label horizon: key (data, features, horizon, simulator, seed). The
--   rule baselines (buyhold, equal_weight, momentum, mean_reversion) read prices only, so
--   every features set gives the same value: key (data, horizon, simulator, seed), shown with
--   the features of the run it is read from (the grid's). family = the baseline, depth and
--   part NULL.
-- tbl: 'timing' for results/timing (the index pair), 'main' otherwise.
-- metric: ic, ic_ir, rank_ic, rank_ic_ir, sharpe, sharpe_lo, sharpe_hi (each run's 95%
--   stationary-bootstrap interval; mean = the mean interval over seeds), annual_return,
--   excess_annual_return, information_ratio, max_drawdown, turnover, cost_drag, skew, kurtosis,
--   n_periods. A metric the catalogue lacks (older runs, a baseline not run) has no row.
-- mean: avg over seeds; std: stddev_samp (NULL for one seed); n: seeds with a value.
-- Order: table, then the highest mean VALIDATION Sharpe first (ties: validation IC); never test.
WITH r AS (
    SELECT
        *,
        CASE WHEN sweep_name = 'results/timing' THEN 'timing' ELSE 'main' END AS tbl,
        nullif(concat_ws(', ',
            CASE WHEN evaluation <> 'default' THEN 'evaluation=' || evaluation END,
            CASE WHEN simulator <> 'realistic' THEN 'simulator=' || simulator END), '') AS setting,
        -- what a baseline's value depends on besides data and seed (not the evaluation group)
        CASE WHEN simulator <> 'realistic' THEN 'simulator=' || simulator END AS base_setting
    FROM runs
    WHERE status = 'completed' AND sweep_name LIKE 'results/%'
),
m AS (
    SELECT
        *,
        substr(sweep_name, 9) AS part,
        coalesce(nullif(concat_ws(', ',
            CASE WHEN coalesce(CAST("cross_asset.enabled" AS BOOLEAN), false) THEN 'cross-asset' END,
            CASE WHEN sweep_name = 'results/structure' THEN nullif(concat_ws(', ',
                'dilations=' || "backbone.dilations", 'scales=' || "backbone.scales"), '') END,
            CASE WHEN curriculum <> 'supervised' THEN curriculum END,
            setting), ''), 'plain') AS variant
    FROM r
),
model_keys AS (
    SELECT
        tbl, part, data, backbone AS family, depth, horizon, features, variant,
        count(DISTINCT seed) AS n_seeds,
        array_to_string(list_sort(list_distinct(list(seed))), ' ') AS seeds,
        nullif(array_to_string(list_sort(list_distinct(list(test_information_ratio_benchmark))),
            '/'), '') AS ir_vs
    FROM m
    GROUP BY ALL
),
model_long AS (
    UNPIVOT (
        SELECT tbl, part, data, backbone AS family, depth, horizon, features, variant, seed,
            COLUMNS('^(val|test)_(ic|ic_ir|rank_ic|rank_ic_ir|sharpe|sharpe_lo|sharpe_hi|annual_return|excess_annual_return|information_ratio|max_drawdown|turnover|cost_drag|skew|kurtosis|n_periods)$')
        FROM m
    ) ON COLUMNS('^(val|test)_') INTO NAME col VALUE v
),
model_stats AS (
    SELECT
        'model' AS kind, tbl, part, data, family, depth, horizon, features, variant,
        regexp_extract(col, '^(val|test)_', 1) AS seg,
        regexp_extract(col, '^(val|test)_(.+)$', 2) AS metric,
        avg(v) AS mean, stddev_samp(v) AS std, count(v) AS n
    FROM model_long
    GROUP BY ALL
),
b_learned AS (
    SELECT *
    FROM r
    QUALIFY row_number() OVER (
        PARTITION BY tbl, data, features, horizon, base_setting, seed
        ORDER BY sweep_name = 'results/grid' DESC, started_at, run_id
    ) = 1
),
b_rule AS (
    SELECT *
    FROM r
    QUALIFY row_number() OVER (
        PARTITION BY tbl, data, horizon, base_setting, seed
        ORDER BY sweep_name = 'results/grid' DESC, started_at, run_id
    ) = 1
),
base_long AS (
    UNPIVOT (
        SELECT tbl, data, features, horizon, coalesce(base_setting, '') AS setting, seed,
            COLUMNS('^(val|test)_(ridge|lightgbm)_(ic|ic_ir|rank_ic|rank_ic_ir|sharpe|sharpe_lo|sharpe_hi|annual_return|excess_annual_return|information_ratio|max_drawdown|turnover|cost_drag)$')
        FROM b_learned
    ) ON COLUMNS('^(val|test)_') INTO NAME col VALUE v
    UNION ALL BY NAME
    UNPIVOT (
        SELECT tbl, data, features, horizon, coalesce(base_setting, '') AS setting, seed,
            COLUMNS('^(val|test)_(buyhold|equal_weight|momentum|mean_reversion)_(sharpe|sharpe_lo|sharpe_hi|annual_return|excess_annual_return|information_ratio|max_drawdown|turnover|cost_drag)$')
        FROM b_rule
    ) ON COLUMNS('^(val|test)_') INTO NAME col VALUE v
),
base_ir AS (
    UNPIVOT (
        SELECT tbl, data, features, horizon, coalesce(base_setting, '') AS setting, seed,
            COLUMNS('^test_(ridge|lightgbm)_information_ratio_benchmark$')
        FROM b_learned
    ) ON COLUMNS('^test_') INTO NAME col VALUE v
    UNION ALL BY NAME
    UNPIVOT (
        SELECT tbl, data, features, horizon, coalesce(base_setting, '') AS setting, seed,
            COLUMNS('^test_(buyhold|equal_weight|momentum|mean_reversion)_information_ratio_benchmark$')
        FROM b_rule
    ) ON COLUMNS('^test_') INTO NAME col VALUE v
),
base_keys AS (
    SELECT
        tbl, data, features, horizon, setting,
        regexp_extract(col, '^test_(.+)_information_ratio_benchmark$', 1) AS family,
        nullif(array_to_string(list_sort(list_distinct(list(v))), '/'), '') AS ir_vs
    FROM base_ir
    GROUP BY ALL
),
base_stats AS (
    SELECT
        'baseline' AS kind, tbl, NULL::VARCHAR AS part, data,
        regexp_extract(col, '^(val|test)_(buyhold|equal_weight|momentum|mean_reversion|ridge|lightgbm)_', 2) AS family,
        NULL::BIGINT AS depth, horizon, features, coalesce(nullif(setting, ''), 'baseline') AS variant,
        regexp_extract(col, '^(val|test)_', 1) AS seg,
        regexp_extract(col, '^(val|test)_(buyhold|equal_weight|momentum|mean_reversion|ridge|lightgbm)_(.+)$', 3) AS metric,
        avg(v) AS mean, stddev_samp(v) AS std, count(v) AS n,
        count(DISTINCT seed) AS n_seeds,
        array_to_string(list_sort(list_distinct(list(seed))), ' ') AS seeds,
        setting
    FROM base_long
    GROUP BY ALL
),
rows AS (
    SELECT s.*, k.n_seeds, k.seeds, k.ir_vs
    FROM model_stats s
    JOIN model_keys k USING (tbl, part, data, family, depth, horizon, features, variant)
    UNION ALL BY NAME
    SELECT s.* EXCLUDE (setting), k.ir_vs
    FROM base_stats s
    LEFT JOIN base_keys k USING (tbl, data, features, horizon, setting, family)
)
SELECT
    kind, tbl, part, family, depth, horizon, features, variant, data, n_seeds, seeds, ir_vs,
    seg, metric, mean, std, n,
    max(mean) FILTER (WHERE seg = 'val' AND metric = 'sharpe') OVER key AS val_sharpe,
    max(mean) FILTER (WHERE seg = 'val' AND metric = 'ic') OVER key AS val_ic
FROM rows
WINDOW key AS (PARTITION BY kind, tbl, part, family, depth, horizon, features, variant, data)
-- rounded: a parallel avg may differ in the last bits between equal values (ties stay ties)
ORDER BY tbl, round(val_sharpe, 9) DESC NULLS LAST, round(val_ic, 9) DESC NULLS LAST, kind DESC,
    family, depth, horizon, features, variant, data, seg DESC, metric
