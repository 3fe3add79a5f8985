"""Fuzzes the policy pack loader: file bytes -> PolicyPack, or InvalidArgument naming the field
at fault. Anything else escaping is a crash.

    python tests/fuzz/fuzz_policy_pack.py [-runs=N] [libFuzzer flags] corpus_dir...
"""

from __future__ import annotations

import contextlib
import re
import sys

import atheris
from workdir import workdir

with atheris.instrument_imports(include=["domicile", "yaml"]):
    from domicile.errors import DomicileError
    from domicile.model import Classification
    from domicile.policy.pack import PolicyPack, load_pack

VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
REGION = re.compile(r"[a-z][a-z0-9-]{0,62}")
GROUP = re.compile(r"[A-Z][A-Z0-9_]{2,31}")
IDENT = re.compile(r"[a-z][a-z0-9_-]{0,47}")

PACK = workdir("policy_pack") / "pack.yaml"


def check_invariants(pack: PolicyPack) -> None:
    if not VERSION.fullmatch(pack.version):
        raise AssertionError(f"version {pack.version!r} accepted")
    names = [r.name for r in pack.regions]
    if not names or len(set(names)) != len(names):
        raise AssertionError(f"regions {names} accepted")
    for name in names:
        if not REGION.fullmatch(name):
            raise AssertionError(f"region name {name!r} accepted")
    for group in pack.groups:
        if not GROUP.fullmatch(group):
            raise AssertionError(f"country group {group!r} accepted")
    missing = [
        c for c in Classification if c is not Classification.UNSPECIFIED and c not in pack.classifications
    ]
    if missing:
        raise AssertionError(f"classifications without a rule accepted: {missing}")
    ids = [law.id for law in pack.laws]
    if not ids or len(set(ids)) != len(ids):
        raise AssertionError(f"law ids {ids} accepted")
    for law_id in ids:
        if not IDENT.fullmatch(law_id):
            raise AssertionError(f"law id {law_id!r} accepted")


def test_one_input(data: bytes) -> None:
    PACK.write_bytes(data)
    with contextlib.suppress(DomicileError):
        check_invariants(load_pack(PACK))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
