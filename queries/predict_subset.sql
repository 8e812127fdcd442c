-- predict_subset(fit, subset): each target's predicted margin after training on a subset.
-- Parameters: fit (a fit_id); subset (a LIST of train_idx; duplicates count once).
-- Columns: target_idx, predicted (= bias + sum of the target's weights over the subset).
-- One row for every target of the fit, targets without weights included (predicted = bias).
-- Example: train on examples 0..24999 only:
--   SELECT * FROM predict_subset(1, range(25000));
--   SELECT * FROM predict_subset(1, [0, 3, 17]);
CREATE OR REPLACE MACRO predict_subset(fit, subset) AS TABLE
SELECT d.target_idx, d.bias + coalesce(s.total, 0) AS predicted
FROM datamodels d
LEFT JOIN (
    SELECT w.target_idx, sum(w.weight) AS total
    FROM weights w
    JOIN (SELECT DISTINCT unnest(subset)::INTEGER AS train_idx) chosen USING (train_idx)
    WHERE w.fit_id = fit
    GROUP BY w.target_idx
) s USING (target_idx)
WHERE d.fit_id = fit
ORDER BY d.target_idx;
