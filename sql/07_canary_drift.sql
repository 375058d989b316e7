-- What it answers: per check, endpoint and scorer, how far the canary answers (the group's calibration
-- references scored on every endpoint before the corpus is sent, and again every scoring.canary.every_waves
-- waves) drift from their reference scores, and whether the run quarantined the endpoint. Table contract
-- (the canary guard, issue 10 item 4): canary(run_id, wave, endpoint, scorer, ref_id, slot,
-- reference_score, score, deviation, quarantined, reason, checked_at), one row per (check, endpoint,
-- reference, slot), exposed as the view mira_canary. wave = the wave the check ran before (0 = before
-- the corpus); slots_checked counts the cells that got a score (score is null otherwise).
SELECT run_id,
       wave,
       endpoint,
       scorer,
       count(score)                              AS slots_checked,
       round(avg(abs(deviation)), 3)             AS mean_abs_deviation,
       round(max(abs(deviation)), 3)             AS max_abs_deviation,
       round(avg(score - reference_score), 3)    AS mean_shift,
       max(CAST(quarantined AS INT)) = 1         AS quarantined,
       max(reason)                               AS reason
FROM mira_canary
GROUP BY run_id, wave, endpoint, scorer
ORDER BY run_id, wave, max(abs(deviation)) DESC, endpoint
