-- What it answers: why documents were not kept, per variant and source: the exclusion reason of every
-- decision (below_threshold, all_dims_masked, recommendation_drop, downsampled_out, scoring_failed:<code>,
-- parse_failed, no_scorer, duplicate_doc_id, pending, ...), grouped by the reason's kind (the part before
-- ':'), with the share of the source's input rows. Views: mira_decisions.
SELECT variant,
       source,
       split(reason, ':')[0]                                                   AS reason_kind,
       reason,
       count(*)                                                                AS docs,
       round(count(*) / sum(count(*)) OVER (PARTITION BY variant, source), 4)  AS share_of_source
FROM mira_decisions
WHERE decision = 'excluded'
GROUP BY variant, source, reason
ORDER BY variant, source, docs DESC, reason
