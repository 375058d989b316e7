-- What it answers: how much training text the selection keeps per source, in documents, characters and
-- tokens. The tables hold no token count of the document itself, so two figures are given:
--   est_tokens     = ceil(characters / 4), an ESTIMATE (about 4 characters per token for English text;
--                    Chinese prose and code run denser, so treat it as an order of magnitude);
--   prompt_tokens  = the scorer's measured prompt tokens for the kept documents (server usage), which
--                    include the rubric and calibration prompt, so an upper bound per document.
-- Views: mira_decisions, mira_documents, mira_scores.
WITH kept AS (
  SELECT d.source, d.doc_id, d.scorer
  FROM mira_decisions d
  WHERE d.decision = 'kept'
), docs AS (
  SELECT doc_id, max(length(text)) AS chars FROM mira_documents GROUP BY doc_id
), totals AS (
  SELECT source, count(*) AS n_in FROM mira_decisions GROUP BY source
)
SELECT k.source,
       count(*)                                   AS kept_docs,
       max(t.n_in)                                AS input_docs,
       sum(docs.chars)                            AS kept_chars,
       sum(ceil(docs.chars / 4))                  AS est_tokens,
       sum(s.prompt_tokens)                       AS prompt_tokens
FROM kept k
JOIN docs ON docs.doc_id = k.doc_id
JOIN totals t ON t.source = k.source
LEFT JOIN mira_scores s ON s.doc_id = k.doc_id AND s.scorer = k.scorer
GROUP BY k.source
ORDER BY k.source
