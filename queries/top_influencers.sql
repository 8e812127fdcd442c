-- top_influencers: every target's 10 most helpful and 10 most harmful training examples by
-- influence (view example_influence; for a linear fit, the datamodel weight), for every fit.
-- top_influencers_k(fit, top_k) takes another count.
-- Columns: fit_id, target_idx, sign ('+' helps the target's margin, '-' hurts it),
--   rank (1 = largest |influence| of that sign), train_idx, weight (the linear weight),
--   influence (= weight + alpha * the example's pair weights; = weight for a linear fit).
-- Ties in |influence| are broken by the smaller train_idx first. A target with fewer than 10
-- examples of non-zero influence of a sign gets fewer rows.
-- Example: the training examples that most support target 7 (DESIGN.md: most of them are
-- usually images of the same class):
--   SELECT t.rank, t.train_idx, t.weight, e.label
--   FROM top_influencers t JOIN train_examples e USING (train_idx)
--   WHERE t.fit_id = 1 AND t.target_idx = 7 AND t.sign = '+' ORDER BY t.rank;
CREATE OR REPLACE VIEW top_influencers AS
SELECT * FROM top_influencers_k(NULL, 10);
