-- What it answers: the documents whose composite lies within 0.25 points of their source's retention
-- threshold (the ones a small change of retain_ratio or of the mask would flip), kept and excluded.
-- Change 0.25 to widen the band. Views: mira_decisions, mira_thresholds.
SELECT d.source,
       d.doc_id,
       d.decision,
       d.source_rank,
       round(d.composite, 3)                 AS composite,
       round(t.threshold, 3)                 AS threshold,
       round(d.composite - t.threshold, 3)   AS margin
FROM mira_decisions d
JOIN mira_thresholds t ON t.source = d.source
WHERE d.composite IS NOT NULL AND t.threshold IS NOT NULL
  AND abs(d.composite - t.threshold) <= 0.25
ORDER BY d.source, abs(d.composite - t.threshold), d.doc_id
