-- What it answers: per endpoint and scorer, how far the canary answers (the group's calibration
-- references scored on every endpoint before the corpus is sent) drift from their reference scores, and
-- whether the run quarantined the endpoint. Table contract (the canary guard, issue 10 item 4):
-- canary(run_id, endpoint, scorer, slot, reference_score, score, deviation, quarantined),
-- exposed as the view mira_canary.
SELECT run_id,
       endpoint,
       scorer,
       count(*)                                  AS slots_checked,
       round(avg(abs(deviation)), 3)             AS mean_abs_deviation,
       round(max(abs(deviation)), 3)             AS max_abs_deviation,
       round(avg(score - reference_score), 3)    AS mean_shift,
       max(CAST(quarantined AS INT)) = 1         AS quarantined
FROM mira_canary
GROUP BY run_id, endpoint, scorer
ORDER BY run_id, max(abs(deviation)) DESC, endpoint
