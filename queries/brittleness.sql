-- brittleness: how many training examples must go to flip each target's prediction.
-- Columns: fit_id, target_idx, margin_before, support_size.
-- margin_before = predict_removal(fit, []) = bias + alpha * (sum of all the target's weights)
--   + alpha^2 * (sum of all its interaction weights), the expected margin of a model trained
--   on a Bernoulli(alpha) subset (alpha: view fit_alpha; a linear fit has no interactions).
-- The search uses the full datamodel. The target's examples with influence > 0 (view
-- example_influence: the expected effect of removing each alone; for a linear fit, its
-- weight) are ordered by influence, largest first (ties: smaller train_idx first), and R_k is
-- the first k of them. The margin after removing R_k is exactly predict_removal(fit, R_k):
--   margin_before - alpha * (sum of the weights of R_k)
--                 - alpha^2 * (sum of the interaction weights of the pairs with a member in R_k)
-- (a pair leaves at the step of its earlier-ranked member; a pair with neither member in the
-- ordering never leaves). support_size = the smallest k with that margin <= 0. It is 0 for a
-- target already predicted wrong (margin_before <= 0) and NULL when removing every example of
-- positive influence still leaves the margin above 0 (the datamodel sees no support set).
-- For a linear fit this is: remove the most positively weighted examples until
-- margin_before - alpha * (sum of their weights) <= 0. The removed set itself: the first
-- support_size rows of top_influencers_k(fit, support_size) with sign '+'.
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
pair_totals AS (
    SELECT fit_id, target_idx, sum(weight) AS total
    FROM interactions
    GROUP BY fit_id, target_idx
),
base AS (
    SELECT
        d.fit_id, d.target_idx, a.alpha,
        d.bias + a.alpha * coalesce(t.total, 0) + a.alpha * a.alpha * coalesce(p.total, 0)
            AS margin_before
    FROM datamodels d
    JOIN fit_alpha a USING (fit_id)
    JOIN fits f USING (fit_id)
    LEFT JOIN totals t USING (fit_id, target_idx)
    LEFT JOIN pair_totals p USING (fit_id, target_idx)
    WHERE f.parameters->>'calibrated' IS DISTINCT FROM 'false'
),
ranked AS (
    SELECT
        fit_id, target_idx, train_idx, weight,
        row_number() OVER (
            PARTITION BY fit_id, target_idx ORDER BY influence DESC, train_idx
        ) AS k
    FROM example_influence
    WHERE influence > 0
),
-- the interaction weight leaving at step k: pairs whose earlier-ranked member is k-th
pair_steps AS (
    SELECT i.fit_id, i.target_idx, least(ra.k, rb.k) AS k, sum(i.weight) AS weight
    FROM interactions i
    LEFT JOIN ranked ra
        ON ra.fit_id = i.fit_id AND ra.target_idx = i.target_idx AND ra.train_idx = i.train_a
    LEFT JOIN ranked rb
        ON rb.fit_id = i.fit_id AND rb.target_idx = i.target_idx AND rb.train_idx = i.train_b
    WHERE ra.k IS NOT NULL OR rb.k IS NOT NULL
    GROUP BY ALL
),
removed AS (
    SELECT
        r.fit_id, r.target_idx, r.k,
        sum(r.weight) OVER top_first AS removed_weight,
        sum(coalesce(p.weight, 0)) OVER top_first AS removed_pairs
    FROM ranked r
    LEFT JOIN pair_steps p USING (fit_id, target_idx, k)
    WINDOW top_first AS (
        PARTITION BY r.fit_id, r.target_idx ORDER BY r.k
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    )
),
flips AS (
    SELECT r.fit_id, r.target_idx, min(r.k) AS k
    FROM removed r
    JOIN base b USING (fit_id, target_idx)
    WHERE b.margin_before - b.alpha * r.removed_weight
          - b.alpha * b.alpha * r.removed_pairs <= 0
    GROUP BY r.fit_id, r.target_idx
)
SELECT
    b.fit_id,
    b.target_idx,
    b.margin_before,
    CASE WHEN b.margin_before <= 0 THEN 0 ELSE f.k END AS support_size
FROM base b
LEFT JOIN flips f USING (fit_id, target_idx);
