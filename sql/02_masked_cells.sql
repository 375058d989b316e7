-- What it answers: which (source, dimension) cells the reliability mask removed from the composite, and
-- why (teacher-student MAE above reliability.max_mae, Spearman below min_spearman, or the group's pooled
-- decision when a source had fewer than min_n validation pairs). Views: mira_reliability.
SELECT source,
       scorer,
       slot,
       dimension,
       n,
       round(mae, 3)      AS mae,
       round(spearman, 3) AS spearman,
       reason,
       basis
FROM mira_reliability
WHERE masked
ORDER BY source, int(substring(slot, 2))
