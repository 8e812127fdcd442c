-- brittleness: how many training examples must go to flip each target's prediction.
-- Columns: fit_id, target_idx, margin_before, support_size.
-- margin_before = predict_removal(fit, []) = bias + alpha * (sum of all the target's weights),
-- the expected margin of a model trained on a Bernoulli(alpha) subset (alpha: view fit_alpha).
-- support_size = the smallest k such that removing the target's k most positively weighted
-- training examples (ties: smaller train_idx first) makes predict_removal <= 0, i.e.
-- margin_before - alpha * (sum of those k weights) <= 0. It is 0 for a target already
-- predicted wrong (margin_before <= 0) and NULL when removing every positive weight still
-- leaves the margin above 0 (the datamodel sees no support set). The removed set itself:
-- the first support_size rows of top_influencers_k(fit, support_size) with sign '+'.
-- Uncalibrated fits (score matrices imported without a bias, fits.parameters.calibrated
-- false) have no rows: without a bias there is no margin to fall to 0.
-- Example: the most brittle correctly-predicted targets of fit 1:
--   SELECT target_idx, support_size FROM brittleness
--   WHERE fit_id = 1 AND support_size > 0 ORDER BY support_size LIMIT 10;
CREATE OR REPLACE VIEW brittleness AS
WITH totals AS (
    SELECT fit_id, target_idx, sum(weight) AS total
    FROM weights
    GROUP BY fit_id, target_idx
),
base AS (
    SELECT
        d.fit_id, d.target_idx, a.alpha,
        d.bias + a.alpha * coalesce(t.total, 0) AS margin_before
    FROM datamodels d
    JOIN fit_alpha a USING (fit_id)
    JOIN fits f USING (fit_id)
    LEFT JOIN totals t USING (fit_id, target_idx)
    WHERE f.parameters->>'calibrated' IS DISTINCT FROM 'false'
),
removed AS (
    SELECT
        fit_id, target_idx,
        row_number() OVER top_first AS k,
        sum(weight) OVER top_first AS removed_weight
    FROM weights
    WHERE weight > 0
    WINDOW top_first AS (
        PARTITION BY fit_id, target_idx ORDER BY weight DESC, train_idx
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    )
),
flips AS (
    SELECT r.fit_id, r.target_idx, min(r.k) AS k
    FROM removed r
    JOIN base b USING (fit_id, target_idx)
    WHERE b.margin_before - b.alpha * r.removed_weight <= 0
    GROUP BY r.fit_id, r.target_idx
)
SELECT
    b.fit_id,
    b.target_idx,
    b.margin_before,
    CASE WHEN b.margin_before <= 0 THEN 0 ELSE f.k END AS support_size
FROM base b
LEFT JOIN flips f USING (fit_id, target_idx);
