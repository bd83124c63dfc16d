"""Fixtures of the collector tests: a real Mosquitto broker on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mqtt_broker import Broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    directory = tmp_path / "broker"
    directory.mkdir()
    server = Broker(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
