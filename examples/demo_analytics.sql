-- The month's most suspicious meters: their highest anomaly score and why, with their October
-- figures from daily_stats (kWh, peak kW, load factor, share of import in peak hours).
WITH worst AS (
    SELECT meter_id, arg_max(day, score) AS day, max(score) AS score,
           arg_max(reasons, score)[1] AS reason
    FROM anomalies
    WHERE day BETWEEN DATE '2026-10-01' AND DATE '2026-10-31' AND len(kinds) > 0
    GROUP BY meter_id
)
SELECT w.meter_id, w.day, round(w.score, 2) AS score, w.reason,
       round(sum(d.energy_kwh), 1) AS october_kwh,
       round(max(d.peak_kw), 2) AS peak_kw,
       round(avg(d.load_factor), 2) AS load_factor,
       round(100 * sum(d.energy_peak_kwh) / sum(d.energy_kwh), 1) AS peak_pct
FROM worst AS w JOIN daily_stats AS d USING (meter_id)
WHERE d.day BETWEEN DATE '2026-10-01' AND DATE '2026-10-31'
GROUP BY ALL
ORDER BY score DESC
LIMIT 10
