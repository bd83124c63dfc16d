-- October's bills by tariff: meters, energy and money, and the share resting on estimates.
SELECT tariff_id,
       count(*)                                    AS bills,
       round(sum(energy_import_kwh), 1)            AS import_kwh,
       sum(total_amount)                           AS total,
       round(avg(total_amount), 2)                 AS avg_bill,
       round(100 * avg(estimated_share), 2)        AS estimated_pct,
       count(*) FILTER (WHERE status = 'held')     AS held
FROM bills_current
WHERE period = '2026-10'
GROUP BY tariff_id
ORDER BY tariff_id
