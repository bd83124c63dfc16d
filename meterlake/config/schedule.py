"""Settings of ``meterlake run``: the central jobs on a schedule (``[schedule]``).

Each job has a table with ``enabled`` and one timing: ``every``, an interval aligned to the wall
clock (``"15m"`` runs at :00, :15, :30 and :45; ``"1h"`` on the hour), or ``cron``, a crontab
``minute hour day month weekday`` in the site's time zone (``[site] timezone``). A table that
gives neither keeps its job's default timing. The defaults, written out::

    [schedule]
    retries = 2               # a failed run is retried this often ...
    retry_delay = "5m"        # ... this long after it failed

    [schedule.compact]
    every = "1h"

    [schedule.vee]            # incremental: only the days new readings reached
    every = "15m"

    [schedule.alerts]         # off until it has a rules file
    every = "5m"
    rules = "alerts.toml"     # relative to the config file

    [schedule.analyze]        # nightly at 01:30, the latest 35 local days
    cron = "30 1 * * *"

    [schedule.bill]           # on the 2nd of the month at 03:00: the month before
    cron = "0 3 2 * *"

Weekdays in ``cron`` are written by name (``mon-fri``, ``sun``): apscheduler 3 counts weekday 0 as
Monday where crontab counts it as Sunday, so a number would silently mean another day.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated, Any, Final, Literal, get_args

from apscheduler.triggers.cron import CronTrigger
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from meterlake.config.collect import Interval

JobName = Literal["compact", "vee", "alerts", "analyze", "bill"]
"""The jobs ``meterlake run`` schedules."""
JOB_NAMES: Final[tuple[JobName, ...]] = get_args(JobName)
_DIGIT: Final = re.compile(r"\d")


def check_crontab(value: str) -> str:
    """A crontab ``minute hour day month weekday`` as apscheduler 3 reads it, fields joined by
    one space.

    >>> check_crontab("0  3 2 * *")
    '0 3 2 * *'

    Raises
    ------
    ValueError
        Not five fields, a field apscheduler refuses, or a weekday given as a number.
    """
    fields = value.split()
    if len(fields) != 5:
        raise ValueError(
            "must be a crontab of five fields 'minute hour day month weekday', e.g. '30 1 * * *'"
        )
    if _DIGIT.search(fields[4]):
        raise ValueError(
            "write the weekday by name, e.g. 'sun' or 'mon-fri': apscheduler 3 counts weekday 0 "
            "as Monday where crontab counts it as Sunday"
        )
    try:
        CronTrigger.from_crontab(value, timezone=dt.UTC)
    except ValueError as exc:
        raise ValueError(f"is not a valid crontab ({exc}); e.g. '30 1 * * *'") from None
    return " ".join(fields)


Crontab = Annotated[str, AfterValidator(check_crontab)]
"""A crontab ``minute hour day month weekday`` (weekdays by name)."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JobSchedule(_Section):
    """When one job runs (``[schedule.<job>]``): ``every`` or ``cron``, one of them."""

    enabled: bool = True
    """Whether ``meterlake run`` schedules the job (``--once`` runs it either way)."""
    every: Interval | None = None
    """Run every this long [s], aligned to the wall clock (``"15m"``: at :00, :15, ...)."""
    cron: Crontab | None = None
    """Run at the times of this crontab, in the site's time zone."""

    @model_validator(mode="after")
    def _one_timing(self) -> JobSchedule:
        if (self.every is None) == (self.cron is None):
            raise ValueError(
                "give either every (an interval such as '15m') or cron (a crontab such as "
                "'30 1 * * *'), not both"
            )
        return self

    @property
    def timing(self) -> str:
        """The timing in words: ``every 15m`` or ``cron 30 1 * * *``.

        >>> JobSchedule(every=5400).timing, JobSchedule(cron="0 3 2 * *").timing
        ('every 90m', 'cron 0 3 2 * *')
        """
        if self.every is None:
            return f"cron {self.cron}"
        for unit, seconds in (("h", 3600), ("m", 60)):
            if self.every >= seconds and self.every % seconds == 0:
                return f"every {self.every / seconds:g}{unit}"
        return f"every {self.every:g}s"


class AlertsSchedule(JobSchedule):
    """When the alerts job runs, and the rules it evaluates."""

    rules: Path | None = None
    """The alert rules file (docs/alerts.md); the job is off without it."""


class ScheduleSettings(_Section):
    """The central jobs of ``meterlake run`` (see the module docstring)."""

    compact: JobSchedule = JobSchedule(every=3600)
    """Merge small files and remove duplicates (``meterlake compact``)."""
    vee: JobSchedule = JobSchedule(every=900)
    """Incremental VEE: the days new readings or meter events reached (``meterlake vee``)."""
    alerts: AlertsSchedule = AlertsSchedule(every=300)
    """Evaluate the alert rules and deliver (``meterlake alerts``)."""
    analyze: JobSchedule = JobSchedule(cron="30 1 * * *")
    """Analytics of the latest 35 local days (``meterlake analyze``)."""
    bill: JobSchedule = JobSchedule(cron="0 3 2 * *")
    """Bills of the month before (``meterlake bill --period``)."""
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of a failed run (not of one that failed permanently, e.g. a bad tariff file)."""
    retry_delay: Interval = 300.0
    """Wait before each retry [s]."""

    @model_validator(mode="before")
    @classmethod
    def _default_timing(cls, data: Any) -> Any:
        """A job table with neither ``every`` nor ``cron`` keeps the job's default timing."""
        if not isinstance(data, dict):
            return data
        filled = dict(data)
        for name in JOB_NAMES:
            table = data.get(name)
            if isinstance(table, dict) and "every" not in table and "cron" not in table:
                default = cls.model_fields[name].default
                timing = {"every": default.every} if default.every else {"cron": default.cron}
                filled[name] = {**timing, **table}
        return filled

    def job(self, name: JobName) -> JobSchedule:
        """The schedule of job ``name``."""
        schedule: JobSchedule = getattr(self, name)
        return schedule

    def active(self, name: JobName) -> bool:
        """Whether ``meterlake run`` schedules job ``name`` (alerts: only with a rules file)."""
        if name == "alerts":
            return self.alerts.enabled and self.alerts.rules is not None
        return self.job(name).enabled
