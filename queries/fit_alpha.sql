-- fit_alpha: the subset fraction alpha that each fit's removal predictions use.
-- Columns: fit_id, alpha.
-- A fit made at one alpha (`dmdb fit --alpha A`) uses fits.alpha; a fit over runs of every
-- alpha (fits.alpha NULL) uses the mean alpha of the 'fit' runs it recorded in fit_runs.
-- predict_removal, brittleness and `dmdb verify` all read alpha from here.
-- Example:
--   SELECT alpha FROM fit_alpha WHERE fit_id = 1;
CREATE OR REPLACE VIEW fit_alpha AS
SELECT f.fit_id, coalesce(f.alpha, m.alpha) AS alpha
FROM fits f
LEFT JOIN (
    SELECT fr.fit_id, avg(r.alpha) AS alpha
    FROM fit_runs fr
    JOIN runs r USING (run_id)
    WHERE fr.split = 'fit'
    GROUP BY fr.fit_id
) m USING (fit_id);
