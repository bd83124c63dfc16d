"""``meterlake run``: the [schedule] settings, the job table, no overlap, retries, ``--once`` on a
simulated lake, and a clean stop on SIGTERM."""

from __future__ import annotations

import datetime as dt
import logging
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from meterlake.cli.jobs import previous_period
from meterlake.cli.schedule import (
    JobRunner,
    build_scheduler,
    job_work,
    schedule_rows,
    scheduled,
    stop_scheduler,
)
from meterlake.config.errors import ConfigError, LakeBusyError, PermanentError
from meterlake.config.schedule import JOB_NAMES
from meterlake.config.schemas import BILLS, INTERVALS, METERS, READINGS
from meterlake.config.settings import Settings, load_settings
from meterlake.ingest.simulator import FleetSpec, simulate_meter_records, simulate_readings
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table
from tests.cli_runner import run_cli

UTC = dt.UTC
ZONE = "Asia/Shanghai"
LOGGER = "meterlake.schedule"


def settings_from(tmp_path: Path, text: str) -> Settings:
    config = tmp_path / "meterlake.toml"
    config.write_text(text)
    return load_settings(config)[0]


# --- settings ---------------------------------------------------------------------------------


def test_the_defaults_are_what_an_operator_expects() -> None:
    schedule = Settings().schedule
    assert [schedule.job(n).timing for n in JOB_NAMES] == [
        "every 1h",
        "every 15m",
        "every 5m",
        "cron 30 1 * * *",
        "cron 0 3 2 * *",
    ]
    assert (schedule.retries, schedule.retry_delay) == (2, 300.0)
    # alerts are off until there is a rules file; everything else is on
    assert [n for n in JOB_NAMES if schedule.active(n)] == ["compact", "vee", "analyze", "bill"]


def test_a_job_table_without_timing_keeps_the_default_and_paths_are_relative(
    tmp_path: Path,
) -> None:
    settings = settings_from(
        tmp_path,
        """
        [schedule]
        retry_delay = "30s"
        [schedule.vee]
        enabled = false
        [schedule.bill]
        cron = "0  4 3 * *"
        [schedule.compact]
        cron = "15 2 * * sun"
        [schedule.alerts]
        rules = "rules/alerts.toml"
        """,
    )
    schedule = settings.schedule
    assert (schedule.vee.enabled, schedule.vee.every) == (False, 900.0)
    assert schedule.bill.cron == "0 4 3 * *"
    assert (schedule.compact.every, schedule.compact.cron) == (None, "15 2 * * sun")
    assert schedule.alerts.rules == tmp_path / "rules" / "alerts.toml"
    assert schedule.active("alerts")
    assert schedule.retry_delay == 30.0


def test_the_example_config_of_init_shows_the_defaults(tmp_path: Path) -> None:
    from meterlake.cli import EXAMPLE_CONFIG

    assert settings_from(tmp_path, EXAMPLE_CONFIG).schedule == Settings().schedule
    uncommented = EXAMPLE_CONFIG.replace("# [schedule.alerts]", "[schedule.alerts]").replace(
        '# rules = "alerts.toml"', 'rules = "alerts.toml"'
    )
    alerts = settings_from(tmp_path, uncommented).schedule.alerts
    assert alerts.rules == tmp_path / "alerts.toml"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[schedule.vee]\nevery = "15 minutes"',
            "[schedule.vee] every = '15 minutes': must be a duration such as",
        ),
        ('[schedule.vee]\nevery = "10ms"', "[schedule.vee] every = '10ms'"),
        (
            '[schedule.analyze]\ncron = "30 25 * * *"',
            "[schedule.analyze] cron = '30 25 * * *': is not a valid crontab",
        ),
        (
            '[schedule.analyze]\ncron = "30 1 * *"',
            "[schedule.analyze] cron = '30 1 * *': must be a crontab of five fields",
        ),
        (
            '[schedule.bill]\ncron = "0 3 * * 0"',
            "[schedule.bill] cron = '0 3 * * 0': write the weekday by name",
        ),
        (
            '[schedule.compact]\nevery = "1h"\ncron = "0 * * * *"',
            "[schedule] compact = {'every': '1h', 'cron': '0 * * * *'}: give either every",
        ),
        ("[schedule]\nretries = -1", "[schedule] retries = -1"),
        ('[schedule]\nretry_delay = "soon"', "[schedule] retry_delay = 'soon'"),
        (
            '[schedule.compact]\nrules = "x.toml"',
            "[schedule.compact] rules: unknown key; allowed here: enabled, every, cron",
        ),
        ("[schedule]\nnightly = true", "[schedule] nightly: unknown key"),
    ],
)
def test_bad_values_name_the_file_the_key_and_the_value(
    tmp_path: Path, toml: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(tmp_path, toml)
    assert str(tmp_path / "meterlake.toml") in str(caught.value)
    assert message in str(caught.value)


# --- the job table ----------------------------------------------------------------------------


def test_the_job_table_built_from_the_settings(tmp_path: Path) -> None:
    settings = settings_from(
        tmp_path,
        '[schedule.alerts]\nrules = "alerts.toml"\nevery = "10m"\n'
        "[schedule.analyze]\nenabled = false\n",
    )
    runner, scheduler = scheduled(tmp_path, settings)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    assert sorted(jobs) == ["alerts", "bill", "compact", "vee"]
    assert runner.scheduler is scheduler
    assert (runner.retries, runner.retry_delay) == (2, 300.0)
    for job in jobs.values():
        assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, None)
        assert job.args == (job.id,)
    intervals = {n: jobs[n].trigger for n in ("compact", "vee", "alerts")}
    assert all(isinstance(t, IntervalTrigger) for t in intervals.values())
    assert {n: t.interval for n, t in intervals.items()} == {
        "compact": dt.timedelta(hours=1),
        "vee": dt.timedelta(minutes=15),
        "alerts": dt.timedelta(minutes=10),
    }
    bill = jobs["bill"].trigger
    assert isinstance(bill, CronTrigger)
    assert str(bill.timezone) == ZONE
    # interval jobs are aligned to the clock; the bill runs on the 2nd at 03:00 local time
    now = dt.datetime(2026, 10, 20, 8, 7, tzinfo=UTC)
    rows = {name: (when, nxt) for name, when, nxt in schedule_rows(settings, now)}
    assert rows["vee"] == ("every 15m", "2026-10-20 16:15:00 CST")
    assert rows["compact"] == ("every 1h", "2026-10-20 17:00:00 CST")
    assert rows["bill"] == ("cron 0 3 2 * *", "2026-11-02 03:00:00 CST")
    assert rows["analyze"] == ("cron 30 1 * * *", "off (enabled = false)")


def test_alerts_without_rules_are_off_and_refused_once(tmp_path: Path) -> None:
    settings = Settings()
    assert ("alerts", "every 5m", "off (no rules in [schedule.alerts])") in schedule_rows(
        settings, dt.datetime(2026, 10, 1, tzinfo=UTC)
    )
    with pytest.raises(PermanentError, match=r"set rules = 'alerts.toml' in \[schedule.alerts\]"):
        job_work("alerts", tmp_path, settings)


# --- the runner under a real scheduler --------------------------------------------------------


Start = Callable[[JobRunner, dict[str, Any]], Any]


def logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 10) -> None:
    """Wait until a log message holds ``text`` (runs log from the scheduler's thread)."""
    deadline = time.monotonic() + timeout
    while text not in caplog.text:
        assert time.monotonic() < deadline, f"never logged: {text!r}"
        time.sleep(0.02)


@pytest.fixture
def started() -> Iterator[Start]:
    """Start a runner's jobs on a real scheduler; each is stopped at teardown."""
    running: list[tuple[JobRunner, Any]] = []

    def start(runner: JobRunner, triggers: dict[str, Any]) -> Any:
        scheduler = build_scheduler(runner, triggers, ZONE)
        running.append((runner, scheduler))
        scheduler.start()
        return scheduler

    yield start
    for runner, scheduler in running:
        stop_scheduler(runner, scheduler)


def test_a_slow_job_never_overlaps_itself_or_another_job(
    started: Start, caplog: pytest.LogCaptureFixture
) -> None:
    running: list[str] = []
    most = 0
    runs: dict[str, int] = {"slow": 0, "quick": 0}
    guard = threading.Lock()

    def work(name: str, seconds: float) -> Callable[[dt.datetime], str]:
        def run(now: dt.datetime) -> str:
            nonlocal most
            with guard:
                running.append(name)
                most = max(most, len(running))
                runs[name] += 1
            time.sleep(seconds)
            with guard:
                running.remove(name)
            return f"{name} done"

        return run

    runner = JobRunner({"slow": work("slow", 0.5), "quick": work("quick", 0.05)})
    every = {"slow": IntervalTrigger(seconds=0.1), "quick": IntervalTrigger(seconds=0.1)}
    caplog.set_level(logging.INFO)
    began = time.monotonic()
    scheduler = started(runner, every)
    skipped = "maximum number of running instances reached"
    deadline = began + 20  # wait for what the test needs, not a fixed time: CI may be slow
    while min(runs.values()) < 2 or skipped not in caplog.text:
        assert time.monotonic() < deadline, (
            f"after 20 s: runs {runs}, skipped: {skipped in caplog.text}"
        )
        time.sleep(0.02)
    stop_scheduler(runner, scheduler)
    elapsed = time.monotonic() - began
    assert most == 1  # one job at a time, never one twice
    # firings every 0.1 s, but the slow one ran at most once per half second
    assert runs["slow"] * 0.5 <= elapsed


def test_a_failed_run_is_logged_and_retried_until_it_succeeds(
    started: Start, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[dt.datetime] = []
    now = dt.datetime(2026, 11, 2, 3, tzinfo=UTC)

    def flaky(at: dt.datetime) -> str:
        calls.append(at)
        if len(calls) < 3:
            raise LakeBusyError(f"busy #{len(calls)}")
        return "flaky done"

    runner = JobRunner({"flaky": flaky}, retries=2, retry_delay=0.2, clock=lambda: now)
    caplog.set_level(logging.INFO, logger=LOGGER)
    began = time.monotonic()
    started(runner, {"flaky": DateTrigger()})
    logged(caplog, ": flaky done")
    assert time.monotonic() - began >= 0.4  # two retries, 0.2 s apart
    assert calls == [now, now, now]  # the clock passed in is the jobs' "now"
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert messages[0] == "flaky: started"
    assert "flaky: failed after" in messages[1]
    assert "LakeBusyError: busy #1; retry 1 of 2 in 0.2 s" in messages[1]
    assert "flaky: started (retry 1 of 2)" in messages
    assert "flaky: started (retry 2 of 2)" in messages
    assert any(m.startswith("flaky: done in ") and m.endswith(": flaky done") for m in messages)
    assert all(r.exc_info is None for r in caplog.records)  # our own errors: no traceback


def test_retries_end_and_permanent_errors_are_not_retried(
    started: Start, caplog: pytest.LogCaptureFixture
) -> None:
    calls = {"broken": 0, "bad": 0}

    def broken(now: dt.datetime) -> str:
        calls["broken"] += 1
        raise OSError("disk gone")

    def bad(now: dt.datetime) -> str:
        calls["bad"] += 1
        raise PermanentError("tariffs/x.toml: bad rate")

    runner = JobRunner({"broken": broken, "bad": bad}, retries=1, retry_delay=0.1)
    caplog.set_level(logging.INFO, logger=LOGGER)
    now = {"broken": DateTrigger(), "bad": DateTrigger()}
    scheduler = started(runner, now)
    logged(caplog, "waiting for the next regular run")
    logged(caplog, "not retried")
    time.sleep(0.3)  # a further retry would have run by now
    stop_scheduler(runner, scheduler)
    assert calls == {"broken": 2, "bad": 1}
    assert "OSError: disk gone; after 2 attempts; waiting for the next regular run" in caplog.text
    assert "PermanentError: tariffs/x.toml: bad rate; not retried" in caplog.text
    traced = [r for r in caplog.records if r.exc_info is not None]
    assert traced and all("OSError" in r.getMessage() for r in traced)  # a surprise: traceback


def test_a_regular_run_that_succeeds_cancels_the_pending_retry(
    started: Start, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes = iter([LakeBusyError("busy"), None])

    def once_busy(now: dt.datetime) -> str:
        if (error := next(outcomes)) is not None:
            raise error
        return "ok"

    runner = JobRunner({"x": once_busy}, retries=3, retry_delay=60)
    caplog.set_level(logging.INFO, logger=LOGGER)
    scheduler = started(runner, {"x": DateTrigger()})
    deadline = time.monotonic() + 10
    while scheduler.get_job("x:retry") is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert runner.run("x")  # the next regular firing
    assert scheduler.get_job("x:retry") is None
    assert "x: pending retry cancelled (the job succeeded)" in caplog.text


def test_a_run_after_stop_does_not_start(caplog: pytest.LogCaptureFixture) -> None:
    runner = JobRunner({"x": lambda now: "ran"})
    runner.stopping.set()
    caplog.set_level(logging.INFO, logger=LOGGER)
    assert runner.run("x") is False
    assert "x: not started: stopping" in caplog.text


# --- the jobs on a simulated lake -------------------------------------------------------------


def month_start(now: dt.datetime) -> dt.datetime:
    """Local midnight of the first day of the month before ``now``'s (site zone), in UTC."""
    first = dt.date.fromisoformat(previous_period(now, ZONE) + "-01")
    return dt.datetime.combine(first, dt.time(), tzinfo=dt.timezone(dt.timedelta(hours=8)))


def simulated_lake(root: Path, start: dt.datetime) -> Path:
    lake = init_lake(root)
    spec = FleetSpec(meters=4, start=start.astimezone(UTC), days=3, seed=3)
    write_table(lake, READINGS, simulate_readings(spec))
    write_table(lake, METERS, simulate_meter_records(spec, start - dt.timedelta(days=30)))
    return lake


def test_bill_and_vee_jobs_as_of_the_clock(tmp_path: Path) -> None:
    now = dt.datetime(2026, 11, 2, 3, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    lake = simulated_lake(tmp_path / "lake", month_start(now))
    settings = Settings()
    vee = job_work("vee", lake, settings)(now)
    assert vee.startswith("VEE incremental 2026-10-01 00:00..")
    assert "interval versions of 4 of 4 meters" in vee
    assert job_work("vee", lake, settings)(now).endswith("nothing changed, nothing written")
    bill = job_work("bill", lake, settings)(now)
    assert bill.startswith("bills 2026-10 (bill-20261101T190000Z-")  # the month before, local
    assert "4 meters billed, 4 new" in bill
    again = job_work("bill", lake, settings)(now + dt.timedelta(hours=1))
    assert "0 new, 0 corrected, 4 unchanged" in again  # a re-run is idempotent
    assert (lake / "catalog.duckdb").is_file()  # refreshed after writing


def test_run_once_vee_then_bill_from_the_command_line(tmp_path: Path) -> None:
    now = dt.datetime.now(UTC)  # read once: the lake and the expected period agree on the month
    period = previous_period(now, ZONE)
    lake = simulated_lake(tmp_path / "lake", month_start(now))
    vee = run_cli("run", "--lake", lake, "--once", "vee", cwd=tmp_path)
    assert vee.returncode == 0, vee.stderr
    assert "interval versions of 4 of 4 meters" in vee.stdout
    assert "meterlake.schedule: vee: started" in vee.stderr
    assert "meterlake.schedule: vee: done in " in vee.stderr
    assert scan(lake, INTERVALS).select(pl.len()).collect().item() > 0

    bill = run_cli("run", "--lake", lake, "--once", "bill", cwd=tmp_path)
    assert bill.returncode == 0, bill.stderr
    assert f"bills {period} (" in bill.stdout
    assert "4 meters billed, 4 new" in bill.stdout
    bills = scan(lake, BILLS).select("period").unique().collect()
    assert bills["period"].to_list() == [period]

    alerts = run_cli("run", "--lake", lake, "--once", "alerts", cwd=tmp_path)
    assert alerts.returncode == 2
    assert "the alerts job needs a rules file" in alerts.stderr
    unknown = run_cli("run", "--lake", lake, "--once", "backup", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "'backup' is not one of" in unknown.stderr


# --- a clean stop -----------------------------------------------------------------------------

RUN = """
import faulthandler, signal, sys
from meterlake.cli import main
faulthandler.register(signal.SIGUSR1)  # the test's post-mortem of a process that hangs
sys.argv[0] = "meterlake"
main()
"""


def read_lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def test_sigterm_lets_the_running_job_finish_and_exits_0(
    tmp_path: Path, python_popen: Callable[..., Any]
) -> None:
    simulated_lake(tmp_path / "lake", dt.datetime(2026, 10, 1, tzinfo=UTC))
    config = tmp_path / "meterlake.toml"
    config.write_text(
        '[lake]\npath = "lake"\n'
        '[schedule.vee]\nevery = "0.5s"\n'
        '[schedule.compact]\nevery = "0.5s"\n'
        "[schedule.analyze]\nenabled = false\n"
    )
    proc = python_popen(RUN, "run", "--config", str(config))
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=read_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 30
    while not any("vee: started" in line for line in seen):
        assert time.monotonic() < deadline, "".join(seen)
        try:
            seen.append(lines.get(timeout=0.5))
        except queue.Empty:
            assert proc.poll() is None, "".join(seen)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)  # every thread's stack, to stderr
        time.sleep(1)
        proc.kill()
    stopped_after = time.monotonic() - signalled
    out = proc.stdout.read()
    reader.join(5)
    while not lines.empty():
        seen.append(lines.get())
    log = "".join(seen)
    assert proc.returncode == 0, log
    assert stopped_after < 10, log
    assert "every 0.5s" in out  # the schedule, printed at the start
    assert "stopped: no job running" in out
    stopping = log.index("stopping: no new runs")
    assert log.index("scheduler stopped cleanly") > stopping
    # the vee run under way when the signal came finished, and nothing started after it
    assert log.count("vee: started") == log.count("vee: done in ")
    assert ": started" not in log[stopping:]
    assert "Traceback" not in log
