"""Fixtures every test directory may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mongo import MongoServer


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """One MongoDB server for the whole run (each test uses databases of its own)."""
    server = MongoServer(tmp_path_factory.mktemp("mongodb")).start()
    try:
        yield server
    finally:
        server.stop()
