-- top_interactions_k(fit, top_k): each target's top_k strongest pairs of training examples
-- by |interaction weight| (second-order fits, migration 0005).
-- Parameters: fit (a fit_id, or NULL for every fit); top_k (pairs per target, >= 1).
-- Columns: fit_id, target_idx, rank (1 = the largest |weight|), train_a, train_b (train_a <
--   train_b), weight (phi_ab: what training on both adds to the margin beyond their weights).
-- Ties in |weight| are broken by the smaller train_a, then the smaller train_b. Only
-- non-zero interactions are stored, so a linear fit has no rows and a target with fewer
-- than top_k pairs gets fewer rows.
-- Example: the 5 strongest pairs of target 7 in fit 2:
--   SELECT rank, train_a, train_b, weight FROM top_interactions_k(2, 5)
--   WHERE target_idx = 7 ORDER BY rank;
CREATE OR REPLACE MACRO top_interactions_k(fit, top_k) AS TABLE
SELECT fit_id, target_idx, rank, top.train_a AS train_a, top.train_b AS train_b,
    top.weight AS weight
FROM (
    SELECT
        fit_id, target_idx,
        unnest(picked) AS top,
        generate_subscripts(picked, 1) AS rank
    FROM (
        SELECT
            i.fit_id, i.target_idx,
            max_by(
                {'train_a': i.train_a, 'train_b': i.train_b, 'weight': i.weight},
                {'size': abs(i.weight), 'tie_a': -i.train_a, 'tie_b': -i.train_b},
                top_k
            ) AS picked
        FROM interactions i
        WHERE fit IS NULL OR i.fit_id = fit
        GROUP BY ALL
    )
)
ORDER BY fit_id, target_idx, rank;
