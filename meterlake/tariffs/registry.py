"""Tariffs by id: the shipped catalogue plus the user's files (native TOML or URDB JSON).

The catalogue lives in ``meterlake/tariffs/catalogue/`` (one ``<id>.toml`` per tariff, each with its
source); users add files in directories of their own. A file's id is its name without the suffix;
the same id twice is refused, naming both files.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from meterlake.tariffs.model import Tariff
from meterlake.tariffs.native import TariffError, load_tariff

CATALOGUE_DIR: Final = Path(__file__).parent / "catalogue"
SUFFIXES: Final = (".toml", ".json")


def load_tariff_file(path: Path) -> Tariff:
    """A native ``.toml`` tariff or an OpenEI URDB ``.json`` rate, checked."""
    if path.suffix == ".toml":
        return load_tariff(path)
    if path.suffix == ".json":
        from meterlake.tariffs.urdb import load_urdb  # noqa: PLC0415 - only URDB users pay for it

        return load_urdb(path)
    raise TariffError(f"{path}: a tariff file ends in .toml (native) or .json (OpenEI URDB)")


@functools.cache
def shipped_tariffs() -> Mapping[str, Tariff]:
    """The catalogue that ships with meterlake, by id."""
    return MappingProxyType(_load_dir(CATALOGUE_DIR, {}))


def load_tariffs(dirs: Iterable[Path] = (), files: Iterable[Path] = ()) -> dict[str, Tariff]:
    """The catalogue plus every tariff file in ``dirs`` and the single ``files``, by id.

    Raises
    ------
    TariffError
        A file is wrong, a directory is missing, or two files give the same id.
    """
    origin: dict[str, Path] = {
        t.id: CATALOGUE_DIR / f"{t.id}.toml" for t in shipped_tariffs().values()
    }
    tariffs = dict(shipped_tariffs())
    for directory in dirs:
        if not directory.is_dir():
            raise TariffError(f"{directory}: not a directory of tariff files")
        tariffs.update(_load_dir(directory, origin))
    for path in files:
        tariffs.update(_add(load_tariff_file(path), path, origin))
    return tariffs


def _load_dir(directory: Path, origin: dict[str, Path]) -> dict[str, Tariff]:
    out: dict[str, Tariff] = {}
    for path in sorted(p for p in directory.iterdir() if p.suffix in SUFFIXES):
        out.update(_add(load_tariff_file(path), path, origin))
    return out


def _add(tariff: Tariff, path: Path, origin: dict[str, Path]) -> dict[str, Tariff]:
    if tariff.id in origin and origin[tariff.id] != path:
        raise TariffError(f"tariff id {tariff.id!r} is given twice: {origin[tariff.id]} and {path}")
    origin[tariff.id] = path
    return {tariff.id: tariff}
