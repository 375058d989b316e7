-- What it answers: what the runs have cost so far, per run: HTTP requests sent (repairs and retries
-- included), of them retries, repairs and wasted requests (billed answers nothing uses) with the completion
-- tokens wasted, scored rows, prompt and completion tokens, endpoints used, scoring wall time, latency
-- p50/p99, and a GPU-hours ESTIMATE = endpoints used x 8 GPUs per endpoint (one TP8 replica per 8xH200
-- node, the model card's serving layout; change the 8 for yours) x scoring seconds / 3600.
-- Everything but the endpoints comes from mira_run_stats (one row per run and stage, written by the run
-- from the rows it scored); endpoints used from mira_raw_outputs.
WITH eps AS (
  SELECT run_id, count(DISTINCT endpoint) AS endpoints
  FROM mira_raw_outputs
  GROUP BY run_id
)
SELECT s.run_id,
       s.requests,
       s.retries,
       s.repairs,
       s.wasted_requests,
       s.wasted_completion_tokens,
       s.rows_out                                              AS rows_scored,
       coalesce(s.counts['status:ok'], 0)                      AS rows_ok,
       s.prompt_tokens,
       s.completion_tokens,
       eps.endpoints,
       round(s.seconds, 1)                                     AS scoring_s,
       round(s.latency_p50_s, 3)                               AS latency_p50_s,
       round(s.latency_p99_s, 3)                               AS latency_p99_s,
       round(eps.endpoints * 8 * s.seconds / 3600, 4)          AS gpu_hours_est
FROM mira_run_stats s
LEFT JOIN eps ON eps.run_id = s.run_id
WHERE s.stage = 'score'
ORDER BY s.run_id
