-- insert_masks: the staged runs' bit-packed masks (np.packbits order).
INSERT INTO masks (run_id, mask)
SELECT run_id, mask FROM staged;
