-- The fleet's average daily load curve: mean and 95th-percentile power per local hour [kW].
SELECT hour(timezone('Asia/Shanghai', ts)) AS local_hour,
       count(DISTINCT meter_id)                    AS meters,
       round(avg(value) / 1000, 3)                 AS avg_kw,
       round(quantile_cont(value, 0.95) / 1000, 3) AS p95_kw
FROM readings_current
WHERE quantity = 'power_w' AND isfinite(value)
GROUP BY local_hour
ORDER BY local_hour
