-- counterfactuals: the counterfactual check of `dmdb verify`, predicted against retrained.
-- Columns: fit_id, target_idx, condition ('none', 'top' or 'random'), k (examples removed;
--   0 for 'none'), predicted, actual, n_models, accuracy, predicted_change, actual_change.
-- Each row averages the verify runs (verify_runs.kind = 'counterfactual') of one target,
-- condition and k, predicted by the verified fit's own datamodels: counterfactuals_with(NULL)
-- without its model_fit_id column (see that file for the runs of one fit scored by another).
-- Every run trained on a fresh Bernoulli(alpha) subset with its removed set R
-- (verify_runs.removed) excluded, so under the datamodel its expected margin is
--   bias + alpha * (sum of the target's weights outside R)       (alpha: view fit_alpha)
--        + alpha^2 * (sum of its interaction weights over the pairs with neither member in R),
-- the removal protocol of predict_removal (a linear fit has no interactions).
--   predicted = the mean of that prediction over the runs (for 'random', R differs per run);
--   actual    = the mean over the runs of the retrained model's margin on the target;
--   accuracy  = the fraction of those models with a positive margin (correct).
--   predicted_change / actual_change = predicted / actual minus the same target's 'none'
--   row (NULL when the target has none). DESIGN.md: on digits the actual change is larger
--   than predicted (slope ~1.7) while the ranking is right.
-- Example: the mean changes per condition of fit 1:
--   SELECT condition, k, avg(predicted_change), avg(actual_change)
--   FROM counterfactuals WHERE fit_id = 1 GROUP BY ALL ORDER BY ALL;
CREATE OR REPLACE VIEW counterfactuals AS
SELECT * EXCLUDE (model_fit_id)
FROM counterfactuals_with(NULL)
ORDER BY fit_id, target_idx, condition, k;
