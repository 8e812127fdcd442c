-- insert_margins: the staged runs' margins, as the experiment's FLOAT[M] array.
INSERT INTO margins (run_id, margins)
SELECT run_id, margins FROM staged;
