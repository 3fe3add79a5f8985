"""Check that protos/ makes no breaking change against its previous revision, with `buf breaking`.

Usage: check_proto_breaking.py [--buf PATH] [--repo DIR]

The baseline is git-based, so the check needs no registry:
- protos/ has uncommitted changes: the committed protos (HEAD) are the baseline;
- otherwise: the protos as they were just before the newest commit that changed them.

Clients in other languages are built from protos/, so a field removed or renumbered there breaks
them silently; the rules in force are buf.yaml's `breaking` section. Exit 0 when compatible, 1 on
a breaking change (buf names each one), 2 when the check cannot run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = "protos"


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def baseline(repo: Path) -> tuple[str, str] | None:
    """The git revision to compare with and why it was chosen, or None when there is none."""
    if git(repo, "status", "--porcelain", "--", PROTOS):
        return "HEAD", "the committed protos (protos/ has uncommitted changes)"
    last_change = git(repo, "log", "-1", "--format=%H", "--", PROTOS)
    if not last_change:
        return None
    parents = git(repo, "rev-list", "--parents", "-n", "1", last_change).split()[1:]
    if not parents:
        return None
    return parents[0], f"the parent of {last_change[:12]}, the newest commit that changed protos/"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--buf", default=str(Path(sys.executable).parent / "buf"), help="the buf binary")
    parser.add_argument("--repo", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    repo: Path = args.repo.resolve()
    try:
        against = baseline(repo)
    except RuntimeError as exc:
        print(f"proto breaking check cannot run: {exc}", file=sys.stderr)
        return 2
    if against is None:
        # The protos were added in the first commit (or the clone has no history before it):
        # there is no earlier contract that a change could break.
        print("proto breaking check: no earlier revision of protos/ to compare with")
        return 0
    revision, why = against
    print(f"proto breaking check: buf breaking against {why}")
    done = subprocess.run([args.buf, "breaking", "--against", f".git#ref={revision}"], cwd=repo, check=False)
    if done.returncode != 0:
        print(
            "proto breaking check: protos/ breaks its contract (see above); make it additive", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
