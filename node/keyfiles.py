"""Private key files of a node: created once with mode 0600, refused when others can read them.

A key file is written to a temporary file, synced, then hard-linked into place: a crash never
leaves a half-written key, and two processes starting at once end up using the same key.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from domicile.context_tokens import KEYS_MAX
from domicile.errors import FailedPrecondition
from domicile.fsync import fsync_path

KEY_FILE_BYTES_MAX = 64 * 1024
CONTEXT_KEY_BYTES = 32
CONTEXT_KEY_FILE = "context.key"

log = logging.getLogger("domicile.node.keys")


def read_or_create(path: Path, make: Callable[[], bytes]) -> bytes:
    """The contents of the key file at `path`, created from make() when it does not exist."""
    try:
        return read_private(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(make())
            out.flush()
            os.fsync(out.fileno())
        # A hard link never replaces a key that another process created meanwhile.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
    return read_private(path)


def load_context_key(configured: str, data_dir: Path) -> tuple[bytes, ...]:
    """The cluster's context-token keys: the configured file (which must exist: a node that made
    its own would refuse every other node's tokens), else one key made once in the data
    directory. The file holds 1 to KEYS_MAX keys of CONTEXT_KEY_BYTES, one after the other: the
    first issues tokens, every one verifies them (a rotation's old or next key)."""
    if configured:
        path = Path(configured)
        try:
            data = read_private(path)
        except FileNotFoundError:
            raise FailedPrecondition(
                f"context key file {configured} does not exist; create it once for the cluster "
                f"({CONTEXT_KEY_BYTES} random bytes, mode 0600; `domicile up` does) and give every "
                "node the same"
            ) from None
    else:
        path = data_dir / CONTEXT_KEY_FILE
        # Read before the store opens (which makes the directory of a new node).
        data_dir.mkdir(parents=True, exist_ok=True)
        data = read_or_create(path, lambda: secrets.token_bytes(CONTEXT_KEY_BYTES))
        log.warning(
            "no --context-key-file: using this node's own context key %s; context tokens from other "
            "nodes will not verify here (fine for a single development node)",
            path.name,
        )
    return split_context_keys(configured or path.name, data)


def split_context_keys(name: str, data: bytes) -> tuple[bytes, ...]:
    """The keys of a context key file's contents; FailedPrecondition naming the file when they
    are not 1 to KEYS_MAX distinct keys of CONTEXT_KEY_BYTES."""
    count, rest = divmod(len(data), CONTEXT_KEY_BYTES)
    if rest or not 1 <= count <= KEYS_MAX:
        sizes = ", ".join(str(CONTEXT_KEY_BYTES * n) for n in range(1, KEYS_MAX + 1))
        raise FailedPrecondition(
            f"context key file {name} holds {len(data)} bytes; it must hold 1 to {KEYS_MAX} keys of "
            f"exactly {CONTEXT_KEY_BYTES} bytes each, one after the other ({sizes} bytes): the first "
            "issues context tokens and every one verifies them"
        )
    keys = tuple(data[i : i + CONTEXT_KEY_BYTES] for i in range(0, len(data), CONTEXT_KEY_BYTES))
    for later, key in enumerate(keys):
        if key in keys[:later]:
            # Harmless to tokens, but not what a rotation step writes: most likely the old key
            # was appended again instead of the new one.
            raise FailedPrecondition(
                f"context key file {name} holds key {keys.index(key) + 1} again as key {later + 1}; "
                "each key must be different (a new key is 32 fresh random bytes)"
            )
    return keys


def read_private(path: Path) -> bytes:
    """The contents of a key file that only its owner can access (FileNotFoundError if none)."""
    with path.open("rb") as f:
        check_private_mode(path, os.fstat(f.fileno()).st_mode)
        data = f.read(KEY_FILE_BYTES_MAX + 1)
    if len(data) > KEY_FILE_BYTES_MAX:
        raise FailedPrecondition(f"{path.name} is larger than {KEY_FILE_BYTES_MAX} bytes; it is not a key")
    return data


def ensure_private_file(path: Path) -> None:
    """Creates `path` empty with mode 0600 when missing (so that a database opened on it, and
    the journal files the database derives from its mode, are private) and refuses it when
    other users can access it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        os.close(fd)
        fsync_path(path.parent)
    check_private_mode(path, path.stat().st_mode)


def check_private_mode(path: Path, mode: int) -> None:
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise FailedPrecondition(
            f"{path.name} is accessible to other users (mode {stat.S_IMODE(mode):04o}); "
            "a key file must be mode 0600 (chmod 600)"
        )
