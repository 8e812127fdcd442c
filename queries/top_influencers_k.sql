-- top_influencers_k(fit, top_k): each target's top_k most positive and top_k most negative
-- training examples by datamodel weight.
-- Parameters: fit (a fit_id, or NULL for every fit); top_k (examples per target and sign, >= 1).
-- Columns: fit_id, target_idx, sign ('+' helps the target's margin, '-' hurts it),
--   rank (1 = largest |weight| of that sign), train_idx, weight.
-- Ties in |weight| are broken by the smaller train_idx first. Only non-zero weights are
-- stored, so a target with fewer than top_k weights of a sign gets fewer rows.
-- Example: the 25 most helpful training examples of target 7 in fit 1:
--   SELECT rank, train_idx, weight FROM top_influencers_k(1, 25)
--   WHERE target_idx = 7 AND sign = '+' ORDER BY rank;
CREATE OR REPLACE MACRO top_influencers_k(fit, top_k) AS TABLE
SELECT fit_id, target_idx, sign, rank, top.train_idx AS train_idx, top.weight AS weight
FROM (
    SELECT
        fit_id, target_idx, sign,
        unnest(picked) AS top,
        generate_subscripts(picked, 1) AS rank
    FROM (
        SELECT
            w.fit_id, w.target_idx,
            CASE WHEN w.weight > 0 THEN '+' ELSE '-' END AS sign,
            max_by(
                {'train_idx': w.train_idx, 'weight': w.weight},
                {'size': abs(w.weight), 'tie': -w.train_idx},
                top_k
            ) AS picked
        FROM weights w
        WHERE fit IS NULL OR w.fit_id = fit
        GROUP BY ALL
    )
)
ORDER BY target_idx, sign, rank;
