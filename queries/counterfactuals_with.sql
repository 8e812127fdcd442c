-- counterfactuals_with(model): the counterfactual check of `dmdb verify`, with every verified
-- fit's retrained runs predicted by the datamodels of fit `model` (linear or with pairs), or by
-- each run's own fit when model is NULL (that is view counterfactuals).
-- Parameters: model (a fit_id, or NULL).
-- Columns: fit_id (the verified fit whose removal sets were retrained), target_idx, condition
--   ('none', 'top' or 'random'), k (examples removed; 0 for 'none'), predicted, actual,
--   n_models, accuracy, predicted_change, actual_change, model_fit_id (the fit that predicted).
-- Each row averages the verify runs (verify_runs.kind = 'counterfactual') of one target,
-- condition and k. Every run trained on a fresh Bernoulli(alpha) subset with its removed
-- set R (verify_runs.removed) excluded, so under the model's datamodel its expected margin is
--   bias + alpha * (sum of the target's weights outside R)
--        + alpha^2 * (sum of its interaction weights over the pairs with neither member in R),
-- the removal protocol of predict_removal. alpha is the verified fit's (view fit_alpha), the
-- fraction the runs were trained at, whichever fit predicts. Targets that fit `model` has no
-- datamodel for have no rows.
--   predicted = the mean of that prediction over the runs (for 'random', R differs per run);
--   actual    = the mean over the runs of the retrained model's margin on the target;
--   accuracy  = the fraction of those models with a positive margin (correct).
--   predicted_change / actual_change = predicted / actual minus the same target's 'none'
--   row (NULL when the target has none).
-- Use: verify a linear fit's removal sets by retraining, then score a second-order fit of the
-- same runs on the very same retrained models.
-- Example: fit 1 verified, fits 1 and 2 (its second-order refit) scored on its runs:
--   SELECT model_fit_id, corr(predicted_change, actual_change)
--   FROM (SELECT * FROM counterfactuals_with(1) UNION ALL SELECT * FROM counterfactuals_with(2))
--   WHERE fit_id = 1 AND condition <> 'none' GROUP BY ALL;
CREATE OR REPLACE MACRO counterfactuals_with(model) AS TABLE
WITH vr AS (
    SELECT
        run_id, fit_id, coalesce(model, fit_id) AS model_fit_id, target_idx, condition, k,
        coalesce(removed, []) AS removed
    FROM verify_runs
    WHERE kind = 'counterfactual'
),
gone AS (
    SELECT DISTINCT run_id, model_fit_id, target_idx, unnest(removed) AS train_idx
    FROM vr
),
removed_weight AS (
    SELECT g.run_id, sum(w.weight) AS weight
    FROM gone g
    JOIN weights w
        ON w.fit_id = g.model_fit_id AND w.target_idx = g.target_idx
        AND w.train_idx = g.train_idx
    GROUP BY g.run_id
),
-- the pairs of the run's target with a member in R (UNION: a pair with both counts once)
removed_pairs AS (
    SELECT run_id, sum(weight) AS weight
    FROM (
        SELECT g.run_id, i.train_a, i.train_b, i.weight
        FROM gone g
        JOIN interactions i
            ON i.fit_id = g.model_fit_id AND i.target_idx = g.target_idx
            AND i.train_a = g.train_idx
        UNION
        SELECT g.run_id, i.train_a, i.train_b, i.weight
        FROM gone g
        JOIN interactions i
            ON i.fit_id = g.model_fit_id AND i.target_idx = g.target_idx
            AND i.train_b = g.train_idx
    )
    GROUP BY run_id
),
total_weight AS (
    SELECT fit_id AS model_fit_id, target_idx, sum(weight) AS weight
    FROM weights
    WHERE fit_id IN (SELECT model_fit_id FROM vr)
    GROUP BY fit_id, target_idx
),
total_pairs AS (
    SELECT fit_id AS model_fit_id, target_idx, sum(weight) AS weight
    FROM interactions
    WHERE fit_id IN (SELECT model_fit_id FROM vr)
    GROUP BY fit_id, target_idx
),
per_run AS (
    SELECT
        vr.fit_id,
        vr.target_idx,
        vr.condition,
        vr.k,
        vr.model_fit_id,
        d.bias + a.alpha * (coalesce(t.weight, 0) - coalesce(r.weight, 0))
            + a.alpha * a.alpha * (coalesce(tp.weight, 0) - coalesce(rp.weight, 0))
            AS predicted,
        m.margins[vr.target_idx + 1] AS actual
    FROM vr
    JOIN datamodels d ON d.fit_id = vr.model_fit_id AND d.target_idx = vr.target_idx
    JOIN fit_alpha a ON a.fit_id = vr.fit_id
    JOIN margins m ON m.run_id = vr.run_id
    LEFT JOIN total_weight t
        ON t.model_fit_id = vr.model_fit_id AND t.target_idx = vr.target_idx
    LEFT JOIN total_pairs tp
        ON tp.model_fit_id = vr.model_fit_id AND tp.target_idx = vr.target_idx
    LEFT JOIN removed_weight r ON r.run_id = vr.run_id
    LEFT JOIN removed_pairs rp ON rp.run_id = vr.run_id
),
grouped AS (
    SELECT
        fit_id,
        target_idx,
        condition,
        k,
        model_fit_id,
        avg(predicted) AS predicted,
        avg(actual) AS actual,
        count(*) AS n_models,
        avg(CASE WHEN actual > 0 THEN 1.0 ELSE 0.0 END) AS accuracy
    FROM per_run
    GROUP BY fit_id, target_idx, condition, k, model_fit_id
)
SELECT
    g.fit_id,
    g.target_idx,
    g.condition,
    g.k,
    g.predicted,
    g.actual,
    g.n_models,
    g.accuracy,
    g.predicted - b.predicted AS predicted_change,
    g.actual - b.actual AS actual_change,
    g.model_fit_id
FROM grouped g
LEFT JOIN (
    SELECT fit_id, target_idx, model_fit_id, predicted, actual FROM grouped
    WHERE condition = 'none'
) b USING (fit_id, target_idx, model_fit_id)
ORDER BY g.fit_id, g.target_idx, g.condition, g.k;
