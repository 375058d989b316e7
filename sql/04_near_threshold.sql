-- What it answers: the documents whose composite (0-100) lies within 2.5 points of their unit's threshold
-- in each score variant (the ones a small change of the budget or of the mask would flip), kept and
-- excluded. The threshold is the lowest kept composite: everything above it is kept, ties at it are split
-- by a hash of doc_id. Only variants cut on the composite (thresholds.cut_on; random and tau variants cut on
-- another quantity). Change 2.5 to widen the band. Views: mira_decisions, mira_thresholds.
SELECT d.variant,
       d.unit,
       d.doc_id,
       d.decision,
       round(d.composite, 3)                 AS composite,
       round(t.threshold, 3)                 AS threshold,
       round(d.composite - t.threshold, 3)   AS margin
FROM mira_decisions d
JOIN mira_thresholds t ON t.variant = d.variant AND t.unit = d.unit
WHERE t.cut_on = 'composite' AND d.composite IS NOT NULL AND t.threshold IS NOT NULL
  AND abs(d.composite - t.threshold) <= 2.5
ORDER BY d.variant, d.unit, abs(d.composite - t.threshold), d.doc_id
