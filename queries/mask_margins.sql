-- mask_margins: margins averaged over the runs that share a mask (repeats with other seeds).
-- The paper evaluates datamodels against such averages, which carry less training noise.
-- Columns: mask_id, alpha, split, n_seeds, margins (FLOAT[M], the element-wise mean).
-- 'verify' runs are included with their own split; filter on split as needed.
-- Example: masks trained with at least 5 seeds:
--   SELECT mask_id, margins FROM mask_margins WHERE n_seeds >= 5;
CREATE OR REPLACE VIEW mask_margins AS
WITH grouped AS (
    SELECT
        r.mask_id,
        any_value(r.alpha) AS alpha,
        any_value(r.split) AS split,
        count(*) AS n_seeds,
        list_reduce(
            list(m.margins::FLOAT[]),
            lambda a, b: list_transform(list_zip(a, b), lambda p: p[1] + p[2])
        ) AS total
    FROM runs r
    JOIN margins m USING (run_id)
    GROUP BY r.mask_id
)
SELECT
    mask_id,
    alpha,
    split,
    n_seeds,
    list_transform(total, lambda v: v / n_seeds)::FLOAT[{n_targets}] AS margins
FROM grouped;
