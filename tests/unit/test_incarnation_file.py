"""The incarnation file is written durably: its bytes are synced before the rename that puts it
in place, and the rename before write_epoch returns (regression: neither was, so a crash could
leave an empty file under the name, and the node would not start)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from node.incarnation import INCARNATION_FILE, read_epoch, write_epoch


def test_the_epoch_is_synced_before_its_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, Path.replace

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(f"fsync {Path(target).name}")
        real_fsync(fd)

    def replace(self: Path, target: str | Path) -> Path:
        events.append(f"rename {self.name} -> {Path(target).name}")
        return real_replace(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "replace", replace)
    write_epoch(tmp_path, 3)
    assert events == [
        f"fsync {INCARNATION_FILE}.tmp",
        f"rename {INCARNATION_FILE}.tmp -> {INCARNATION_FILE}",
        f"fsync {tmp_path.name}",
    ]
    assert read_epoch(tmp_path) == 3
