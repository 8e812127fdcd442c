-- brittleness_curve: the fraction of a fit's targets whose prediction can be flipped by
-- removing at most k training examples (the paper's brittleness plot).
-- Columns: fit_id, k, fraction_flippable (= share of the fit's targets with
-- support_size <= k in view brittleness; NULL support sizes never count).
-- Grid: k = 0, then every distinct round(10^(j/20)) up to n_train (20 points per decade:
-- 1, 2, ..., 11, 13, 14, 16, 18, 20, 22, 25, 28, ...), then n_train. It suits a log-scaled
-- x axis while keeping every small k, where the curve changes fastest; k = 0 is the share
-- of targets the datamodel already predicts wrong. For n_train = 50,000 it has 96 points.
-- Example (matplotlib: plt.semilogx(df.k, df.fraction_flippable)):
--   SELECT k, fraction_flippable FROM brittleness_curve WHERE fit_id = 1 ORDER BY k;
CREATE OR REPLACE VIEW brittleness_curve AS
WITH grid AS (
    SELECT DISTINCT k FROM (
        SELECT 0 AS k
        UNION ALL
        SELECT round(pow(10, j / 20))::INTEGER AS k
        FROM range(0, ceil(20 * log10({n_train}))::BIGINT + 1) steps(j)
        UNION ALL
        SELECT {n_train} AS k
    )
    WHERE k <= {n_train}
)
SELECT
    b.fit_id,
    g.k,
    avg(CASE WHEN b.support_size <= g.k THEN 1.0 ELSE 0.0 END) AS fraction_flippable
FROM brittleness b
CROSS JOIN grid g
GROUP BY b.fit_id, g.k
ORDER BY b.fit_id, g.k;
