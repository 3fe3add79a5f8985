"""The history of a torture run: every operation a client invoked and what came of it, one JSON
object per line, written as it happens (a run that dies still leaves its history).

An operation is `ok` (the node answered with success: acknowledged), `fail` (the node answered
with an error that means nothing was done), or `info` (a timeout or a lost connection: it may or
may not have taken effect). The checker treats each accordingly and never guesses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import grpc

Dot = tuple[str, int]

# Codes that say for certain that a write did not happen: the node refused it before doing
# anything. Every other error (UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, INTERNAL, UNKNOWN...)
# may come after the write committed, so its outcome is unknown.
DEFINITE_FAILURES = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)


@dataclass
class Seen:
    """What a read returned: the causal context (what a write carrying it supersedes) and the
    live versions."""

    vv: dict[str, int] = field(default_factory=dict)
    dots: list[Dot] = field(default_factory=list)  # seen beyond the contiguous prefix
    live: list[tuple[Dot, str, int]] = field(default_factory=list)  # (dot, value, hlc)

    def covers(self, dot: Dot) -> bool:
        node, counter = dot
        return self.vv.get(node, 0) >= counter or any(d[0] == node and d[1] == counter for d in self.dots)


@dataclass
class Op:
    id: int
    client: str
    region: str  # the node the client called
    f: str  # rmw, write, insert, delete, read, subject-write
    namespace: str
    key: str
    start_s: float
    end_s: float = 0.0
    outcome: str = ""  # ok, fail, info
    value: str = ""  # what a write wrote (unique in the run)
    read: Seen | None = None  # the read a rmw or delete was based on
    dot: Dot | None = None  # the version the write made (when ok)
    hlc: int = 0
    error: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Op:
        raw: dict[str, Any] = json.loads(text)
        read = raw.pop("read")
        dot = raw.pop("dot")
        op = cls(**raw)
        if read is not None:
            op.read = Seen(
                vv=dict(read["vv"]),
                dots=[(str(n), int(c)) for n, c in read["dots"]],
                live=[((str(d[0]), int(d[1])), str(v), int(h)) for d, v, h in read["live"]],
            )
        op.dot = (str(dot[0]), int(dot[1])) if dot is not None else None
        return op

    @property
    def writes(self) -> bool:
        return self.f in ("rmw", "write", "insert", "delete", "subject-write")


class History:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.ops: list[Op] = []
        self._file: IO[str] = path.open("w")

    def record(self, op: Op) -> None:
        self.ops.append(op)
        self._file.write(op.to_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def load(path: Path) -> Iterator[Op]:
    with path.open() as lines:
        for line in lines:
            if line.strip():
                yield Op.from_json(line)
