-- predict_subset(fit, subset): each target's predicted margin after training on a subset.
-- Parameters: fit (a fit_id); subset (a LIST of train_idx; duplicates count once).
-- Columns: target_idx, predicted (= bias + the sum of the target's weights over the subset
--   + the sum of its interaction weights over the pairs with both members in the subset;
--   a linear fit has no interactions, so the last sum is 0).
-- One row for every target of the fit, targets without weights included (predicted = bias).
-- An uncalibrated fit (a score matrix imported without a bias, fits.parameters.calibrated
-- false) has no margin to predict: the macro raises an error for it rather than return scores.
-- Example: train on examples 0..24999 only:
--   SELECT * FROM predict_subset(1, range(25000));
--   SELECT * FROM predict_subset(1, [0, 3, 17]);
CREATE OR REPLACE MACRO predict_subset(fit, subset) AS TABLE
WITH chosen AS (
    SELECT DISTINCT unnest(subset)::INTEGER AS train_idx
)
SELECT
    d.target_idx,
    CASE WHEN f.parameters->>'calibrated' = 'false'
        THEN error('fit ' || fit || ' is an uncalibrated score matrix (imported without --bias): '
                   || 'its sums are scores, not margins; use lds or top_influencers, '
                   || 'or import it with a bias')
        ELSE d.bias + coalesce(s.total, 0) + coalesce(p.total, 0)
    END AS predicted
FROM datamodels d
JOIN fits f USING (fit_id)
LEFT JOIN (
    SELECT w.target_idx, sum(w.weight) AS total
    FROM weights w
    JOIN chosen USING (train_idx)
    WHERE w.fit_id = fit
    GROUP BY w.target_idx
) s USING (target_idx)
LEFT JOIN (
    SELECT i.target_idx, sum(i.weight) AS total
    FROM interactions i
    SEMI JOIN chosen ca ON i.train_a = ca.train_idx
    SEMI JOIN chosen cb ON i.train_b = cb.train_idx
    WHERE i.fit_id = fit
    GROUP BY i.target_idx
) p USING (target_idx)
WHERE d.fit_id = fit
ORDER BY d.target_idx;
