"""Engine harnesses and helpers shared by the contract tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from domicile.errors import DomicileError
from node.engine.base import Committed, LocalWrite, StorageEngine
from node.engine.mongo import MongoEngine
from node.engine.sqlite import SQLiteEngine
from tests.support.mongo import MongoServer

NODE = "node-a"
REGION = "eu-west-1"


class EngineHarness:
    """Opens engines on named stores; opening a store again reopens what it persisted."""

    name = "abstract"

    def __init__(self) -> None:
        self._open: list[StorageEngine] = []

    def open(self, store: str = "main", node_id: str = NODE, region: str = REGION) -> StorageEngine:
        engine = self._create(store, node_id, region)
        self._open.append(engine)
        return engine

    def reopen(self, engine: StorageEngine, store: str = "main") -> StorageEngine:
        engine.close()
        return self.open(store, engine.node_id, engine.region)

    def close_all(self) -> None:
        for engine in self._open:
            engine.close()
        self._open.clear()

    def _create(self, store: str, node_id: str, region: str) -> StorageEngine:
        raise NotImplementedError


class SQLiteHarness(EngineHarness):
    name = "sqlite"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root

    def path(self, store: str = "main") -> Path:
        return self.root / f"{store}.sqlite"

    def _create(self, store: str, node_id: str, region: str) -> StorageEngine:
        return SQLiteEngine(self.path(store), node_id, region)


class MongoHarness(EngineHarness):
    """Each named store is a database of its own on the test server."""

    name = "mongodb"

    def __init__(self, server: MongoServer) -> None:
        super().__init__()
        self.server = server
        self._databases: dict[str, str] = {}

    def database(self, store: str = "main") -> str:
        if store not in self._databases:
            self._databases[store] = self.server.database_name(store)
        return self._databases[store]

    def _create(self, store: str, node_id: str, region: str) -> StorageEngine:
        return MongoEngine(self.server.uri, self.database(store), node_id, region)


def commit_ok(engine: StorageEngine, stamp: Callable[[], int], *writes: LocalWrite) -> list[Committed]:
    """Commits the writes in one batch and fails the test if any of them was refused."""
    results = engine.commit_local(list(writes), stamp)
    refused = [r for r in results if isinstance(r, DomicileError)]
    if refused:
        raise AssertionError(f"writes refused: {refused}")
    return [r for r in results if isinstance(r, Committed)]
