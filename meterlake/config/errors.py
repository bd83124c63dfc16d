"""The exceptions of meterlake, all under one root.

::

    MeterlakeError
    ├── PermanentError            retrying will not help: fix the input
    │   ├── ConfigError           a settings file or value is wrong
    │   ├── UnsafeIdentifierError an id or partition value that must not touch a path
    │   ├── SchemaError           a frame does not match a table's column contract
    │   ├── InputFileError        a file to import cannot be read at all
    │   └── PayloadError          an MQTT payload cannot be decoded (ingest.payloads; quarantined)
    │       └── NoReadingsError   a well-formed message without metering fields
    └── RetryableError            the same call may succeed later
        ├── LakeBusyError         another process holds a lock the call needs
        ├── SpoolFullError        the spool's disk is full (ingest.spool): stop acknowledging
        ├── UpstreamUnavailableError  the central broker is away (ingest.forward)
        └── ModbusError           a device or bus failed (ingest.modbus): timeout, exception
                                  response, lost connection, cannot connect

Errors raised by a stage are defined in that stage's module and derive from these roots.

Messages say what was wrong and how to fix it; the CLI prints them without a traceback.
"""

from __future__ import annotations


class MeterlakeError(Exception):
    """Root of every error meterlake raises on purpose."""


class PermanentError(MeterlakeError):
    """An error that retrying will not fix: the input or the settings must change."""


class RetryableError(MeterlakeError):
    """An error that may go away by itself: a busy lock, a broker or device that is down."""


class ConfigError(PermanentError):
    """A settings file or one of its values is wrong."""


class UnsafeIdentifierError(PermanentError, ValueError):
    """A meter id or partition value that could escape or corrupt a lake path."""


class SchemaError(PermanentError):
    """A frame does not match the column contract of the table it is written to."""


class InputFileError(PermanentError):
    """A file given for import cannot be read at all (not a single row could be taken)."""


class LakeBusyError(RetryableError):
    """Another process holds a lock this call needs (e.g. the DuckDB catalogue is open)."""
