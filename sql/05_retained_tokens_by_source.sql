-- What it answers: how much training text each variant keeps per source, in documents and tokens, against
-- the source's input, and the source mix of the selection (its share of the variant's kept tokens) next
-- to the raw mix. Tokens come from selection.tokens_column of the documents table or, where it has none,
-- the project's estimate (estimated = true: an upper-leaning estimate, prompting/tokens.py).
-- Views: mira_decisions.
WITH per AS (
  SELECT variant,
         source,
         count_if(decision = 'kept')                                   AS kept_docs,
         count(*)                                                      AS input_docs,
         coalesce(sum(CASE WHEN decision = 'kept' THEN tokens END), 0) AS kept_tokens,
         coalesce(sum(tokens), 0)                                      AS input_tokens,
         bool_or(coalesce(tokens_estimated, false))                    AS estimated
  FROM mira_decisions
  GROUP BY variant, source
)
SELECT variant,
       source,
       kept_docs,
       input_docs,
       kept_tokens,
       input_tokens,
       round(kept_tokens / sum(kept_tokens) OVER (PARTITION BY variant), 4)   AS kept_token_share,
       round(input_tokens / sum(input_tokens) OVER (PARTITION BY variant), 4) AS input_token_share,
       estimated
FROM per
ORDER BY variant, source
