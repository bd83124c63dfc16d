"""The cursor key file: its bytes are the key, as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterlake.api.cursor import KEY_BYTES, load_cursor_key
from meterlake.config.errors import ConfigError


def test_a_key_file_is_read_byte_for_byte(tmp_path: Path) -> None:
    # what `head -c 32 /dev/urandom` may well give: whitespace bytes at both ends
    key = b"\n\t " + bytes(range(33, 33 + KEY_BYTES - 6)) + b" \r\n"
    assert len(key) == KEY_BYTES
    path = tmp_path / "cursor.key"
    path.write_bytes(key)
    assert load_cursor_key(path) == key


def test_a_short_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cursor.key"
    path.write_bytes(b"k" * (KEY_BYTES - 1))
    with pytest.raises(ConfigError, match="holds 31 bytes, needs at least 32"):
        load_cursor_key(path)


def test_no_key_file_draws_a_new_key() -> None:
    assert len(load_cursor_key(None)) == KEY_BYTES
    assert load_cursor_key(None) != load_cursor_key(None)
