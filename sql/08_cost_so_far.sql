-- What it answers: what the runs have cost so far, per run: HTTP requests sent (repairs and retries
-- included), scored rows, prompt and completion tokens, endpoints used, scoring wall time, and a
-- GPU-hours ESTIMATE = endpoints used x 8 GPUs per endpoint (one TP8 replica per 8xH200 node, the model
-- card's serving layout; change the 8 for yours) x scoring seconds / 3600. Requests and tokens come from
-- mira_raw_outputs; scoring seconds from mira_run_stats (stage 'score', metric 'seconds').
WITH raw AS (
  SELECT run_id,
         sum(attempts)                    AS requests,
         count(*)                         AS rows_scored,
         sum(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS rows_ok,
         sum(prompt_tokens)               AS prompt_tokens,
         sum(completion_tokens)           AS completion_tokens,
         count(DISTINCT endpoint)         AS endpoints
  FROM mira_raw_outputs
  GROUP BY run_id
), secs AS (
  SELECT run_id, max(value) AS scoring_s
  FROM mira_run_stats
  WHERE stage = 'score' AND metric = 'seconds'
  GROUP BY run_id
)
SELECT raw.run_id,
       raw.requests,
       raw.rows_scored,
       raw.rows_ok,
       raw.prompt_tokens,
       raw.completion_tokens,
       raw.endpoints,
       round(secs.scoring_s, 1)                              AS scoring_s,
       round(raw.endpoints * 8 * secs.scoring_s / 3600, 4)   AS gpu_hours_est
FROM raw
LEFT JOIN secs ON secs.run_id = raw.run_id
ORDER BY raw.run_id
