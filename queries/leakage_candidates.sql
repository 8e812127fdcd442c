-- leakage_candidates: (target, training example) pairs where one example carries an outsized
-- share of the target's positive datamodel weight: candidates for train-test leakage
-- (near-duplicates), ranked. `dmdb leakage` adds pixel distances and labels to tell
-- near-duplicates from mere strong influence.
-- Columns: fit_id, target_idx, train_idx, weight,
--   share (= weight / the sum of the target's positive weights, in (0, 1]),
--   rank (1 = the largest share of the fit; ties by target_idx, then train_idx).
-- Threshold: share >= 0.2. A target's positive weights typically spread over tens to
-- hundreds of training examples (a few percent each), so one example holding a fifth of the
-- total is what a duplicate of the target in the training set looks like: the model can fit
-- the target by memorising it. Shares sum to 1, so at most 5 examples per target pass.
-- For another threshold, run this file's query on the weights table with your own.
-- Example:
--   SELECT * FROM leakage_candidates WHERE fit_id = 1 ORDER BY rank LIMIT 20;
CREATE OR REPLACE VIEW leakage_candidates AS
WITH positive AS (
    SELECT fit_id, target_idx, sum(weight) AS total
    FROM weights
    WHERE weight > 0
    GROUP BY fit_id, target_idx
)
SELECT
    w.fit_id,
    w.target_idx,
    w.train_idx,
    w.weight,
    w.weight / p.total AS share,
    row_number() OVER (
        PARTITION BY w.fit_id ORDER BY w.weight / p.total DESC, w.target_idx, w.train_idx
    ) AS rank
FROM weights w
JOIN positive p USING (fit_id, target_idx)
WHERE w.weight > 0 AND w.weight / p.total >= 0.2
ORDER BY w.fit_id, rank;
