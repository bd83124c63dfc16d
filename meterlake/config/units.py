"""Units: every quantity is stored in the unit its canonical name ends in.

Collectors normalise at the edge, once: a device that reports energy in Wh or power in kW is
converted here, and nowhere else, so a raw value is never rescaled twice.
"""

from __future__ import annotations

from typing import Final

from meterlake.config.errors import PermanentError

# factor that turns a value in the key unit into the canonical unit of its dimension
_TO_CANONICAL: Final[dict[str, tuple[str, float]]] = {
    "kWh": ("kWh", 1.0),
    "Wh": ("kWh", 1e-3),
    "MWh": ("kWh", 1e3),
    "kvarh": ("kvarh", 1.0),
    "varh": ("kvarh", 1e-3),
    "W": ("W", 1.0),
    "kW": ("W", 1e3),
    "MW": ("W", 1e6),
    "var": ("var", 1.0),
    "kvar": ("var", 1e3),
    "VA": ("VA", 1.0),
    "kVA": ("VA", 1e3),
    "V": ("V", 1.0),
    "kV": ("V", 1e3),
    "A": ("A", 1.0),
    "mA": ("A", 1e-3),
    "Hz": ("Hz", 1.0),
    "1": ("1", 1.0),
    "%": ("1", 1e-2),
    "currency": ("currency", 1.0),
}
UNITS: Final = tuple(_TO_CANONICAL)


def conversion_factor(unit: str, canonical: str) -> float:
    """The factor that converts a value in ``unit`` to ``canonical`` (the quantity's unit).

    >>> conversion_factor("Wh", "kWh"), conversion_factor("kW", "W")
    (0.001, 1000.0)

    Raises
    ------
    PermanentError
        ``unit`` is unknown or measures another dimension than ``canonical``.
    """
    if unit not in _TO_CANONICAL:
        raise PermanentError(f"unknown unit {unit!r}; known units: {', '.join(UNITS)}")
    base, factor = _TO_CANONICAL[unit]
    if base != canonical:
        raise PermanentError(f"unit {unit!r} cannot be converted to {canonical!r}")
    return factor
