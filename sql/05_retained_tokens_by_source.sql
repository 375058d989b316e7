-- What it answers: how much training text the selection keeps per source, in documents, characters and
-- tokens. The tables hold no token count of the document itself, so two figures are given:
--   est_tokens     = ceil(characters / 4), an ESTIMATE (about 4 characters per token for English text;
--                    Chinese prose and code run denser, so treat it as an order of magnitude);
--   prompt_tokens  = the scorer's measured prompt tokens for the kept documents (server usage), which
--                    include the rubric and calibration prompt, so an upper bound per document.
-- Views: mira_decisions, mira_selected (the kept documents with their text), mira_scores.
WITH d AS (
  SELECT doc_id, source, scorer, decision, count(*) OVER (PARTITION BY source) AS n_in
  FROM mira_decisions
)
SELECT d.source,
       count(*)                                   AS kept_docs,
       max(d.n_in)                                AS input_docs,
       sum(length(k.text))                        AS kept_chars,
       sum(ceil(length(k.text) / 4))              AS est_tokens,
       sum(s.prompt_tokens)                       AS prompt_tokens
FROM d
JOIN mira_selected k ON k.doc_id = d.doc_id AND k.scorer = d.scorer
LEFT JOIN mira_scores s ON s.doc_id = d.doc_id AND s.scorer = d.scorer
WHERE d.decision = 'kept'
GROUP BY d.source
ORDER BY d.source
