"""Opens the storage engine a node's configuration names: SQLite (the default, embedded) or
MongoDB (a regional database server, possibly shared by several nodes of the region)."""

from __future__ import annotations

from pathlib import Path

from domicile.errors import InvalidArgument
from node.config import ENGINES, EngineSettings, MongoSettings, SQLiteSettings
from node.engine.base import StorageEngine

SQLITE_FILE = "store.sqlite3"


def open_engine(settings: EngineSettings, data_dir: str, node_id: str, region: str) -> StorageEngine:
    """The engine, opened. Blocks (files, network)."""
    if isinstance(settings, SQLiteSettings):
        from node.engine.sqlite import SQLiteEngine

        Path(data_dir).mkdir(parents=True, exist_ok=True)
        return SQLiteEngine(
            str(Path(data_dir) / SQLITE_FILE), node_id, region, synchronous=settings.synchronous
        )
    if isinstance(settings, MongoSettings):
        # Imported here: a node on SQLite never loads the MongoDB driver.
        from node.engine.mongo import MongoEngine

        return MongoEngine(settings.uri, settings.database, node_id, region)
    raise InvalidArgument(f"unknown engine settings {settings!r}; allowed: {', '.join(ENGINES)}")
