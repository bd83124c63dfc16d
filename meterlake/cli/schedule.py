"""``meterlake run``: the central jobs of :mod:`meterlake.cli.jobs` on an apscheduler schedule.

The jobs and their timings come from ``[schedule]`` (:mod:`meterlake.config.schedule`).

One job at a time
    Every job runs on one worker thread, one after another, in the order they fire. Compaction
    replaces a partition's files (it deletes the inputs once the outputs are published), so a
    VEE, analysis, alerts or bill run reading that partition at the same moment could find a
    file gone; and a gateway box has two cores, which one job already keeps busy. The jobs are
    short against their intervals, so the price is small: a job that fires while another runs
    waits for it (late, never dropped: no misfire grace limit).
Never twice at once
    Each job has ``max_instances=1`` and ``coalesce=True``: a firing while the same job is still
    waiting or running is skipped (apscheduler logs it), and firings missed while the process
    was busy or suspended run once. A retry is a separate one-off job, so the runner also keeps
    a lock per job name: a run that finds its job busy is skipped.
Failures
    A run that raises is logged with the exception and, unless the error is a
    :class:`~meterlake.config.errors.PermanentError` (a bad tariff or rules file: retrying does
    not help), retried up to ``retries`` times, ``retry_delay`` apart (apscheduler 3 does not
    retry by itself: each retry is a one-off job ``<name>:retry``). A regular run that succeeds
    cancels a pending retry. After the last retry the job waits for its next regular run.
Stopping
    :func:`run_until_stopped` returns once its ``stop`` event is set (the command sets it on
    SIGTERM or SIGINT): no job starts after that (firings already queued are skipped), the
    running one finishes, then the scheduler is shut down.

Each run logs its start, its duration and a one-line result. The ``clock`` given to the
runner is the jobs' wall clock (run ids, the bill period, the alerts' evaluation time); when
jobs fire is apscheduler's business and follows the system clock.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from meterlake.alerts.rules import load_alert_rules
from meterlake.cli.jobs import (
    alerts_job,
    alerts_summary,
    analyze_job,
    bill_job,
    bill_summary,
    compact_job,
    job_tariffs,
    previous_period,
    refresh,
    vee_job,
    vee_summary,
)
from meterlake.config.errors import MeterlakeError, PermanentError
from meterlake.config.schedule import JOB_NAMES, JobName, JobSchedule, ScheduleSettings
from meterlake.config.settings import Settings
from meterlake.ingest.modbus import aligned_trigger

log = logging.getLogger("meterlake.schedule")

Clock = Callable[[], dt.datetime]
Work = Callable[[dt.datetime], str]
"""A job as the runner calls it: does the work as of ``now`` and returns a one-line result."""
RETRY_SUFFIX: Final = ":retry"

JOB_OPTIONS: Final[Mapping[str, Any]] = {
    "max_instances": 1,
    "coalesce": True,
    "misfire_grace_time": None,
}
"""Options of every job: never two at once, missed firings run once, late is better than never."""


def system_clock() -> dt.datetime:
    """The system's wall clock, in UTC."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class _Done:
    summary: str
    wrote: bool


def job_work(name: JobName, root: Path, settings: Settings, clock: Clock = system_clock) -> Work:
    """Job ``name`` on the lake at ``root``: the composition of :mod:`meterlake.cli.jobs` the
    command of the same name runs, followed by a catalogue refresh when it wrote something.

    Tariffs and alert rules are read at every run, so a changed file takes effect without a
    restart. ``clock`` stamps the alerts' deliveries.

    Raises
    ------
    PermanentError
        ``alerts`` without ``[schedule.alerts] rules``.
    """
    zone = settings.site.timezone
    rules = settings.schedule.alerts.rules
    if name == "alerts" and rules is None:
        raise PermanentError(
            "the alerts job needs a rules file: set rules = 'alerts.toml' in [schedule.alerts]"
        )

    def run(now: dt.datetime) -> _Done:
        if name == "compact":
            compacted = compact_job(root, settings)
            return _Done(compacted.summary(), bool(compacted.results))
        if name == "vee":
            vee = vee_job(root, settings, now)
            return _Done(vee_summary(vee, zone), vee.written.height > 0)
        if name == "alerts":
            assert rules is not None
            alerts = alerts_job(root, load_alert_rules(rules), now, clock)
            delivered = any(alerts.delivered.values())
            return _Done(alerts_summary(alerts), alerts.events.height > 0 or delivered)
        if name == "analyze":
            analysis = analyze_job(root, settings, job_tariffs(settings), now)
            return _Done(analysis.summary(), True)
        period = previous_period(now, zone)
        bills = bill_job(root, settings, job_tariffs(settings), period, now)
        return _Done(bill_summary(bills), bills.bills.height > 0)

    def work(now: dt.datetime) -> str:
        done = run(now)
        if done.wrote and (why := refresh(root)) is not None:
            log.warning("%s: catalogue not refreshed: %s", name, why)
        return done.summary

    return work


def check_jobs(settings: Settings) -> None:
    """Read what the scheduled jobs will read, so a bad file stops ``meterlake run`` at once
    rather than failing every run: the tariffs (analyze, bill) and the alert rules.

    Raises
    ------
    PermanentError
        A tariff file or the alert rules file is wrong.
    """
    schedule = settings.schedule
    if schedule.active("analyze") or schedule.active("bill"):
        job_tariffs(settings)
    if schedule.active("alerts"):
        assert schedule.alerts.rules is not None
        load_alert_rules(schedule.alerts.rules)


def trigger(job: JobSchedule, timezone: str) -> Any:
    """The apscheduler trigger of a job: an interval aligned to the epoch (``15m`` fires at
    :00, :15, :30, :45) or a crontab in ``timezone``."""
    if job.every is not None:
        return aligned_trigger(job.every)
    return CronTrigger.from_crontab(job.cron, timezone=zoneinfo.ZoneInfo(timezone))


def schedule_rows(settings: Settings, now: dt.datetime) -> list[tuple[str, str, str]]:
    """Every job with its timing and next run after ``now`` (local time of the site), or why
    it is off."""
    zone = zoneinfo.ZoneInfo(settings.site.timezone)
    rows: list[tuple[str, str, str]] = []
    for name in JOB_NAMES:
        job = settings.schedule.job(name)
        if not settings.schedule.active(name):
            why = "off (no rules in [schedule.alerts])" if job.enabled else "off (enabled = false)"
            rows.append((name, job.timing, why))
            continue
        fire = trigger(job, settings.site.timezone).get_next_fire_time(None, now)
        rows.append((name, job.timing, f"{fire.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}"))
    return rows


class JobRunner:
    """Runs jobs by name: logs, never two runs of one job at once, retries after failures.

    Parameters
    ----------
    works
        The jobs by name.
    retries, retry_delay
        Retries of a failed run and the wait before each [s].
    clock
        The jobs' wall clock: each run gets ``clock()`` as its ``now``.
    """

    def __init__(
        self,
        works: Mapping[str, Work],
        *,
        retries: int = 0,
        retry_delay: float = 300.0,
        clock: Clock = system_clock,
    ) -> None:
        self.works = dict(works)
        self.retries = retries
        self.retry_delay = retry_delay
        self.clock = clock
        self.scheduler: Any = None
        """The scheduler retries are added to (set by :func:`build_scheduler`)."""
        self.stopping = threading.Event()
        """Set by :meth:`stop`: no run starts any more."""
        self._locks = {name: threading.Lock() for name in self.works}
        self._idle = threading.Condition()
        self._active = 0

    def run(self, name: str, attempt: int = 0) -> bool:
        """Run job ``name`` now (``attempt`` 0: a regular run, else the retry's number);
        never raises. Returns whether it ran and succeeded."""
        with self._idle:
            if self.stopping.is_set():
                log.info("%s: not started: stopping", name)
                return False
            self._active += 1
        try:
            if not self._locks[name].acquire(blocking=False):
                log.warning("%s: still running; this run is skipped", name)
                return False
            try:
                return self._attempt(name, attempt)
            finally:
                self._locks[name].release()
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def stop(self) -> None:
        """Let no run start and wait until the running ones have finished."""
        with self._idle:
            self.stopping.set()
            self._idle.wait_for(lambda: self._active == 0)

    def run_once(self, name: str) -> str:
        """Run job ``name`` now, logged like a scheduled run, without retries; returns its
        result line and raises what it raised."""

        def failed(exc: Exception, seconds: float) -> None:
            log.error("%s: failed after %.1f s: %s", name, seconds, _what(exc))

        return self._timed(name, 0, failed)

    def _attempt(self, name: str, attempt: int) -> bool:
        try:
            self._timed(name, attempt, lambda exc, s: self._failed(name, attempt, exc, s))
        except Exception:  # every failure is logged and maybe retried, never lost
            return False
        self._cancel_retry(name)
        return True

    def _timed(self, name: str, attempt: int, failed: Callable[[Exception, float], None]) -> str:
        """Run job ``name`` as of ``clock()``: the one place a run is logged and timed. A
        failure is handed to ``failed`` with the run's duration [s], then raised."""
        retry = f" (retry {attempt} of {self.retries})" if attempt else ""
        log.info("%s: started%s", name, retry)
        began = time.monotonic()
        try:
            summary = self.works[name](self.clock())
        except Exception as exc:
            failed(exc, time.monotonic() - began)
            raise
        log.info("%s: done in %.1f s: %s", name, time.monotonic() - began, summary)
        return summary

    def _failed(self, name: str, attempt: int, exc: Exception, seconds: float) -> None:
        # our own errors say what went wrong; anything else gets its traceback
        trace = None if isinstance(exc, MeterlakeError) else exc
        failed = f"{name}: failed after {seconds:.1f} s: {_what(exc)}"
        if isinstance(exc, PermanentError):
            log.error("%s; not retried (retrying will not help)", failed, exc_info=trace)
        elif attempt >= self.retries:
            tries = f"after {attempt + 1} attempts; " if self.retries else ""
            log.error("%s; %swaiting for the next regular run", failed, tries, exc_info=trace)
        elif self.scheduler is None or self.stopping.is_set():
            log.error("%s; not retried (the scheduler is stopping)", failed, exc_info=trace)
        else:
            at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.retry_delay)
            log.error(
                "%s; retry %d of %d in %g s",
                failed,
                attempt + 1,
                self.retries,
                self.retry_delay,
                exc_info=trace,
            )
            self.scheduler.add_job(
                self.run,
                DateTrigger(run_date=at),
                args=(name, attempt + 1),
                id=name + RETRY_SUFFIX,
                name=f"{name} (retry {attempt + 1})",
                replace_existing=True,
                **JOB_OPTIONS,
            )

    def _cancel_retry(self, name: str) -> None:
        if self.scheduler is None:
            return
        try:
            self.scheduler.remove_job(name + RETRY_SUFFIX)
        except JobLookupError:
            return
        log.info("%s: pending retry cancelled (the job succeeded)", name)


def _what(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def build_scheduler(
    runner: JobRunner, triggers: Mapping[str, Any], timezone: str
) -> BackgroundScheduler:
    """A scheduler (not started) that runs ``runner``'s jobs at ``triggers``, one at a time
    on a single worker thread."""
    scheduler = BackgroundScheduler(
        executors={"default": ThreadPoolExecutor(max_workers=1)},
        timezone=zoneinfo.ZoneInfo(timezone),
    )
    for name, when in triggers.items():
        scheduler.add_job(runner.run, when, args=(name,), id=name, name=name, **JOB_OPTIONS)
    runner.scheduler = scheduler
    return scheduler


def scheduled(
    root: Path, settings: Settings, clock: Clock = system_clock
) -> tuple[JobRunner, BackgroundScheduler]:
    """The runner and scheduler of the jobs ``[schedule]`` turns on."""
    schedule: ScheduleSettings = settings.schedule
    names = [n for n in JOB_NAMES if schedule.active(n)]
    runner = JobRunner(
        {n: job_work(n, root, settings, clock) for n in names},
        retries=schedule.retries,
        retry_delay=schedule.retry_delay,
        clock=clock,
    )
    zone = settings.site.timezone
    triggers: dict[str, Any] = {n: trigger(schedule.job(n), zone) for n in names}
    return runner, build_scheduler(runner, triggers, zone)


def run_until_stopped(
    runner: JobRunner, scheduler: BackgroundScheduler, stop: threading.Event
) -> None:
    """Start ``scheduler`` and return when ``stop`` is set and the running job (if any) has
    finished; no job starts after ``stop``."""
    scheduler.start()
    log.info("scheduler started: %s", ", ".join(j.id for j in scheduler.get_jobs()) or "no jobs")
    try:
        # wake up now and then: a signal the kernel hands to another thread (polars has many)
        # runs its Python handler only when the main thread runs again, and a wait without a
        # timeout never does
        while not stop.wait(0.5):
            pass
    finally:
        log.info("stopping: no new runs; waiting for a running job to finish")
        stop_scheduler(runner, scheduler)
        log.info("scheduler stopped cleanly")


def stop_scheduler(runner: JobRunner, scheduler: BackgroundScheduler) -> None:
    """Stop ``runner`` (waiting for its running job), then shut ``scheduler`` down.

    In this order because apscheduler 3's ``shutdown(wait=True)`` holds the job store lock while
    it waits for the running job, and a job that ends adds or removes its retry under that lock:
    shutting down first would deadlock.
    """
    runner.stop()
    if scheduler.running:
        scheduler.shutdown(wait=True)
