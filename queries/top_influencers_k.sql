-- top_influencers_k(fit, top_k): each target's top_k most helpful and top_k most harmful
-- training examples by influence (view example_influence: weight + alpha * pair_weight, the
-- expected effect of removing the example alone; for a linear fit it is the weight).
-- Parameters: fit (a fit_id, or NULL for every fit); top_k (examples per target and sign, >= 1).
-- Columns: fit_id, target_idx, sign ('+' helps the target's margin, '-' hurts it: the sign
--   of influence), rank (1 = largest |influence| of that sign), train_idx,
--   weight (the linear weight; 0 for an example that only appears in pairs), influence.
-- Ties in |influence| are broken by the smaller train_idx first. Examples with influence 0
-- are left out (for a linear fit that is none: only non-zero weights are stored), so a
-- target with fewer than top_k examples of a sign gets fewer rows. For a linear fit the rows
-- are those of ranking by weight, with influence = weight.
-- Example: the 25 most helpful training examples of target 7 in fit 1:
--   SELECT rank, train_idx, weight, influence FROM top_influencers_k(1, 25)
--   WHERE target_idx = 7 AND sign = '+' ORDER BY rank;
CREATE OR REPLACE MACRO top_influencers_k(fit, top_k) AS TABLE
SELECT
    fit_id, target_idx, sign, rank,
    top.train_idx AS train_idx, top.weight AS weight, top.influence AS influence
FROM (
    SELECT
        fit_id, target_idx, sign,
        unnest(picked) AS top,
        generate_subscripts(picked, 1) AS rank
    FROM (
        SELECT
            e.fit_id, e.target_idx,
            CASE WHEN e.influence > 0 THEN '+' ELSE '-' END AS sign,
            max_by(
                {'train_idx': e.train_idx, 'weight': e.weight, 'influence': e.influence},
                {'size': abs(e.influence), 'tie': -e.train_idx},
                top_k
            ) AS picked
        FROM example_influence e
        WHERE (fit IS NULL OR e.fit_id = fit) AND e.influence <> 0
        GROUP BY ALL
    )
)
ORDER BY target_idx, sign, rank;
