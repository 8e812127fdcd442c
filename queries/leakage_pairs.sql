-- leakage_pairs: the leakage candidates (view leakage_candidates) with what tells a
-- near-duplicate from an example that is merely very influential: both labels and the
-- pixel distance between the two images. Used by `dmdb leakage`.
-- Columns: fit_id, rank, target_idx, train_idx, weight, share, target_label, train_label,
--   same_label (NULL where a label is missing), pixel_distance (Euclidean distance between
--   the flattened images; NULL where either has no pixels, or their sizes differ).
CREATE OR REPLACE VIEW leakage_pairs AS
SELECT
    c.fit_id, c.rank, c.target_idx, c.train_idx, c.weight, c.share,
    t.label AS target_label,
    e.label AS train_label,
    t.label = e.label AS same_label,
    CASE WHEN len(t.pixels) = len(e.pixels) THEN list_distance(t.pixels, e.pixels) END
        AS pixel_distance
FROM leakage_candidates c
JOIN targets t USING (target_idx)
JOIN train_examples e USING (train_idx);
