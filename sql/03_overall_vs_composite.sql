-- What it answers: where the model's own `overall` score disagrees most with the composite the job
-- selects on (mean of the unmasked dimension scores), per document, with the decision it got; large gaps
-- point at a dimension the mask removed or at an `overall` the model did not derive from its scores.
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
WHERE s.status = 'ok' AND s.overall IS NOT NULL AND d.composite IS NOT NULL
ORDER BY abs(s.overall - d.composite) DESC, d.doc_id
LIMIT 100
