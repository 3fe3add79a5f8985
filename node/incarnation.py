"""A node's incarnation: 0 for the store it was first given, then the epoch a restore gave its
rebuilt store (node.backup.restore). The epoch is kept in a file beside the store, read before
the store opens, because it names the store's writer id (domicile.model.writer_id): the engine
refuses a store created under another writer id, so a store and an epoch that do not belong
together never start."""

from __future__ import annotations

import os
from pathlib import Path

from domicile.errors import InvalidArgument
from domicile.fsync import fsync_path

INCARNATION_FILE = "incarnation"


def read_epoch(data_dir: str | Path) -> int:
    path = Path(data_dir) / INCARNATION_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return 0
    if not text.isdigit() or int(text) <= 0:
        raise InvalidArgument(f"{path} must hold the store's incarnation epoch, a whole number above 0")
    return int(text)


def write_epoch(data_dir: str | Path, epoch: int) -> None:
    """Durably: the file's bytes are on disk before the rename, and the rename before this
    returns. Otherwise a crash could leave an empty file under the name (the rename persisted,
    not the data), and the node would not start."""
    path = Path(data_dir) / INCARNATION_FILE
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="ascii") as out:
        out.write(f"{epoch}\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)
    fsync_path(path.parent)
