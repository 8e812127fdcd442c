-- record_file: remember an ingested shard file so that ingesting it again is a no-op.
-- Parameters: path, size, mtime_ns, n_runs, ingested_at.
INSERT OR IGNORE INTO ingested_files VALUES (?, ?, ?, ?, ?);
