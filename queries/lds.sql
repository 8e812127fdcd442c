-- lds: the linear datamodeling score of every fitted target.
-- Columns: fit_id, target_idx, spearman (the LDS), pearson, n_test_runs.
-- spearman / pearson are the rank / linear correlations, over the fit's test runs
-- (fit_runs with split 'test'), between the predicted margin (bias + sum of weights over
-- the run's mask) and the actual margin. `dmdb fit` computes them once, when it fits, on the
-- test runs it recorded, so they never drift as runs are added. NULL where a target's
-- prediction or margin is constant over the test runs.
-- Example: mean LDS per fit:
--   SELECT fit_id, avg(spearman) AS mean_lds FROM lds GROUP BY fit_id;
CREATE OR REPLACE VIEW lds AS
SELECT
    d.fit_id,
    d.target_idx,
    d.test_spearman AS spearman,
    d.test_pearson AS pearson,
    f.n_test AS n_test_runs
FROM datamodels d
JOIN fits f USING (fit_id);
