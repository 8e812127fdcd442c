-- predict_removal(fit, removed): each target's expected margin when examples are removed.
-- Parameters: fit (a fit_id); removed (a LIST of train_idx, possibly empty: []).
-- Columns: target_idx, predicted (= bias + alpha * the sum of the target's weights outside
--   removed + alpha^2 * the sum of its interaction weights over the pairs with neither
--   member removed; a linear fit has no interactions, so the last sum is 0).
-- This is the removal protocol of DESIGN.md, which `dmdb verify` retrains under: a model
-- trained on a Bernoulli(alpha) subset of the training set with the removed examples
-- excluded. Each kept example is in the subset with probability alpha, and a kept pair with
-- probability alpha^2, so the sums above are the datamodel's expectation. alpha comes from
-- view fit_alpha. One row for every target of the fit.
-- An uncalibrated fit (a score matrix imported without a bias, fits.parameters.calibrated
-- false) has no margin to predict: the macro raises an error for it rather than return scores.
-- Example: remove examples 3 and 17; nothing removed:
--   SELECT * FROM predict_removal(1, [3, 17]);
--   SELECT * FROM predict_removal(1, []);
CREATE OR REPLACE MACRO predict_removal(fit, removed) AS TABLE
WITH gone AS (
    SELECT DISTINCT unnest(removed)::INTEGER AS train_idx
)
SELECT
    d.target_idx,
    CASE WHEN f.parameters->>'calibrated' = 'false'
        THEN error('fit ' || fit || ' is an uncalibrated score matrix (imported without --bias): '
                   || 'its sums are scores, not margins; use lds or top_influencers, '
                   || 'or import it with a bias')
        ELSE d.bias + a.alpha * coalesce(s.kept, 0) + a.alpha * a.alpha * coalesce(p.kept, 0)
    END AS predicted
FROM datamodels d
JOIN fit_alpha a USING (fit_id)
JOIN fits f USING (fit_id)
LEFT JOIN (
    SELECT w.target_idx, sum(w.weight) AS kept
    FROM weights w
    ANTI JOIN gone USING (train_idx)
    WHERE w.fit_id = fit
    GROUP BY w.target_idx
) s USING (target_idx)
LEFT JOIN (
    SELECT i.target_idx, sum(i.weight) AS kept
    FROM interactions i
    ANTI JOIN gone ga ON i.train_a = ga.train_idx
    ANTI JOIN gone gb ON i.train_b = gb.train_idx
    WHERE i.fit_id = fit
    GROUP BY i.target_idx
) p USING (target_idx)
WHERE d.fit_id = fit
ORDER BY d.target_idx;
