"""MQTT payload decoders, one per format, registered by name (sans-I/O: bytes in, readings out).

Every decoder has the same signature (:class:`Decoder`)::

    decode(payload: bytes, *, topic: str, received_at_us: int, options: FormatOptions)
        -> list[Reading]

and either returns readings -- canonical quantities, values in canonical units (normalised here,
once), NaN/inf kept and flagged ``invalid_value``, safe meter ids, ``source`` = the topic -- or
raises :class:`PayloadError` with a reason a person can act on; the collector quarantines the
payload verbatim with that reason. :class:`NoReadingsError`, a subclass, marks a well-formed
message without metering fields (a Shelly ``NotifyEvent``, a Zigbee button).

Device times are used when present and within the clock window (``max_clock_ahead_s``,
``max_clock_behind_s``); otherwise a reading gets the receipt time, flagged ``clock_invalid``.

========================  ========================================  ======================
format                    payload                                   default meter id
========================  ========================================  ======================
``canonical``             meterlake JSON, one object or a batch     in the payload
``tasmota``               ``tele/<device>/SENSOR`` ENERGY and SML   ``{topic[1]}``
``shelly-gen2``           Pro 3EM / Pro EM notifications, status    ``{topic[0]}``
``zigbee2mqtt``           ``zigbee2mqtt/<name>`` device state       ``{topic[1]}``
``mapping``               any JSON, by a configured field mapping   (required)
========================  ========================================  ======================
"""

from __future__ import annotations

from typing import Final

from meterlake.config.errors import ConfigError
from meterlake.ingest.payloads._core import (
    Decoder,
    FormatOptions,
    MeterIdRule,
    NoReadingsError,
    PayloadError,
)
from meterlake.ingest.payloads.canonical import decode_canonical
from meterlake.ingest.payloads.mapping import decode_mapping
from meterlake.ingest.payloads.shelly import decode_shelly
from meterlake.ingest.payloads.tasmota import decode_tasmota
from meterlake.ingest.payloads.zigbee2mqtt import decode_zigbee2mqtt
from meterlake.ingest.readings import Reading

__all__ = [
    "DECODERS",
    "Decoder",
    "FormatOptions",
    "MeterIdRule",
    "NoReadingsError",
    "PayloadError",
    "decode_canonical",
    "decode_mapping",
    "decode_payload",
    "decode_shelly",
    "decode_tasmota",
    "decode_zigbee2mqtt",
]

DECODERS: Final[dict[str, Decoder]] = {
    "canonical": decode_canonical,
    "tasmota": decode_tasmota,
    "shelly-gen2": decode_shelly,
    "zigbee2mqtt": decode_zigbee2mqtt,
    "mapping": decode_mapping,
}
"""The decoder of each payload format, by the name a subscription's ``format`` uses (the names
of :data:`meterlake.config.payload_formats.PAYLOAD_FORMATS`)."""


def decode_payload(
    fmt: str, payload: bytes, *, topic: str, received_at_us: int, options: FormatOptions
) -> list[Reading]:
    """Decode ``payload`` with the decoder registered as ``fmt``.

    >>> rows = decode_payload("zigbee2mqtt", b'{"power": 5}', topic="zigbee2mqtt/plug",
    ...                       received_at_us=0, options=FormatOptions())
    >>> rows[0].quantity, rows[0].value
    ('power_w', 5.0)

    Raises
    ------
    PayloadError
        The payload cannot be decoded.
    ConfigError
        ``fmt`` is not a registered format (the settings model prevents it).
    """
    decoder = DECODERS.get(fmt)
    if decoder is None:
        raise ConfigError(f"unknown payload format {fmt!r}: use one of {', '.join(DECODERS)}")
    return decoder(payload, topic=topic, received_at_us=received_at_us, options=options)
