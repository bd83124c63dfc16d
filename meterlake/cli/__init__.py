"""The ``meterlake`` command: the composition root, the one place that wires the stages together.

Every subcommand takes ``--config`` (default ``$METERLAKE_CONFIG`` or ``./meterlake.toml``) and,
where it works on a lake, ``--lake`` (default: the config's ``[lake] path``). Errors meterlake
raises on purpose are printed as one message without a traceback; the exit status is 2 for bad
settings or input and 1 for everything else that failed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Final, TypeVar

import duckdb
import polars as pl
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from meterlake import __version__
from meterlake.alerts.rules import load_alert_rules
from meterlake.analytics.quality import quality_figures
from meterlake.analytics.report import Language as ReportLang
from meterlake.analytics.report import write_report
from meterlake.api.serve import serve
from meterlake.cli.jobs import (
    COMPACTION_COUNTS,
    alerts_job,
    alerts_summary,
    analysis_days,
    analyze_job,
    bill_job,
    bill_summary,
    compact_job,
    job_tariffs,
    refresh,
    vee_job,
    vee_summary,
)
from meterlake.cli.jobs import utc_minute as _moment
from meterlake.cli.schedule import (
    JobRunner,
    check_jobs,
    job_work,
    run_until_stopped,
    schedule_rows,
    scheduled,
)
from meterlake.config.errors import MeterlakeError, PermanentError, RetryableError
from meterlake.config.ids import validate_meter_id
from meterlake.config.schedule import JobName
from meterlake.config.schemas import INTERVALS, METERS, QUARANTINE, READINGS, TABLES
from meterlake.config.settings import DEFAULT_CONFIG_NAME, Settings, load_settings
from meterlake.ingest.files import TABLE_OF, read_import_file, whole_file_quarantine
from meterlake.ingest.forward import UpstreamForwarder
from meterlake.ingest.gateway import (
    MODBUS_CHANNEL,
    Collector,
    Decoder,
    Gateway,
    envelope_decoder,
    spool_sink,
)
from meterlake.ingest.gateway_sim import simulate_gateway
from meterlake.ingest.modbus import ModbusCollector
from meterlake.ingest.mqtt import MqttCollector, channel_name
from meterlake.ingest.payloads import FormatOptions
from meterlake.ingest.profiles import load_registry
from meterlake.ingest.simulator import (
    FleetSpec,
    simulate_anomalies,
    simulate_batches,
    simulate_faults,
    simulate_meter_records,
)
from meterlake.ingest.spool import Spool
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.layout import init_lake, list_partitions, partition_files, require_lake
from meterlake.storage.scan import latest_versions, scan
from meterlake.storage.writer import write_table
from meterlake.tariffs.bill_checks import STATUS_HELD
from meterlake.tariffs.bill_job import release_bill
from meterlake.tariffs.describe import describe_tariff
from meterlake.tariffs.model import Tariff
from meterlake.tariffs.profile import bill_load_profile, read_load_profile
from meterlake.tariffs.registry import load_tariff_file

_T = TypeVar("_T")

app = typer.Typer(
    help="meterlake: smart-meter data from the meter to the bill.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# When not on a terminal (pipes, CI logs), tables get room instead of the default 80 columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="Settings file (default: $METERLAKE_CONFIG or ./meterlake.toml)."
    ),
]
LakeOpt = Annotated[
    Path | None,
    typer.Option("--lake", "-l", help="Lake directory (default: [lake] path of the config)."),
]

EXAMPLE_CONFIG: Final = """\
# meterlake settings. Every key is optional; the values shown are the defaults.
# Secrets may come from the environment instead of this file:
#   METERLAKE_MQTT_PASSWORD   overrides [mqtt] password
#   METERLAKE_API_TOKENS      overrides [[api.tokens]], as TOKEN:scope+scope,TOKEN2:scope

[lake]
path = "."                   # the lake root, relative to this file
compact_min_files = 2        # compact a partition once it has this many files
compact_target_rows = 5000000  # rows per compacted file, at most

[site]
timezone = "Asia/Shanghai"   # IANA zone of local days and tariff calendars

# The central jobs of `meterlake run`: per job `every` (an interval, aligned to the clock) or
# `cron` (minute hour day month weekday in the site's time zone, weekdays by name: mon-fri).
[schedule]
retries = 2                  # a failed run is retried this often ...
retry_delay = "5m"           # ... this long after it failed

[schedule.compact]           # merge small files, remove duplicates
every = "1h"

[schedule.vee]               # incremental: only the days new readings reached
every = "15m"

[schedule.analyze]           # nightly: the latest 35 local days
cron = "30 1 * * *"

[schedule.bill]              # on the 2nd at 03:00: the bills of the month before
cron = "0 3 2 * *"

# [schedule.alerts]          # off until it has a rules file (docs/alerts.md)
# every = "5m"
# rules = "alerts.toml"      # relative to this file

# A gateway (meterlake collect): Modbus buses, MQTT subscriptions, the spool.
# [[modbus]]
# name = "bus0"
# host = "192.168.1.50"      # or: serial = "/dev/ttyUSB0", baudrate = 9600
# port = 502
# framer = "socket"          # socket | rtu | rtu-over-tcp
# interval = "60s"           # aligned to the wall clock
# timeout = "1s"
# [[modbus.devices]]
# meter_id = "sdm-001"
# unit = 1
# profile = "eastron_sdm630" # eastron_sdm630 | eastron_sdm120 | chint_dtsu666 | chint_ddsu666
#
# [[mqtt]]                   # one table per subscription
# name = "tasmota"
# host = "127.0.0.1"
# port = 1883
# client_id = "meterlake-gw01"   # fixed: the broker keeps the session under it
# topics = ["tele/+/SENSOR"]
# format = "tasmota"         # canonical | tasmota | shelly-gen2 | zigbee2mqtt | mapping
# meter_id = "{topic[1]}"
# username = "gateway"
# password = "..."           # better: METERLAKE_MQTT_PASSWORD
# tls_ca_file = "/etc/ssl/certs/broker-ca.pem"
#
# [spool]
# path = "spool"
# fsync = "batch"            # batch | always | never
#
# [upstream]                 # forward every reading to a central broker
# host = "central.example"
# topic = "meterlake/readings"

# [[api.tokens]]
# token = "a-long-random-token-of-16+-chars"
# scopes = ["bills:read", "usage:read"]
# accounts = ["acc-001"]     # optional: only these accounts
"""


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


def _settings(config: Path | None) -> Settings:
    settings, _path = load_settings(config)
    return settings


def _lake(lake: Path | None, config: Path | None) -> Path:
    root = lake if lake is not None else _settings(config).lake.path
    return require_lake(root)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _tracked(items: Iterable[_T], description: str, total: int) -> Iterator[_T]:
    with _progress() as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def _refresh(root: Path) -> None:
    """Refresh the catalogue after a write; the data has landed either way."""
    if (why := refresh(root)) is not None:
        err.print(f"[yellow]warning:[/] catalogue not refreshed: {escape(why)}")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Directory of the new lake.")] = Path(),
) -> None:
    """Create a lake (idempotent) and a commented example meterlake.toml in it."""
    root = init_lake(directory)
    config = root / DEFAULT_CONFIG_NAME
    if not config.exists():
        config.write_text(EXAMPLE_CONFIG, encoding="utf-8")
    refresh_catalog(root)
    out.print(f"lake ready at {root} (settings: {config})")


@app.command("import")
def import_files(
    files: Annotated[
        list[Path],
        typer.Argument(
            help="CSV or Parquet files of readings, intervals, meters (master data) or "
            "meter events (replacements, resets); the columns say which."
        ),
    ],
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    tz: Annotated[
        str | None, typer.Option(help="IANA time zone of naive timestamps, e.g. Asia/Shanghai.")
    ] = None,
    interval_minutes: Annotated[
        int, typer.Option(help="Interval length of interval files without that column.")
    ] = 15,
) -> None:
    """Import readings, interval energy, meters or meter events; bad rows go to the quarantine
    with the reason.

    Exits non-zero only when nothing at all could be imported.
    """
    root = _lake(lake, config)
    received_at = dt.datetime.now(dt.UTC)
    summary = Table("file", "kind", "imported", "quarantined", "note")
    imported = 0
    for path in _tracked(files, "importing", len(files)):
        try:
            result = read_import_file(
                path, received_at=received_at, tz=tz, interval_minutes=interval_minutes
            )
        except PermanentError as exc:
            if path.is_file():
                write_table(root, QUARANTINE, whole_file_quarantine(path, str(exc), received_at))
            summary.add_row(
                escape(str(path)),
                "-",
                "0",
                "whole file" if path.is_file() else "-",
                escape(str(exc)),
            )
            continue
        write_table(root, TABLE_OF[result.kind], result.good)
        write_table(root, QUARANTINE, result.rejected)
        imported += result.good.height
        note = ""
        if result.rejected.height:
            reasons = result.rejected["reason"].value_counts(sort=True).head(2)
            note = "; ".join(f"{n}× {r}" for r, n in reasons.iter_rows())
        summary.add_row(
            escape(str(path)),
            result.kind,
            str(result.good.height),
            str(result.rejected.height),
            escape(note),
        )
    _refresh(root)
    out.print(summary)
    if imported == 0:
        err.print("nothing could be imported; see the notes above and the quarantine table")
        raise typer.Exit(1)


@app.command()
def compact(
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    table: Annotated[
        list[str] | None, typer.Option(help="Only this table (repeatable). Default: all.")
    ] = None,
) -> None:
    """Merge small files per partition, remove exact duplicates and flag conflicting ones."""
    root = _lake(lake, config)
    settings = _settings(config)
    with _progress() as progress:
        task = progress.add_task("compacting", total=None)
        result = compact_job(
            root,
            settings,
            table,
            on_partition=lambda total: progress.update(task, total=total, advance=1),
        )
    _refresh(root)
    if not result.results:
        out.print(result.summary())
        return
    summary = Table(
        "table", "partitions", "files in", "files out", "rows in", "rows out", "conflicts"
    )
    for name, partitions, sums in result.by_table():
        summary.add_row(name, str(partitions), *(str(sums[f]) for f in COMPACTION_COUNTS))
    out.print(summary)


@app.command()
def catalog(lake: LakeOpt = None, config: ConfigOpt = None) -> None:
    """Re-create the DuckDB catalogue's views (<lake>/catalog.duckdb)."""
    root = _lake(lake, config)
    path = refresh_catalog(root)
    out.print(f"catalogue refreshed: {path}  (open it with: duckdb {path})")


@app.command()
def sql(
    query: Annotated[
        str | None, typer.Argument(help="Any DuckDB query over the catalogue's views.")
    ] = None,
    query_file: Annotated[
        Path | None, typer.Option("--file", help="Read the query from this file instead.")
    ] = None,
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here, not to stdout.")
    ] = None,
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 50,
) -> None:
    """Run a DuckDB query over the lake's catalogue (read-only)."""
    if (query is None) == (query_file is None):
        raise PermanentError("give a QUERY or --file FILE (one of them)")
    if query_file is not None:
        try:
            query = query_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise PermanentError(f"--file {query_file}: {exc.strerror}") from None
    assert query is not None
    root = _lake(lake, config)
    con = connect_catalog(root, read_only=True)
    try:
        relation = con.sql(query)
        frame = relation.pl() if relation is not None else pl.DataFrame()
    except duckdb.Error as exc:
        raise PermanentError(f"query failed: {exc}") from None
    finally:
        con.close()
    _output(frame, output_format, out_file, max_rows)


def _output(
    frame: pl.DataFrame, output_format: OutputFormat, out_file: Path | None, max_rows: int
) -> None:
    """Print or write a result frame in the format asked for (shared by sql and quality)."""
    if output_format is OutputFormat.parquet and out_file is None:
        raise PermanentError("--format parquet needs --out FILE")
    if output_format is OutputFormat.table:
        text = _render_table(frame, max_rows)
        if out_file is None:
            out.print(text)
        else:
            with out_file.open("w", encoding="utf-8") as fh:
                Console(file=fh, width=200).print(text)
    elif output_format is OutputFormat.csv:
        _emit(frame.write_csv(), out_file)
    elif output_format is OutputFormat.json:
        _emit(frame.write_json(), out_file)
    else:
        assert out_file is not None
        frame.write_parquet(out_file)


def _emit(text: str, out_file: Path | None) -> None:
    if out_file is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        out_file.write_text(text, encoding="utf-8")


def _render_table(frame: pl.DataFrame, max_rows: int) -> Table:
    shown = frame.head(max_rows)
    caption = f"{frame.height} rows" + (
        f", {shown.height} shown" if shown.height < frame.height else ""
    )
    table = Table(*frame.columns, caption=caption)
    for row in shown.iter_rows():
        table.add_row(*("" if v is None else escape(str(v)) for v in row))
    return table


@app.command()
def vee(
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    date_from: Annotated[
        str | None,
        typer.Option("--from", help="First local day (YYYY-MM-DD); default: the first read."),
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--to", help="Last local day, included; default: last read.")
    ] = None,
    meters: Annotated[str | None, typer.Option(help="Only these meters, comma-separated.")] = None,
) -> None:
    """Turn register reads into validated, estimated interval versions.

    Without --from/--to/--meters only the days that new readings or meter events touched are
    recomputed (the first run: everything); with them, those days and meters. Idempotent: a
    second run without new data writes nothing.
    """
    root = _lake(lake, config)
    settings = _settings(config)
    wanted = [validate_meter_id(m.strip()) for m in (meters or "").split(",") if m.strip()]
    with _progress() as progress:
        task = progress.add_task("validating and estimating", total=None)
        result = vee_job(
            root,
            settings,
            dt.datetime.now(dt.UTC),
            first_day=_day(date_from, "--from"),
            last_day=_day(date_to, "--to"),
            meter_ids=wanted or None,
            on_shard=lambda done, total: progress.update(task, completed=done, total=total),
        )
    _refresh(root)
    out.print(vee_summary(result, settings.site.timezone))


def _log_progress() -> None:
    """Long-running commands (collect, serve, alerts, run) log what they do to stderr."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _day(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise PermanentError(f"{option} {text!r} is not a date YYYY-MM-DD") from None


@app.command()
def quality(
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    output_format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="Write here.")] = None,
    max_rows: Annotated[int, typer.Option(help="Rows shown in table format.")] = 50,
) -> None:
    """Per-meter data quality of the current intervals: completeness, estimated share,
    longest gap, suspect intervals."""
    root = _lake(lake, config)
    figures = quality_figures(latest_versions(scan(root, INTERVALS))).collect()
    _output(figures.with_columns(pl.selectors.float().round(2)), output_format, out_file, max_rows)


@app.command()
def info(lake: LakeOpt = None, config: ConfigOpt = None) -> None:
    """Tables, partitions, files, rows, meters and time range of the lake."""
    root = _lake(lake, config)
    summary = Table("table", "partitions", "files", "rows", "meters", "from", "to", title=str(root))
    for table in TABLES.values():
        partitions = list_partitions(root, table)
        files = [f for p in partitions for f in partition_files(root, table, p)]
        rows = sum(pq.read_metadata(f).num_rows for f in files)
        meters = first = last = "-"
        if rows:
            frame = scan(root, table)
            time = pl.col(table.time_column)
            stats = frame.select(
                pl.col("meter_id").n_unique() if "meter_id" in table.schema else pl.lit(None),
                time.min().alias("first"),
                time.max().alias("last"),
            ).collect()
            n_meters, first_value, last_value = stats.row(0)
            meters = "-" if n_meters is None else str(n_meters)
            first, last = _moment(first_value), _moment(last_value)
        summary.add_row(
            table.name, str(len(partitions)), str(len(files)), str(rows), meters, first, last
        )
    out.print(summary)


@app.command()
def simulate(
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    meters: Annotated[int, typer.Option(min=1, help="Number of simulated meters.")] = 300,
    days: Annotated[int, typer.Option(min=1, help="Days of history.")] = 21,
    start: Annotated[
        str | None, typer.Option(help="First day (YYYY-MM-DD, UTC); default: DAYS before today.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same fleet.")] = 0,
    batch_hours: Annotated[int, typer.Option(min=1, help="Hours per written batch (file).")] = 1,
    anomalies: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            metavar="SHARE",
            help="Share of meters with an injected anomaly (surge, theft, tampered register, "
            "reversed wiring, flat line, use while vacant); 0: none.",
        ),
    ] = 0.0,
) -> None:
    """Write a simulated fleet's readings (with daily/weekly shape, injected faults and, with
    --anomalies, injected anomalies) and its meters (group household/business, PV or
    import-only, vacant)."""
    root = _lake(lake, config)
    settings = _settings(config)
    if start is None:
        first_day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=days)
    else:
        try:
            first_day = dt.date.fromisoformat(start)
        except ValueError:
            raise PermanentError(f"--start {start!r} is not a date YYYY-MM-DD") from None
    spec = FleetSpec(
        meters=meters,
        start=dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC),
        days=days,
        timezone=settings.site.timezone,
        seed=seed,
        anomaly_share=anomalies,
    )
    rows = 0
    batches = simulate_batches(spec, batch_hours=batch_hours)
    for batch in _tracked(batches, "simulating", total=-(-days * 24 // batch_hours)):
        write_table(root, READINGS, batch)
        rows += batch.height
    write_table(root, METERS, simulate_meter_records(spec, dt.datetime.now(dt.UTC)))
    _refresh(root)
    faults = simulate_faults(spec)
    out.print(
        f"wrote {rows} readings of {meters} meters over {days} days from {first_day}, "
        "and their master data (meters table)"
    )
    if faults.height:
        counts = faults["kind"].value_counts(sort=True)
        out.print("injected faults: " + ", ".join(f"{k} {n}" for k, n in counts.iter_rows()))
    injected = simulate_anomalies(spec)
    if injected.height:
        counts = injected["kind"].value_counts(sort=True)
        out.print("injected anomalies: " + ", ".join(f"{k} {n}" for k, n in counts.iter_rows()))


@app.command()
def collect(
    config: ConfigOpt = None,
    lake: LakeOpt = None,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds (default: run on).")
    ] = None,
) -> None:
    """Run the gateway: poll Modbus meters, take MQTT messages, spool, write the lake.

    Runs until SIGTERM/SIGINT (or --duration); then the collectors commit what they took and the
    spool is flushed into the lake.
    """
    settings = _settings(config)
    if not settings.mqtt and not settings.modbus:
        raise PermanentError(
            "nothing to collect: add [[mqtt]] or [[modbus]] tables to the config "
            "(see the README, 'Collecting')"
        )
    root = init_lake(lake if lake is not None else settings.lake.path)
    _log_progress()
    spool = Spool(
        settings.spool.path,
        segment_bytes=settings.spool.segment_bytes,
        segment_age_s=settings.spool.segment_age_s,
        fsync=settings.spool.fsync,
    )
    decoders: dict[str, Decoder] = {}
    collectors: list[Collector] = []
    for subscription in settings.mqtt:
        options = FormatOptions.from_settings(subscription, site_timezone=settings.site.timezone)
        decoders[channel_name(subscription)] = envelope_decoder(subscription.format, options)
        collectors.append(
            MqttCollector(subscription, spool, commit_delay_s=settings.spool.commit_delay_s)
        )
    if settings.modbus:
        decoders[MODBUS_CHANNEL] = envelope_decoder("canonical", FormatOptions())
        collectors.append(
            ModbusCollector(
                settings.modbus,
                load_registry(settings.collect.profiles_dir),
                spool_sink(spool, MODBUS_CHANNEL),
            )
        )
    forwarder = UpstreamForwarder(settings.upstream) if settings.upstream else None
    gateway = Gateway(
        spool,
        decoders,
        lambda table, frame: write_table(root, table, frame),
        collectors,
        forward=forwarder.forward if forwarder else None,
        flush_interval_s=settings.spool.flush_interval_s,
        status_path=settings.collect.status_file,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: gateway.request_stop())
    if forwarder:
        forwarder.start()
    try:
        flushed = gateway.run(duration)
    finally:
        if forwarder:
            forwarder.stop()
    _refresh(root)
    out.print(
        f"collected {flushed.readings} readings into {root} "
        f"({flushed.quarantined} payloads quarantined, {flushed.forwarded} forwarded upstream)"
    )


@app.command("simulate-gateway")
def simulate_gateway_command(
    config: ConfigOpt = None,
    meters: Annotated[
        int, typer.Option(min=1, max=999, help="Simulated meters per [[mqtt]] subscription.")
    ] = 5,
    interval: Annotated[
        float, typer.Option(min=0.05, help="Seconds between two readings of a meter.")
    ] = 5.0,
    seed: Annotated[int, typer.Option(help="The same seed gives the same meters and faults.")] = 0,
    faults: Annotated[
        bool, typer.Option(help="Inject faults: a silent device, garbage, rollover, reset, drift.")
    ] = True,
    duration: Annotated[
        float | None, typer.Option(min=0, help="Stop after this many seconds (default: run on).")
    ] = None,
) -> None:
    """Serve simulated meters for a gateway config: Modbus servers for its [[modbus]] buses and
    MQTT publishers (in each subscription's format) for its [[mqtt]] subscriptions.

    Run `meterlake collect` with the same config beside it.
    """
    settings = _settings(config)
    simulation = simulate_gateway(
        settings, meters_per_subscription=meters, seed=seed, interval_s=interval, faults=faults
    )
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    try:
        simulation.start()
    except OSError as exc:  # a port in use, a broker that is not there
        raise RetryableError(f"cannot start the simulation: {exc}") from None
    out.print(escape(simulation.summary()))
    try:
        stop.wait(duration)
    finally:
        simulation.stop()


@app.command()
def status(config: ConfigOpt = None) -> None:
    """Health of the running (or last) collector: every subscription and device."""
    settings = _settings(config)
    path = settings.collect.status_file
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PermanentError(f"{path}: no status yet; is `meterlake collect` running?") from None
    age = time.time() - report["written_at"]
    out.print(
        f"status of {dt.datetime.fromtimestamp(report['written_at'], dt.UTC):%Y-%m-%d %H:%M:%S} "
        f"UTC ({age:.0f} s ago); spool holds {report['spool_pending_bytes']} bytes; "
        f"flushed so far: {report['flushed']['readings']} readings"
    )
    devices = Table("bus", "meter", "unit", "profile", "reads", "errors", "offline", "last success")
    subscriptions = Table("mqtt", "connected", "messages", "acknowledged", "pending", "spool full")
    for entry in report["collectors"]:
        for item in entry if isinstance(entry, list) else [entry]:
            if "meter_id" in item:
                devices.add_row(
                    escape(item["bus"]),
                    escape(item["meter_id"]),
                    str(item["unit"]),
                    escape(item["profile"]),
                    str(item["reads"]),
                    str(item["errors"]),
                    "yes" if item["offline"] else "no",
                    escape(str(item["last_success"] or "-")),
                )
            else:
                subscriptions.add_row(
                    escape(item["name"]),
                    "yes" if item["connected"] else "no",
                    str(item["messages"]),
                    str(item["acknowledged"]),
                    str(item["pending"]),
                    "yes" if item["spool_full"] else "no",
                )
    for table in (subscriptions, devices):
        if table.row_count:
            out.print(table)


@app.command("serve")
def serve_api(
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 or :: for every interface).")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port to listen on (0: a free one).")
    ] = 8080,
) -> None:
    """Serve the HTTP API: bills for a billing system to pull, usage for a customer app.

    Bearer tokens come from [[api.tokens]] or $METERLAKE_API_TOKENS, TLS from [api] tls_cert
    and tls_key. Runs until SIGTERM/SIGINT. The endpoints: docs/api.md, or /docs.
    """
    settings, _path = load_settings(config)
    root = require_lake(lake if lake is not None else settings.lake.path)
    _log_progress()
    if not settings.api.tokens:
        err.print(
            "[yellow]warning:[/] no API tokens: every endpoint but /healthz answers 401; add "
            "[[api.tokens]] to the config or set $METERLAKE_API_TOKENS"
        )

    def announce(url: str) -> None:
        out.print(f"serving {escape(str(root))} on {url}", soft_wrap=True, highlight=False)
        sys.stdout.flush()

    serve(root, settings, host=host, port=port, announce=announce)


class ReportLanguage(StrEnum):
    zh = "zh"
    en = "en"


@app.command()
def report(
    meter: Annotated[str, typer.Option("--meter", "-m", help="The meter id.")],
    period: Annotated[str, typer.Option(help="The month, YYYY-MM (local days).")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")],
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    day: Annotated[
        str | None,
        typer.Option(help="Day of the load curve, YYYY-MM-DD; default: the month's top day."),
    ] = None,
    lang: Annotated[ReportLanguage, typer.Option(help="Language of the page.")] = ReportLanguage.zh,
) -> None:
    """One meter's usage report for a month: a self-contained HTML page (works offline).

    Monthly and daily usage, a day's load curve over the typical day, the peak/flat/valley
    split, tier progress, the bill, open alerts and a few observations, from the lake's
    daily_usage, load_profiles, tier_progress, bills and alerts tables.
    """
    root = _lake(lake, config)
    language: ReportLang = "en" if lang is ReportLanguage.en else "zh"
    path = write_report(root, meter, period, out_file, lang=language, day=_day(day, "--day"))
    out.print(
        f"report of {escape(meter)} for {period} ({language}): {escape(str(path))} "
        f"({path.stat().st_size / 1e6:.1f} MB)",
        soft_wrap=True,
    )


@app.command()
def alerts(
    rules: Annotated[
        Path, typer.Option("--rules", "-r", help="Alert rules and sinks (TOML, docs/alerts.md).")
    ],
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    now: Annotated[
        str | None,
        typer.Option(help="Evaluate as of this time (ISO 8601 with zone, e.g. 2026-10-01T12:00Z)."),
    ] = None,
) -> None:
    """Evaluate the alert rules, write raised/renotified/resolved events to the lake and send
    them to the sinks (log, MQTT, webhook).

    A second run with the same --now raises nothing new. Events a sink did not take (it was
    down) stay pending and go out on a later run.
    """
    root = _lake(lake, config)
    checked = load_alert_rules(rules)
    moment = dt.datetime.now(dt.UTC)
    if now is not None:
        try:
            moment = dt.datetime.fromisoformat(now)
        except ValueError:
            raise PermanentError(
                f"--now {now!r} is not an ISO 8601 time (2026-10-01T12:00Z)"
            ) from None
        if moment.tzinfo is None:
            raise PermanentError(f"--now {now!r} has no time zone: add Z for UTC")
    _log_progress()
    result = alerts_job(root, checked, moment, clock=lambda: dt.datetime.now(dt.UTC))
    _refresh(root)
    counts = result.counts()
    out.print(alerts_summary(result))
    if counts.height:
        out.print(_render_table(counts, counts.height))
    for name, delivered in result.delivered.items():
        out.print(f"  sink {escape(name)}: {delivered} delivered, {result.pending[name]} pending")
        if name in result.errors:
            err.print(f"[yellow]sink {escape(name)}:[/] {escape(result.errors[name])}")


def _tariffs(config: Path | None, extra: list[Path] | None) -> dict[str, Tariff]:
    """The catalogue, the config's ``[bill] tariffs_dir`` and the ``--tariffs`` directories."""
    return job_tariffs(_settings(config), extra or ())


def _one_tariff(name: str, config: Path | None, extra: list[Path] | None) -> Tariff:
    """A tariff file, or a tariff id of the catalogue / tariff directories."""
    path = Path(name)
    if path.suffix in (".toml", ".json"):
        if not path.is_file():
            raise PermanentError(f"--tariff {name}: no such file")
        return load_tariff_file(path)
    tariffs = _tariffs(config, extra)
    if name not in tariffs:
        raise PermanentError(
            f"--tariff {name!r}: neither a .toml/.json file nor a known tariff id; "
            "`meterlake tariff list` shows the ids"
        )
    return tariffs[name]


TariffsOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--tariffs", help="A directory of own tariff files (.toml, URDB .json); repeatable."
    ),
]


@app.command()
def analyze(
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    date_from: Annotated[
        str | None,
        typer.Option("--from", help="First local day (YYYY-MM-DD); default: 35 days before --to."),
    ] = None,
    date_to: Annotated[
        str | None,
        typer.Option("--to", help="Last local day, included; default: the latest interval's."),
    ] = None,
    tariffs_dirs: TariffsOpt = None,
) -> None:
    """Daily curves and load statistics, typical profiles, anomaly scores and tier progress.

    Appends one run to daily_usage, load_profiles, anomaly_scores and tier_progress; the
    catalogue's daily_stats, anomalies and tier_progress_current views show the latest.
    """
    root = _lake(lake, config)
    settings = _settings(config)
    tariffs = _tariffs(config, tariffs_dirs)
    first, last = analysis_days(
        root, settings.site.timezone, _day(date_from, "--from"), _day(date_to, "--to")
    )
    with _progress() as progress:
        progress.add_task(f"analysing {first}..{last}", total=None)
        result = analyze_job(root, settings, tariffs, dt.datetime.now(dt.UTC), first, last)
    _refresh(root)
    out.print(result.summary())
    flagged = result.flagged
    if flagged.height:
        kinds = flagged.explode("kinds").group_by("kinds").len().sort("len", descending=True)
        out.print("  flags: " + ", ".join(f"{k} {n}" for k, n in kinds.iter_rows()))
        top = (
            flagged.sort("score", descending=True)
            .unique("meter_id", keep="first", maintain_order=True)
            .head(5)
        )
        for row in top.iter_rows(named=True):
            out.print(
                f"  {row['meter_id']} {row['day']} score {row['score']:.2f}: "
                + escape("; ".join(row["reasons"]))
            )


@app.command()
def bill(
    lake: LakeOpt = None,
    config: ConfigOpt = None,
    period: Annotated[
        str | None, typer.Option(help="Billing period YYYY-MM: every meter's bill, into the lake.")
    ] = None,
    tariffs_dirs: TariffsOpt = None,
    tariff: Annotated[
        str | None,
        typer.Option(help="With --load: a tariff file (.toml, URDB .json) or a tariff id."),
    ] = None,
    load: Annotated[
        Path | None,
        typer.Option(help="A load profile CSV (timestamp,kwh) to bill month by month."),
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", "-o", help="With --load: write the JSON here.")
    ] = None,
    release: Annotated[
        str | None, typer.Option(help="Release the held bill with this id (after review).")
    ] = None,
    reviewer: Annotated[
        str | None, typer.Option("--by", help="With --release: who reviewed it (default: $USER).")
    ] = None,
    note: Annotated[str | None, typer.Option(help="With --release: why it is released.")] = None,
) -> None:
    """Compute bills: every meter of the lake for a period, or one load profile under a tariff.

    Lake mode (--period) writes only bills that are new or changed: a second run on the same
    data writes nothing; after corrected intervals a changed bill gets a new version that names
    the one it supersedes, with adjustment lines. A bill that fails the pre-release checks (far
    above the meter's history, mostly estimated, negative, an open critical alert) is held for
    review; --release ID releases it.
    """
    if release is not None:
        root = _lake(lake, config)
        who = reviewer or os.environ.get("USER") or "unknown"
        if release_bill(root, release, reviewer=who, note=note, now=dt.datetime.now(dt.UTC)):
            _refresh(root)
            out.print(f"released bill {release} (by {who})")
        else:
            out.print(f"bill {release} is not held: nothing to release")
        return
    if load is not None:
        if tariff is None:
            raise PermanentError("--load needs --tariff FILE-or-ID")
        chosen = _one_tariff(tariff, config, tariffs_dirs)
        result = bill_load_profile(read_load_profile(load, chosen), chosen)
        _emit(json.dumps(result, indent=2, ensure_ascii=False), out_file)
        return
    if period is None:
        raise PermanentError("give --period YYYY-MM (lake bills) or --load FILE --tariff T")
    root = _lake(lake, config)
    tariffs = _tariffs(config, tariffs_dirs)
    with _progress() as progress:
        progress.add_task(f"billing {period}", total=None)
        result_run = bill_job(root, _settings(config), tariffs, period, dt.datetime.now(dt.UTC))
    _refresh(root)
    written = result_run.bills
    out.print(bill_summary(result_run))
    if written.height:
        by_currency = (
            written.group_by("currency").agg(pl.col("total_amount").sum()).sort("currency")
        )
        totals = ", ".join(f"{c} {a}" for c, a in by_currency.iter_rows())
        out.print(f"  total of the bills written: {totals}")
        held = written.filter(pl.col("status") == STATUS_HELD)
        if held.height:
            out.print(f"  {held.height} held for review (release: meterlake bill --release ID):")
            for row in held.sort("meter_id").head(10).iter_rows(named=True):
                why = escape("; ".join(row["hold_reasons"]))
                out.print(f"    {row['bill_id']} {row['meter_id']}: {why}")
    if result_run.skipped.height:
        reasons = result_run.skipped.group_by("reason").len().sort("reason")
        for reason, count in reasons.iter_rows():
            err.print(f"[yellow]skipped[/] {count} meters: {escape(reason)}")


@app.command("run")
def run_jobs(
    config: ConfigOpt = None,
    lake: LakeOpt = None,
    once: Annotated[
        JobName | None,
        typer.Option("--once", help="Run this job now, once (no retries), and exit."),
    ] = None,
) -> None:
    """Run the central jobs on the schedule of [schedule]: compaction, incremental VEE, alerts,
    the nightly analysis and the month's bills.

    The jobs run one at a time and a job never overlaps itself; a failed run is logged and
    retried ([schedule] retries, retry_delay). Runs until SIGTERM/SIGINT: the running job
    finishes, no other starts, exit 0.
    """
    settings = _settings(config)
    root = _lake(lake, config)
    _log_progress()
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if once is not None:
        runner = JobRunner({once: job_work(once, root, settings)})
        out.print(escape(runner.run_once(once)), soft_wrap=True)
        return
    check_jobs(settings)
    runner, scheduler = scheduled(root, settings)
    table = Table("job", "when", "next run", title=f"meterlake run: {root}")
    for row in schedule_rows(settings, dt.datetime.now(dt.UTC)):
        table.add_row(*map(escape, row))
    out.print(table)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    run_until_stopped(runner, scheduler, stop)
    out.print("stopped: no job running")


tariff_app = typer.Typer(help="Tariffs: check a file, list the catalogue.", no_args_is_help=True)
app.add_typer(tariff_app, name="tariff")


@tariff_app.command("check")
def tariff_check(
    path: Annotated[Path, typer.Argument(help="A tariff file (.toml or URDB .json).")],
) -> None:
    """Validate a tariff file and print its summary and price grid."""
    if not path.is_file():
        raise PermanentError(f"{path}: no such file")
    out.print(describe_tariff(load_tariff_file(path)))


@tariff_app.command("list")
def tariff_list(config: ConfigOpt = None, tariffs_dirs: TariffsOpt = None) -> None:
    """The tariffs meterlake knows: the catalogue and your tariff directories."""
    tariffs = _tariffs(config, tariffs_dirs)
    table = Table("id", "name", "currency", "versions", "periods", "tiers")
    table.columns[0].no_wrap = True
    table.columns[0].min_width = max((len(t) for t in tariffs), default=2)
    for tariff_id, item in sorted(tariffs.items()):
        latest = item.versions[-1]
        table.add_row(
            escape(tariff_id),
            escape(item.name),
            item.currency,
            str(len(item.versions)),
            escape(", ".join(latest.periods)),
            str(latest.energy.tier_count)
            + (f" ({latest.energy.tier_reset})" if latest.energy.tiered else ""),
        )
    out.print(table)


@app.callback(invoke_without_command=True)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"meterlake {__version__}")
        raise typer.Exit


def main() -> None:
    """Entry point of the ``meterlake`` console script."""
    try:
        app()
    except PermanentError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except MeterlakeError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(1)
