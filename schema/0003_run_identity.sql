-- 0003: the identity of runs that dmdb draws. Such a run is (experiment fingerprint,
-- alpha, draw, repeat): its mask is a function of (experiment seed, alpha, draw) and its
-- model seed of (seed, draw, repeat), so its run_id is a hash of those (not of its
-- content), and a run trained twice (a retried cluster task) lands once. Runs that
-- arrive from outside (npy, stores, foreign shards) keep NULLs here and the content hash.
ALTER TABLE runs ADD COLUMN draw BIGINT;          -- the mask's draw index at its alpha
ALTER TABLE runs ADD COLUMN "repeat" INTEGER;     -- the seed index on that mask
ALTER TABLE runs ADD COLUMN fingerprint VARCHAR;  -- the experiment it was drawn for

-- Runs trained before this migration recorded their draw in info.
UPDATE runs SET draw = CAST(info->>'draw' AS BIGINT),
                "repeat" = coalesce(CAST(info->>'repeat' AS INTEGER), 0)
WHERE split <> 'verify' AND info->>'draw' IS NOT NULL;
