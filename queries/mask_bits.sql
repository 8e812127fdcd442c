-- mask_bits: every run's mask as a BIT string, for SQL.
-- Columns: run_id, mask_id, alpha, split, bits (BIT).
-- get_bit(bits, i) is 1 when training example i (train_idx) was in the run's subset;
-- bit_count(bits) is the subset size. When n_train is not a multiple of 8, bits has
-- up to 7 trailing zero padding bits, so bit_length(bits) is n_train rounded up to 8.
-- Example: runs that trained on example 17:
--   SELECT run_id FROM mask_bits WHERE get_bit(bits, 17) = 1;
CREATE OR REPLACE VIEW mask_bits AS
SELECT r.run_id, r.mask_id, r.alpha, r.split, m.mask::BIT AS bits
FROM runs r
JOIN masks m USING (run_id);
