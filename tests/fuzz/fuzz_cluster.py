"""Fuzzes the cluster config loader: file bytes -> ClusterSpec (and the placement policy it
asks for), or a DomicileError that says what is wrong. Anything else escaping is a crash.

    python tests/fuzz/fuzz_cluster.py [-runs=N] [libFuzzer flags] corpus_dir...
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import atheris
from workdir import workdir

with atheris.instrument_imports(include=["domicile", "yaml"]):
    from domicile.cluster import ClusterSpec, load_cluster
    from domicile.errors import DomicileError
    from domicile.policy.select import policy_for_cluster

NAMESPACE = re.compile(r"[a-z][a-z0-9_]{0,62}")
PURPOSE = re.compile(r"[a-z][a-z0-9_]{0,31}")

# The config file is rewritten per input, and the pack the seeds name (policy_pack:
# policy/pack.yaml) sits next to it, as in deploy/.
WORK = workdir("cluster")
CONFIG = WORK / "cluster.yaml"
(WORK / "policy").mkdir(exist_ok=True)
shutil.copy(
    Path(__file__).resolve().parent / "corpus" / "policy_pack" / "small_pack.yaml",
    WORK / "policy" / "pack.yaml",
)


def check_invariants(spec: ClusterSpec) -> None:
    regions = spec.region_names()
    if len(set(regions)) != len(regions):
        raise AssertionError(f"duplicate region names accepted: {regions}")
    names = [n.name for n in spec.namespaces]
    if len(set(names)) != len(names):
        raise AssertionError(f"duplicate namespace names accepted: {names}")
    for n in spec.namespaces:
        if not NAMESPACE.fullmatch(n.name):
            raise AssertionError(f"namespace name {n.name!r} accepted")
        if not n.is_global and (not n.regions or not set(n.regions) <= set(regions)):
            raise AssertionError(f"namespace {n.name!r} scoped to {n.regions} accepted")
        for p in n.purposes:
            if not PURPOSE.fullmatch(p):
                raise AssertionError(f"purpose {p!r} accepted")
    if not isinstance(spec.heartbeat_interval_ms, int) or not isinstance(spec.missed_heartbeats_max, int):
        raise AssertionError("heartbeat settings are not whole numbers")


def test_one_input(data: bytes) -> None:
    CONFIG.write_bytes(data)
    try:
        spec = load_cluster(CONFIG)
        check_invariants(spec)
        policy_for_cluster(spec)
    except DomicileError:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
