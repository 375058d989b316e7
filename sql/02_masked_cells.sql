-- What it answers: which (source, dimension) cells the reliability mask removed from the composite, and
-- why: the estimate the rule saw (used_*: the cell's shrunk estimate, or its group's / the global pooled one
-- when the cell had fewer than reliability.min_n pairs, see basis) against reliability.max_mae and
-- min_spearman, with the cell's own 95% intervals; mask_origin says whether a published mask decided.
-- Views: mira_reliability.
SELECT source,
       scorer,
       slot,
       dimension,
       n,
       round(mae, 3)            AS mae,
       round(mae_lo, 3)         AS mae_lo,
       round(mae_hi, 3)         AS mae_hi,
       round(spearman, 3)       AS spearman,
       round(spearman_lo, 3)    AS spearman_lo,
       round(spearman_hi, 3)    AS spearman_hi,
       round(used_mae, 3)       AS used_mae,
       round(used_spearman, 3)  AS used_spearman,
       mask_origin,
       reason,
       basis
FROM mira_reliability
WHERE masked
ORDER BY source, int(substring(slot, 2))
