-- fit_trainer: the trainer, and its options, that made most of each fit's runs.
-- Columns: fit_id, trainer (runs.trainer), options (JSON: runs.info->'$.options', the trainer
--   options recorded on the run; NULL when none were), n_runs (the fit's runs made so).
-- `dmdb verify` retrains with this trainer and these options unless told otherwise. Among
-- the fit's runs (fit_runs, every split) it counts each (trainer, options) pair and keeps the
-- most common one; ties go to the smaller trainer name, then the smaller options text. A fit
-- that records no runs has no row.
-- Example:
--   SELECT trainer, options FROM fit_trainer WHERE fit_id = 1;
CREATE OR REPLACE VIEW fit_trainer AS
SELECT fit_id, trainer, options, n_runs
FROM (
    SELECT fr.fit_id, r.trainer, r.info->'$.options' AS options, count(*) AS n_runs
    FROM fit_runs fr
    JOIN runs r USING (run_id)
    GROUP BY ALL
)
QUALIFY row_number() OVER (
    PARTITION BY fit_id ORDER BY n_runs DESC, trainer NULLS LAST, CAST(options AS VARCHAR) NULLS LAST
) = 1;
