-- What it answers: where the model's own `overall` score (0-100) disagrees most with the composite the job
-- selects on (weighted mean of the unmasked dimension scores, 0-100), per document, with the decision the
-- MIRA-Global variant gave it (the composite is the same in every variant); large gaps point at a dimension
-- the mask removed or at an `overall` the model did not derive from its scores.
-- Views: mira_scores (overall), mira_decisions (composite, decision).
SELECT d.source,
       d.doc_id,
       s.overall,
       round(d.composite, 3)                       AS composite,
       round(s.overall - d.composite, 3)           AS gap,
       d.decision,
       d.reason
FROM mira_decisions d
JOIN mira_scores s ON s.doc_id = d.doc_id AND s.scorer = d.scorer
WHERE d.variant = 'global' AND s.status = 'ok' AND s.overall IS NOT NULL AND d.composite IS NOT NULL
ORDER BY abs(s.overall - d.composite) DESC, d.doc_id
LIMIT 100
