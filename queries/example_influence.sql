-- example_influence: the expected effect of removing one training example from a target's
-- training set, under the full datamodel (its pairs included; migration 0005).
-- Columns: fit_id, target_idx, train_idx,
--   weight      (the linear weight theta_i from table weights; 0 where the example has none
--                but is in one of the target's pairs),
--   pair_weight (the sum of the interaction weights phi_ij over the target's pairs that
--                contain i; 0 where there are none),
--   influence   (= weight + alpha * pair_weight; alpha: view fit_alpha).
-- Under the removal protocol (DESIGN.md) a model trained on a Bernoulli(alpha) subset keeps
-- each other example with probability alpha, so removing i alone moves the expected margin
-- by alpha * influence: alpha * influence = predict_removal(fit, []) - predict_removal(fit, [i]).
-- One row for every (target, example) with a linear weight or in a pair. For a linear fit
-- (no interactions rows) the rows are exactly the weights rows, with influence = weight.
-- top_influencers and brittleness rank examples by influence.
-- Example: the examples of target 7 whose pairs change their effect the most:
--   SELECT train_idx, weight, pair_weight, influence FROM example_influence
--   WHERE fit_id = 1 AND target_idx = 7 ORDER BY abs(influence - weight) DESC LIMIT 10;
CREATE OR REPLACE VIEW example_influence AS
WITH pair_sums AS (
    SELECT fit_id, target_idx, train_idx, sum(weight) AS pair_weight
    FROM (
        SELECT fit_id, target_idx, train_a AS train_idx, weight FROM interactions
        UNION ALL
        SELECT fit_id, target_idx, train_b AS train_idx, weight FROM interactions
    )
    GROUP BY fit_id, target_idx, train_idx
)
SELECT
    fit_id,
    target_idx,
    train_idx,
    coalesce(w.weight, 0::FLOAT) AS weight,
    coalesce(p.pair_weight, 0) AS pair_weight,
    -- a linear example's influence is its weight exactly, even where alpha is unknown
    CASE WHEN p.pair_weight IS NULL THEN w.weight
        ELSE coalesce(w.weight, 0) + a.alpha * p.pair_weight
    END::DOUBLE AS influence
FROM weights w
FULL JOIN pair_sums p USING (fit_id, target_idx, train_idx)
LEFT JOIN fit_alpha a USING (fit_id);
