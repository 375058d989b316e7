-- What it answers: why documents were not kept, per source: the exclusion reason of every decision
-- (below_threshold, scoring_failed:<code>, parse_failed, no_scorer, duplicate_doc_id, pending, ...),
-- grouped by the reason's kind (the part before ':'), with the share of the source's input rows.
-- Views: mira_decisions.
SELECT source,
       split(reason, ':')[0]                                          AS reason_kind,
       reason,
       count(*)                                                       AS docs,
       round(count(*) / sum(count(*)) OVER (PARTITION BY source), 4)  AS share_of_source
FROM mira_decisions
WHERE decision = 'excluded'
GROUP BY source, reason
ORDER BY source, docs DESC, reason
