"""Servers for the API tests: ``meterlake serve`` processes over test lakes, one per session.

``server`` serves :func:`~tests.api.lakes.billed_lake` with the four test tokens and
``lake_poll_s = 0`` (it looks at the files on every request); ``many_server`` serves 10,000
bills with a cursor key file, so a second server on the same lake signs the same cursors.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.lakes import billed_lake, many_bills_lake, tokens_config
from tests.api.server import ApiServer


@pytest.fixture(scope="session")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return billed_lake(tmp_path_factory.mktemp("billed") / "lake")


@pytest.fixture(scope="session")
def server(billed: Path) -> Iterator[ApiServer]:
    config = tokens_config(billed.parent / "meterlake.toml", lake_poll_s=0)
    with ApiServer(billed, config) as running:
        yield running


@pytest.fixture(scope="session")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return many_bills_lake(tmp_path_factory.mktemp("many") / "lake")


@pytest.fixture(scope="session")
def many_config(many: Path) -> Path:
    key = many.parent / "cursor.key"
    key.write_bytes(b"0123456789abcdef" * 4)
    return tokens_config(many.parent / "meterlake.toml", cursor_key_file=key.name)


@pytest.fixture(scope="session")
def many_server(many: Path, many_config: Path) -> Iterator[ApiServer]:
    with ApiServer(many, many_config) as running:
        yield running
