-- What it answers: how each source scores on each rubric dimension (unmasked cells only): count, mean,
-- spread and exact quartiles. Views: scores_long (mira_spark/store/views.py).
SELECT source,
       slot,
       dimension,
       count(score)                    AS n,
       round(avg(score), 3)            AS mean_score,
       round(stddev_samp(score), 3)    AS sd_score,
       percentile(score, 0.25)         AS p25,
       percentile(score, 0.5)          AS median,
       percentile(score, 0.75)         AS p75,
       min(score)                      AS min_score,
       max(score)                      AS max_score
FROM scores_long
WHERE NOT masked AND score IS NOT NULL
GROUP BY source, slot, dimension
ORDER BY source, int(substring(slot, 2))
