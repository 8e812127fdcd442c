-- top_influencers: every target's 10 most positive and 10 most negative training examples
-- by datamodel weight, for every fit. top_influencers_k(fit, top_k) takes another count.
-- Columns: fit_id, target_idx, sign ('+' helps the target's margin, '-' hurts it),
--   rank (1 = largest |weight| of that sign), train_idx, weight.
-- Ties in |weight| are broken by the smaller train_idx first. A target with fewer than 10
-- non-zero weights of a sign gets fewer rows.
-- Example: the training examples that most support target 7 (DESIGN.md: most of them are
-- usually images of the same class):
--   SELECT t.rank, t.train_idx, t.weight, e.label
--   FROM top_influencers t JOIN train_examples e USING (train_idx)
--   WHERE t.fit_id = 1 AND t.target_idx = 7 AND t.sign = '+' ORDER BY t.rank;
CREATE OR REPLACE VIEW top_influencers AS
SELECT * FROM top_influencers_k(NULL, 10);
