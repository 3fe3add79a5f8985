"""Writing credentials to disk: atomically, and private keys readable by their owner only."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

from domicile.errors import AlreadyExists, InvalidArgument
from domicile.fsync import fsync_path

PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644


def write_atomically(path: Path, data: bytes, mode: int, *, overwrite: bool) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one, never a part.

    The temporary file is created with mode 0600 before anything is written, so a private key is
    never readable by others, not even for a moment. Without `overwrite`, an existing file is an
    error, and linking (not renaming) makes that check and the write one atomic step.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise AlreadyExists(f"{path} exists already; refusing to overwrite it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_path(path.parent)


def check_owner_only(path: Path) -> None:
    """Refuse a private key that anyone but its owner may read or write."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise InvalidArgument(
            f"private key {path} has mode {mode:04o}; it must be readable by its owner only "
            f"(chmod 600 {path.name})"
        )


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidArgument(f"{what} {path} does not exist") from None
    except OSError as error:
        raise InvalidArgument(f"{what} {path} cannot be read: {error.strerror}") from None
