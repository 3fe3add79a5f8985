"""The checker's coverage index against the question it replaces: scanning every read of a key
with `Seen.covers`. Random reads and dots, seeded (DOMICILE_SEED replays a failure)."""

from __future__ import annotations

import os
import random

from torture.coverage import CoverIndex
from torture.history import Dot, Op, Seen

NODES = ("n1", "n2", "n3")


def _seed() -> int:
    seed = int(os.environ.get("DOMICILE_SEED") or random.SystemRandom().randrange(2**31))
    print(f"DOMICILE_SEED={seed}")
    return seed


def _reader(rng: random.Random, op_id: int) -> Op:
    vv = {node: rng.randint(0, 12) for node in NODES if rng.random() < 0.7}
    dots = [(rng.choice(NODES), rng.randint(1, 15)) for _ in range(rng.randint(0, 3))]
    seen = Seen(vv=vv, dots=dots)
    return Op(op_id, "client-0", "n1", "rmw", "ns", "k", 0.0, 1.0, "ok", f"v{op_id}", seen)


def _scan(readers: list[Op], dot: Dot) -> list[Op]:
    return [op for op in readers if op.read is not None and op.read.covers(dot)]


def test_the_index_finds_the_same_reads_as_a_scan() -> None:
    rng = random.Random(_seed())
    for _history in range(100):
        readers = [_reader(rng, i) for i in range(rng.randint(0, 25))]
        index = CoverIndex(readers)
        for _query in range(30):
            dot = (rng.choice((*NODES, "n4")), rng.randint(0, 16))
            scanned = _scan(readers, dot)
            assert index.covering(dot) == scanned[:2], (dot, readers)
            assert index.first_covering(dot) is (scanned[0] if scanned else None)
            for op in readers:
                assert index.covered_by_another(dot, op) == any(r is not op for r in scanned)


def test_a_write_whose_own_read_covers_its_dot_is_not_its_own_superseder() -> None:
    own = Op(1, "client-0", "n1", "rmw", "ns", "k", 0.0, 1.0, "ok", "a", Seen(vv={"n1": 3}), ("n1", 3))
    index = CoverIndex([own])
    assert index.first_covering(("n1", 3)) is own
    assert not index.covered_by_another(("n1", 3), own)
    later = Op(2, "client-1", "n2", "rmw", "ns", "k", 0.0, 1.0, "ok", "b", Seen(dots=[("n1", 3)]))
    assert CoverIndex([own, later]).covered_by_another(("n1", 3), own)
    assert not CoverIndex([own, later]).covered_by_another(("n1", 4), own)
