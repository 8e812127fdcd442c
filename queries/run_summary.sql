-- run_summary: how many runs (and distinct masks) there are per alpha and split,
-- with the models' mean accuracy on the targets. Used by `dmdb status`.
-- Columns: alpha, split, n_runs, n_masks, mean_target_acc, min_target_acc.
CREATE OR REPLACE VIEW run_summary AS
SELECT
    alpha,
    split,
    count(*) AS n_runs,
    count(DISTINCT mask_id) AS n_masks,
    avg(target_acc) AS mean_target_acc,
    min(target_acc) AS min_target_acc
FROM runs
GROUP BY alpha, split
ORDER BY alpha, split;
