"""Whole-month steps of dates and ``YYYY-MM`` labels (bill periods, tier windows, reports)."""

from __future__ import annotations

import datetime as dt


def add_months(day: dt.date, months: int) -> dt.date:
    """``day`` moved by ``months`` whole months, its day of the month kept (callers pass days
    that every month has: the 1st, a billing day up to 28).

    >>> add_months(dt.date(2026, 11, 5), 3), add_months(dt.date(2026, 1, 1), -1)
    (datetime.date(2027, 2, 5), datetime.date(2025, 12, 1))
    """
    index = day.year * 12 + day.month - 1 + months
    return day.replace(year=index // 12, month=index % 12 + 1)


def add_months_to_label(label: str, months: int) -> str:
    """The ``YYYY-MM`` label ``months`` months after (before, if negative) ``label``.

    >>> add_months_to_label("2026-01", -1), add_months_to_label("2026-10", 12)
    ('2025-12', '2027-10')
    """
    return f"{add_months(dt.date.fromisoformat(f'{label}-01'), months):%Y-%m}"
