"""Where things live in a lake, and the small file-system primitives every writer shares.

::

    <lake>/.meterlake                  marker written by ``meterlake init`` (format version)
    <lake>/<table>/<key>=<value>/*.parquet
    <lake>/.tmp/                       files being written; renamed into place when complete
    <lake>/.compaction/                journals of compactions in progress (see ``compaction``)
    <lake>/catalog.duckdb              the DuckDB catalogue (views over the tables)

Only ``*.parquet`` files directly inside a valid partition directory are data; anything else
(temporary files, journals) is invisible to readers.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import socket
from pathlib import Path
from typing import Final

from meterlake.config.durable import fsync_dir, fsync_file
from meterlake.config.errors import PermanentError
from meterlake.config.ids import validate_partition_value
from meterlake.config.schemas import TABLES, TableSpec

LAKE_MARKER: Final = ".meterlake"
LAKE_FORMAT: Final = "1"
TMP_DIR: Final = ".tmp"
CATALOG_FILE: Final = "catalog.duckdb"
DATA_SUFFIX: Final = ".parquet"

_sequence = itertools.count()
_HOST: Final = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def init_lake(root: Path) -> Path:
    """Create an empty lake at ``root`` (idempotent) and return its path."""
    root.mkdir(parents=True, exist_ok=True)
    for table in TABLES.values():
        table_dir(root, table).mkdir(exist_ok=True)
    (root / TMP_DIR).mkdir(exist_ok=True)
    marker = root / LAKE_MARKER
    if not marker.exists():
        write_bytes_atomic(marker, f"meterlake lake format {LAKE_FORMAT}\n".encode())
    return root


def require_lake(root: Path) -> Path:
    """Return ``root`` if it is a lake made by ``meterlake init``, else raise a clear error."""
    if not (root / LAKE_MARKER).is_file():
        raise PermanentError(
            f"{root} is not a meterlake lake: create one with `meterlake init {root}`"
        )
    return root


def table_dir(root: Path, table: TableSpec) -> Path:
    return root / table.name


def partition_dir(root: Path, table: TableSpec, value: str) -> Path:
    """The directory of one partition; ``value`` is validated before it touches the path."""
    validate_partition_value(table.partition, value)
    return table_dir(root, table) / f"{table.partition}={value}"


def list_partitions(root: Path, table: TableSpec) -> list[str]:
    """Partition values present on disk, sorted; directories with other names are ignored."""
    base = table_dir(root, table)
    if not base.is_dir():
        return []
    prefix = f"{table.partition}="
    values = []
    for entry in base.iterdir():
        name = entry.name
        if entry.is_dir() and name.startswith(prefix):
            value = name.removeprefix(prefix)
            try:
                validate_partition_value(table.partition, value)
            except PermanentError:
                continue
            values.append(value)
    return sorted(values)


def partition_files(root: Path, table: TableSpec, value: str) -> list[Path]:
    """The data files of one partition, sorted by name."""
    directory = partition_dir(root, table, value)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.suffix == DATA_SUFFIX and p.is_file())


def new_file_name(prefix: str = "") -> str:
    """A data file name unique per writer: host, process, sequence and a random part."""
    unique = f"{_HOST}-{os.getpid()}-{next(_sequence):06d}-{secrets.token_hex(4)}"
    return f"{prefix}{unique}{DATA_SUFFIX}"


_TMP_NAME: Final = re.compile(r"^(?:c-)?(?P<host>[A-Za-z0-9-]+)-(?P<pid>\d+)-\d{6}-[0-9a-f]{8}")


def sweep_tmp(root: Path) -> list[Path]:
    """Delete temporary files whose writer on this host is gone (killed mid-write); return them.

    Files of live writers and of other hosts are left alone: only their writer knows whether
    they are still being written.
    """
    directory = root / TMP_DIR
    removed = []
    for path in directory.glob("*.part") if directory.is_dir() else ():
        match = _TMP_NAME.match(path.name)
        if match and match["host"] == _HOST and not _process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def tmp_path(root: Path, name: str) -> Path:
    directory = root / TMP_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{name}.part"


def publish(tmp: Path, final: Path) -> None:
    """Move a complete, fsynced temporary file into place atomically and durably."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fsync_file(tmp)
    tmp.replace(final)
    fsync_dir(final.parent)


def write_bytes_atomic(final: Path, data: bytes) -> None:
    """Write a small file next to ``final`` and rename it into place."""
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    tmp.write_bytes(data)
    publish(tmp, final)
