-- insert_runs: move validated, new staged runs into runs.
-- Input: `staged` holds only runs not yet in the database (see existing_runs.sql).
INSERT INTO runs (
    run_id, mask_id, alpha, seed, split, created_at, content_hash, mask_size,
    target_acc, train_acc, trainer, source, info, draw, "repeat", fingerprint
)
SELECT
    run_id, mask_id, alpha, seed, split, created_at, content_hash, mask_size,
    target_acc, CASE WHEN isnan(train_acc) THEN NULL ELSE train_acc END, trainer, source,
    info::JSON, draw, "repeat", fingerprint
FROM staged;
