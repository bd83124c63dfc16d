"""Reading a data file (a tariff, a URDB rate, alert rules) into plain Python values, with an
error that names the file and what it was meant to be."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from meterlake.config.errors import MeterlakeError


def read_document(path: Path, what: str, error: type[MeterlakeError]) -> Any:
    """The parsed content of ``path``: JSON for ``.json`` files, TOML otherwise.

    Raises
    ------
    error
        The file cannot be read or is not valid TOML/JSON (``what`` says what it should hold,
        e.g. ``"the tariff"``).
    """
    is_json = path.suffix.lower() == ".json"
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if is_json else tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read {what}: {exc}") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise error(f"{path}: not valid {'JSON' if is_json else 'TOML'}: {exc}") from None
