"""IANA time zone names, checked once wherever a zone enters: settings, files, meter tables."""

from __future__ import annotations

import zoneinfo

from meterlake.config.errors import ConfigError


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone.

    >>> check_timezone("Asia/Shanghai")
    'Asia/Shanghai'

    Raises
    ------
    ConfigError
        Not a zone this machine knows (the message names it and gives an example).
    """
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise ConfigError(f"{name!r} is not an IANA time zone such as Asia/Shanghai") from exc
    return name


def is_timezone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone (:func:`check_timezone` without the error)."""
    try:
        check_timezone(name)
    except ConfigError:
        return False
    return True
