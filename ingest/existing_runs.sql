-- existing_runs: which staged runs are already in the database, with their stored
-- content hash. A matching hash means "already ingested, skip"; a different one
-- means the same run_id arrived with other content, which ingest refuses.
-- Input: the staged Arrow table registered as `staged`.
SELECT r.run_id, r.content_hash
FROM runs r
JOIN staged s USING (run_id);
