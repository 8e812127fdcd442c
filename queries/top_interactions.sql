-- top_interactions: every target's 10 strongest pairs of training examples by |interaction
-- weight|, for every fit (a linear fit has none). top_interactions_k(fit, top_k) takes
-- another count.
-- Columns: fit_id, target_idx, rank (1 = the largest |weight|), train_a, train_b
--   (train_a < train_b), weight.
-- Ties in |weight| are broken by the smaller train_a, then the smaller train_b.
-- Example: the strongest pairs of target 7, with both examples' labels:
--   SELECT t.rank, t.train_a, t.train_b, t.weight, a.label AS label_a, b.label AS label_b
--   FROM top_interactions t
--   JOIN train_examples a ON a.train_idx = t.train_a
--   JOIN train_examples b ON b.train_idx = t.train_b
--   WHERE t.fit_id = 2 AND t.target_idx = 7 ORDER BY t.rank;
CREATE OR REPLACE VIEW top_interactions AS
SELECT * FROM top_interactions_k(NULL, 10);
