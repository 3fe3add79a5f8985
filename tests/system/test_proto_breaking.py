"""scripts/check_proto_breaking.py: `buf breaking` against the previous revision of protos/, run by
`make test`. The repository's own protos must pass, and a copy of them in a scratch git repository
shows that an additive change passes while a removed field fails, committed or not."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "check_proto_breaking.py"
STORAGE_PROTO = Path("protos/domicile/v1/storage_node.proto")
PAGE_TOKEN_FIELD = "  string page_token = 4;\n"


def check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--repo", str(repo)], capture_output=True, text=True, timeout=60
    )


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A git repository holding a copy of this one's buf.yaml and protos/, in one commit."""
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "protos", tmp_path / "protos")
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "protos")
    return tmp_path


def edit(repo: Path, old: str, new: str) -> None:
    path = repo / STORAGE_PROTO
    text = path.read_text()
    assert old in text, f"{STORAGE_PROTO} no longer has {old!r}; update this test"
    path.write_text(text.replace(old, new, 1))


def test_the_repository_protos_make_no_breaking_change() -> None:
    done = check(REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_first_revision_has_nothing_to_compare_with(scratch: Path) -> None:
    done = check(scratch)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no earlier revision" in done.stdout


def test_an_added_field_passes(scratch: Path) -> None:
    edit(scratch, PAGE_TOKEN_FIELD, PAGE_TOKEN_FIELD + "  string added_for_test = 99;\n")
    assert check(scratch).returncode == 0  # uncommitted: against HEAD
    git(scratch, "commit", "-q", "-am", "additive")
    done = check(scratch)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "newest commit that changed protos/" in done.stdout


def test_a_removed_field_fails_before_and_after_it_is_committed(scratch: Path) -> None:
    edit(scratch, PAGE_TOKEN_FIELD, "")
    uncommitted = check(scratch)
    assert uncommitted.returncode == 1, uncommitted.stdout + uncommitted.stderr
    assert "uncommitted changes" in uncommitted.stdout
    assert "page_token" in uncommitted.stdout + uncommitted.stderr
    git(scratch, "commit", "-q", "-am", "breaking")
    committed = check(scratch)
    assert committed.returncode == 1, committed.stdout + committed.stderr
    assert "page_token" in committed.stdout + committed.stderr


def test_a_later_commit_that_leaves_protos_alone_still_checks_the_last_change(scratch: Path) -> None:
    edit(scratch, PAGE_TOKEN_FIELD, "")
    git(scratch, "commit", "-q", "-am", "breaking")
    (scratch / "README").write_text("unrelated\n")
    git(scratch, "add", "README")
    git(scratch, "commit", "-q", "-m", "unrelated")
    assert check(scratch).returncode == 1
