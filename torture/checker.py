"""The torture run's checker: given the history and the final state every replica holds after the
faults stopped and the cluster converged, it says what was lost, what came back, and what was
never written. It knows nothing of the driver; `python -m torture.checker HISTORY FINAL` runs it
on files.

The rules, for each key of a namespace and each replica in scope:
- **Lost write.** An acknowledged write whose version is neither live, nor superseded by a write
  or delete that read it (its context covered the version's dot), nor, in an lww namespace,
  ordered before the winner by (HLC, node id, counter), the store's order, each version's HLC
  the one its write was acknowledged with when it was. A superseding write of unknown outcome
  (it timed out, and may still have committed) counts only where the replica's context covers
  the version's dot: had it committed, its context would have reached every replica with it,
  so a replica that never saw the version was not superseded, it lost it.
- **Resurrection.** A live version that an acknowledged write or delete superseded: the writer
  read it and replaced it, and it is back.
- **Phantom.** A live value that no client wrote to that key, or wrote only in a write the node
  refused for certain (every key read at the end is checked, written or not).
- **Dot reuse.** Two acknowledged writes given the same dot, or a live version whose dot an
  acknowledged write was given with another value, or an acknowledged delete (a tombstone): a
  node handed out an event id twice, which makes replicas drop one of them as a duplicate.
- **Divergence.** Replicas in scope that hold different live versions.
- **Over the sibling cap.** A key read (by a client during the run, whatever became of the
  write after the read, or from a replica at the end) with more live versions of one writer
  than its namespace's siblings_max. That is what
  the cap guarantees: a node refuses a client write that would leave the key with more
  versions than the cap, and every live version of a writer was in that writer's state when
  it made its last one. Versions of several writers, each accepted under the cap at its
  origin, can add up to more once replicas merge them (dropping one would lose an
  acknowledged write): those reads are counted (`over_namespace_cap`), not failed.
Reads are not checked for freshness: Domicile promises eventual, causal consistency, not
linearizable reads.

Whether some read covered a version is answered by an index of each key's reads
(`torture/coverage.py`), not by asking every read: a long run has tens of thousands of
operations on each contended key, and the scan was quadratic in them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torture.coverage import CoverIndex
from torture.history import Dot, Op, Seen, load

# namespace -> key -> region -> what the replica holds
FinalState = Mapping[str, Mapping[str, Mapping[str, Seen]]]


@dataclass
class Findings:
    lost: list[dict[str, Any]] = field(default_factory=list)
    resurrected: list[dict[str, Any]] = field(default_factory=list)
    phantoms: list[dict[str, Any]] = field(default_factory=list)
    dot_reuse: list[dict[str, Any]] = field(default_factory=list)
    divergent: list[dict[str, Any]] = field(default_factory=list)
    over_cap: list[dict[str, Any]] = field(default_factory=list)
    over_namespace_cap: int = 0  # reads and replicas with more live versions than the cap in all
    acknowledged_writes: int = 0
    keys_checked: int = 0
    max_siblings: int = 0

    @property
    def ok(self) -> bool:
        return not (
            self.lost
            or self.resurrected
            or self.phantoms
            or self.dot_reuse
            or self.divergent
            or self.over_cap
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _check_cap(findings: Findings, where: dict[str, Any], live: list[Dot], cap: int) -> None:
    if len(live) > cap:
        findings.over_namespace_cap += 1
    per_writer = Counter(writer for writer, _counter in live)
    for writer, count in sorted(per_writer.items()):
        if count > cap:
            findings.over_cap.append({**where, "writer": writer, "siblings": count, "cap": cap})


def _lww_wins(a: tuple[Dot, int], b: tuple[Dot, int]) -> bool:
    """True when version a (dot, hlc) wins over b under lww: higher HLC, then node id, then
    counter, as the store orders them (domicile.causality)."""
    (a_dot, a_hlc), (b_dot, b_hlc) = a, b
    return (a_hlc, a_dot[0], a_dot[1]) > (b_hlc, b_dot[0], b_dot[1])


def _acked_hlc(given: Mapping[Dot, Op], dot: Dot, held: int) -> int:
    """A live version's HLC as its write was acknowledged with (a replica's copy could carry
    another), or as held when no acknowledged write owns its dot."""
    owner = given.get(dot)
    return owner.hlc if owner is not None and owner.f != "delete" else held


def check(
    ops: Iterable[Op],
    final: FinalState,
    regions: Iterable[str],
    lww_namespaces: Iterable[str] = (),
    placed_namespaces: Iterable[str] = (),
    siblings_max: Mapping[str, int] | None = None,
) -> Findings:
    """`regions`: every region read; a key a region did not return is empty there (so a write
    lost everywhere is still found). `placed_namespaces` are placed record by record by the
    policy pack: which replicas hold a record is the policy's business (the scanner checks it),
    so there an acknowledged write is looked for only in the region that acknowledged it, and
    replicas are not compared. `siblings_max`: each namespace's cap on live versions per key
    (a namespace not named has none)."""
    caps = dict(siblings_max or {})
    every_region = list(regions)
    lww = set(lww_namespaces)
    placed = set(placed_namespaces)
    findings = Findings()
    by_key: dict[tuple[str, str], list[Op]] = defaultdict(list)
    # The values each key may hold: those of its writes that were not refused for certain.
    written: dict[tuple[str, str], set[str]] = defaultdict(set)
    for op in ops:
        cap = caps.get(op.namespace)
        # A read is recorded only when it succeeded, whatever the write after it did.
        if cap is not None and op.read is not None:
            where = {"namespace": op.namespace, "key": op.key, "op": op.id}
            _check_cap(findings, where, [dot for dot, _v, _h in op.read.live], cap)
        if op.writes:
            by_key[(op.namespace, op.key)].append(op)
            if op.value and op.outcome in ("ok", "info"):
                written[(op.namespace, op.key)].add(op.value)
    # Every key read at the end too: one no client wrote must hold nothing.
    keys = set(by_key) | {(namespace, key) for namespace, held in final.items() for key in held}

    for namespace, key in sorted(keys):
        key_ops = by_key.get((namespace, key), [])
        written_values = written.get((namespace, key), set())
        held = final.get(namespace, {}).get(key, {})
        replicas = {region: held.get(region, Seen()) for region in every_region}
        findings.keys_checked += 1
        acked = [op for op in key_ops if op.outcome == "ok" and op.dot is not None and op.f != "delete"]
        findings.acknowledged_writes += len(acked)
        # Every read that may have superseded a version (a write that timed out may have
        # committed), and those that certainly did (acknowledged), indexed by what they cover.
        readers = CoverIndex([op for op in key_ops if op.read is not None and op.outcome in ("ok", "info")])
        acked_readers = CoverIndex([op for op in readers.readers if op.outcome == "ok"])
        cap = caps.get(namespace)

        # Dot reuse among acknowledged writes (deletes included: a tombstone is an event too).
        given: dict[Dot, Op] = {}
        for op in key_ops:
            if op.outcome != "ok" or op.dot is None:
                continue
            if op.dot in given:
                findings.dot_reuse.append(
                    {
                        "namespace": namespace,
                        "key": key,
                        "dot": list(op.dot),
                        "ops": [given[op.dot].id, op.id],
                    }
                )
            given[op.dot] = op

        for region, seen in sorted(replicas.items()):
            live = {dot: (value, hlc) for dot, value, hlc in seen.live}
            findings.max_siblings = max(findings.max_siblings, len(live))
            where = {"namespace": namespace, "key": key, "region": region}
            if cap is not None:
                _check_cap(findings, where, list(live), cap)
            for dot, (value, _hlc) in live.items():
                if value not in written_values:
                    findings.phantoms.append({**where, "dot": list(dot), "value": value})
                owner = given.get(dot)
                if owner is not None and (owner.f == "delete" or owner.value != value):
                    findings.dot_reuse.append(
                        {
                            **where,
                            "dot": list(dot),
                            "acknowledged": owner.value,
                            "live": value,
                            "op": owner.id,
                        }
                    )
                superseder = acked_readers.first_covering(dot)
                if superseder is not None:
                    findings.resurrected.append(
                        {**where, "dot": list(dot), "value": value, "superseded_by": superseder.id}
                    )
            for op in acked:
                assert op.dot is not None
                if namespace in placed and op.region != region:
                    continue
                if live.get(op.dot, ("",))[0] == op.value:
                    continue
                if acked_readers.covered_by_another(op.dot, op):
                    continue
                if seen.covers(op.dot) and readers.covered_by_another(op.dot, op):
                    continue
                if namespace in lww and any(
                    _lww_wins((dot, _acked_hlc(given, dot, hlc)), (op.dot, op.hlc))
                    for dot, (_v, hlc) in live.items()
                ):
                    continue
                findings.lost.append({**where, "op": op.id, "dot": list(op.dot), "value": op.value})

        views = {region: sorted((d, v) for d, v, _h in seen.live) for region, seen in replicas.items()}
        if namespace not in placed and len({json.dumps(v) for v in views.values()}) > 1:
            findings.divergent.append({"namespace": namespace, "key": key, "replicas": views})
    return findings


def load_final(
    path: Path,
) -> tuple[dict[str, dict[str, dict[str, Seen]]], list[str], list[str], list[str], dict[str, int]]:
    raw = json.loads(path.read_text())
    final: dict[str, dict[str, dict[str, Seen]]] = {}
    for namespace, keys in raw["state"].items():
        for key, regions in keys.items():
            for region, seen in regions.items():
                final.setdefault(namespace, {}).setdefault(key, {})[region] = Seen(
                    vv=dict(seen["vv"]),
                    dots=[(str(n), int(c)) for n, c in seen["dots"]],
                    live=[((str(d[0]), int(d[1])), str(v), int(h)) for d, v, h in seen["live"]],
                )
    return (
        final,
        list(raw["regions"]),
        list(raw.get("lww_namespaces", [])),
        list(raw.get("placed_namespaces", [])),
        {str(ns): int(cap) for ns, cap in raw.get("siblings_max", {}).items()},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check a torture run's history against its final state.")
    parser.add_argument("history", type=Path, help="history.jsonl of the run")
    parser.add_argument("final", type=Path, help="final.json of the run")
    args = parser.parse_args(argv)
    final, regions, lww, placed, caps = load_final(args.final)
    findings = check(load(args.history), final, regions, lww, placed, caps)
    print(json.dumps(findings.to_json(), indent=2))
    return 0 if findings.ok else 1


if __name__ == "__main__":
    sys.exit(main())
