"""The DuckDB catalogue: ``<lake>/catalog.duckdb`` with a view per table and ``*_current`` views.

An analyst opens it with ``duckdb <lake>/catalog.duckdb`` (or ``meterlake sql``) and queries::

    readings            raw readings, as received (+ ``date`` from the partition path)
    readings_current    one row per (meter_id, quantity, ts): the latest received value, with
                        ``duplicate_conflict`` in ``quality`` where other values exist
    intervals           every version of every interval (+ ``month``)
    intervals_current   the highest version of each interval
    meters              meter master data, one row per meter and import (+ ``date``)
    meters_current      the latest record of each meter
    meter_events        recorded meter replacements and register resets
    vee_runs            one row per VEE run: range, meters, rows written
    bills               every version of every bill (+ ``period``)
    bills_current       the latest version of each meter's bill of each period
    bill_lines          the lines of every bill version; ``bill_lines_current``: of current bills
    bill_reviews        releases of held bills
    daily_usage         every analysis run's daily figures; ``daily_stats``: each day's latest
    daily_curves        ``daily_stats``' curves, one row per meter, day and interval
    monthly_usage       energy per meter and local month, with the same month last year
    anomaly_scores      every run's anomaly scores; ``anomalies``: each day's latest
    load_profiles       typical daily profiles per run; ``load_profiles_current``: the latest run
    tier_progress       tier progress per meter and day; ``tier_progress_current``: the latest
    alerts              alert events (raised, renotified, resolved); ``alerts_open``: the
                        alerts whose latest event is not ``resolved``
    alert_deliveries    which sink took which alert event
    quarantine
    quantities          the canonical quantity names and their units
    quality_flags       the flags a reading's ``quality`` may hold

The views read the Parquet files through globs, so new files show up without a refresh; a refresh
(``meterlake catalog``, and every command that writes) re-creates the views, e.g. when a table
got its first file or the lake moved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import duckdb

from meterlake.config.errors import LakeBusyError, PermanentError
from meterlake.config.schemas import (
    ALERTS,
    ANOMALY_SCORES,
    BILL_LINES,
    BILL_REVIEWS,
    BILLS,
    DAILY_USAGE,
    INTERVALS,
    LOAD_PROFILES,
    METERS,
    QUALITY_MEANINGS,
    QUANTITIES,
    READINGS,
    TABLES,
    TIER_PROGRESS,
    Quality,
    TableSpec,
    empty_frame,
)
from meterlake.storage.compaction import recover_if_idle
from meterlake.storage.layout import (
    CATALOG_FILE,
    DATA_SUFFIX,
    list_partitions,
    partition_files,
    publish,
    tmp_path,
)

_HIVE_TYPES: Final = {"date": "DATE", "month": "VARCHAR", "period": "VARCHAR"}
_ANCHOR_VALUE: Final = {"date": "1970-01-01", "month": "1970-01", "period": "1970-01"}
_GLOB_CHARACTERS: Final = "*?[]{}"
SCHEMA_DIR: Final = ".schema"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def write_schema_anchor(root: Path, table: TableSpec) -> Path:
    """Write the empty Parquet file that gives ``table``'s view its columns and types.

    DuckDB takes a view's columns from the first file it lists; with this anchor first, it
    never needs a data file to bind a query, so a query for one partition opens that
    partition's files only, and an empty table still has a typed view.
    """
    directory = (
        root / SCHEMA_DIR / table.name / f"{table.partition}={_ANCHOR_VALUE[table.partition]}"
    )
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / "schema.parquet"
    tmp = tmp_path(root, f"schema-{table.name}{DATA_SUFFIX}")
    empty_frame(table).write_parquet(tmp)
    publish(tmp, final)
    return final


def table_view_sql(root: Path, table: TableSpec) -> str:
    """The ``SELECT`` behind a table's view: its schema anchor, then its data files."""
    lake = root.resolve()
    if any(c in str(lake) for c in _GLOB_CHARACTERS):
        raise PermanentError(
            f"{lake}: the lake path contains one of {_GLOB_CHARACTERS!r}, which DuckDB reads as a "
            "file pattern; move the lake to a path without them"
        )
    sources = [_quote(str(write_schema_anchor(lake, table)))]
    if any(partition_files(root, table, v) for v in list_partitions(root, table)):
        sources.append(_quote(str(lake / table.name / f"{table.partition}=*" / "*.parquet")))
    hive_type = _HIVE_TYPES[table.partition]
    return (
        f"SELECT * FROM read_parquet([{', '.join(sources)}], hive_partitioning = true, "
        f"hive_types = {{'{table.partition}': {hive_type}}})"
    )


READINGS_CURRENT_SQL: Final = f"""
SELECT * REPLACE (
    CASE WHEN count(DISTINCT value) OVER k + max((value IS NULL)::INTEGER) OVER k > 1
              AND NOT list_contains(coalesce(quality, []), '{Quality.DUPLICATE_CONFLICT.value}')
         THEN list_append(coalesce(quality, []), '{Quality.DUPLICATE_CONFLICT.value}')
         ELSE quality END AS quality)
FROM {READINGS.name}
WINDOW k AS (PARTITION BY date, meter_id, quantity, ts)
QUALIFY row_number() OVER (
    PARTITION BY date, meter_id, quantity, ts
    ORDER BY received_at DESC, source DESC NULLS LAST) = 1
"""

INTERVALS_CURRENT_SQL: Final = f"""
SELECT * FROM {INTERVALS.name}
QUALIFY row_number() OVER (
    PARTITION BY month, meter_id, interval_start
    ORDER BY version DESC, run_id DESC) = 1
"""


BILLS_CURRENT_SQL: Final = f"""
SELECT b.* REPLACE (CASE WHEN r.bill_id IS NULL THEN b.status ELSE 'released' END AS status),
       r.reviewer AS released_by, r.reviewed_at AS released_at
FROM {BILLS.name} AS b
LEFT JOIN (
    SELECT bill_id, reviewer, reviewed_at FROM {BILL_REVIEWS.name} WHERE action = 'released'
    QUALIFY row_number() OVER (PARTITION BY bill_id ORDER BY reviewed_at) = 1
) AS r USING (bill_id)
QUALIFY row_number() OVER (
    PARTITION BY b.meter_id, b.period ORDER BY b.version DESC, b.issued_at DESC) = 1
"""

BILL_LINES_CURRENT_SQL: Final = f"""
SELECT l.* FROM {BILL_LINES.name} AS l SEMI JOIN bills_current AS b USING (bill_id)
"""


DAILY_STATS_SQL: Final = f"""
SELECT * EXCLUDE (month) FROM {DAILY_USAGE.name}
QUALIFY row_number() OVER (
    PARTITION BY month, meter_id, day ORDER BY computed_at DESC, run_id DESC) = 1
"""

DAILY_CURVES_SQL: Final = """
SELECT meter_id, day, timezone, interval_minutes, generate_subscripts(curve_kw, 1) - 1 AS slot,
       unnest(curve_kw) AS power_kw
FROM daily_stats
"""

MONTHLY_USAGE_SQL: Final = """
WITH m AS (
    SELECT meter_id, strftime(day, '%Y-%m') AS month, sum(energy_kwh) AS energy_kwh,
           sum(export_kwh) AS export_kwh, count(*) AS days, max(peak_kw) AS peak_kw
    FROM daily_stats GROUP BY ALL
)
SELECT m.*, ly.energy_kwh AS last_year_kwh,
       (m.energy_kwh - ly.energy_kwh) / nullif(ly.energy_kwh, 0) AS change_vs_last_year
FROM m LEFT JOIN m AS ly
  ON ly.meter_id = m.meter_id
 AND ly.month = strftime(strptime(m.month || '-01', '%Y-%m-%d') - INTERVAL 1 YEAR, '%Y-%m')
"""

ANOMALIES_SQL: Final = f"""
SELECT * EXCLUDE (month) FROM {ANOMALY_SCORES.name}
QUALIFY row_number() OVER (
    PARTITION BY month, meter_id, day ORDER BY computed_at DESC, run_id DESC) = 1
"""

LOAD_PROFILES_CURRENT_SQL: Final = f"""
SELECT * EXCLUDE (date) FROM {LOAD_PROFILES.name}
WHERE run_id = (SELECT arg_max(run_id, computed_at) FROM {LOAD_PROFILES.name})
"""

TIER_PROGRESS_CURRENT_SQL: Final = f"""
SELECT * EXCLUDE (date) FROM {TIER_PROGRESS.name}
QUALIFY row_number() OVER (PARTITION BY meter_id ORDER BY as_of DESC, computed_at DESC) = 1
"""

ALERTS_OPEN_SQL: Final = f"""
WITH latest AS (
    SELECT * FROM {ALERTS.name}
    QUALIFY row_number() OVER (PARTITION BY alert_id ORDER BY ts DESC, state DESC) = 1
)
SELECT l.* EXCLUDE (date), f.ts AS raised_at
FROM latest AS l
JOIN (SELECT alert_id, min(ts) AS ts FROM {ALERTS.name} GROUP BY alert_id) AS f USING (alert_id)
WHERE l.state <> 'resolved'
"""

METERS_CURRENT_SQL: Final = f"""
SELECT * FROM {METERS.name}
QUALIFY row_number() OVER (PARTITION BY meter_id ORDER BY updated_at DESC, date DESC) = 1
"""


_DERIVED_VIEWS: Final = {
    "daily_stats": DAILY_STATS_SQL,
    "daily_curves": DAILY_CURVES_SQL,
    "monthly_usage": MONTHLY_USAGE_SQL,
    "anomalies": ANOMALIES_SQL,
    "load_profiles_current": LOAD_PROFILES_CURRENT_SQL,
    "tier_progress_current": TIER_PROGRESS_CURRENT_SQL,
    "alerts_open": ALERTS_OPEN_SQL,
}


def catalog_path(root: Path) -> Path:
    return root / CATALOG_FILE


def refresh_catalog(root: Path) -> Path:
    """(Re)create every view of ``<root>/catalog.duckdb``; return the catalogue's path.

    Raises
    ------
    LakeBusyError
        Another process has the catalogue open for writing (e.g. a ``duckdb`` shell).
    """
    recover_if_idle(root)
    path = catalog_path(root)
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as exc:
        raise LakeBusyError(
            f"{path} is open in another process ({exc}); close it and run `meterlake catalog`"
        ) from None
    try:
        con.execute("BEGIN")
        for table in TABLES.values():
            con.execute(f"CREATE OR REPLACE VIEW {table.name} AS {table_view_sql(root, table)}")
        con.execute(f"CREATE OR REPLACE VIEW readings_current AS {READINGS_CURRENT_SQL}")
        con.execute(f"CREATE OR REPLACE VIEW intervals_current AS {INTERVALS_CURRENT_SQL}")
        con.execute(f"CREATE OR REPLACE VIEW meters_current AS {METERS_CURRENT_SQL}")
        con.execute(f"CREATE OR REPLACE VIEW bills_current AS {BILLS_CURRENT_SQL}")
        con.execute(f"CREATE OR REPLACE VIEW bill_lines_current AS {BILL_LINES_CURRENT_SQL}")
        for name, sql in _DERIVED_VIEWS.items():
            con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
        con.execute("CREATE OR REPLACE TABLE quantities (quantity VARCHAR, unit VARCHAR)")
        con.executemany("INSERT INTO quantities VALUES (?, ?)", list(QUANTITIES.items()))
        con.execute("CREATE OR REPLACE TABLE quality_flags (flag VARCHAR, meaning VARCHAR)")
        con.executemany(
            "INSERT INTO quality_flags VALUES (?, ?)",
            [(q.value, meaning) for q, meaning in QUALITY_MEANINGS.items()],
        )
        con.execute("COMMIT")
    finally:
        con.close()
    return path


def connect_catalog(root: Path, *, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """A connection to the lake's catalogue (created first when it does not exist yet)."""
    path = catalog_path(root)
    if not path.exists():
        refresh_catalog(root)
    try:
        return duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        raise LakeBusyError(f"{path} is locked by another process ({exc}); try again") from None
