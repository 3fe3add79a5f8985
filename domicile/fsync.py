"""fsync of a path: a file's bytes, or a directory's entries (so that a rename or a new file in
it survives a crash)."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
