"""Catalog figures of one node: its records per namespace and classification, and, for a
candidate JSON Schema of a namespace, how many stored live values would fail it.

Like the scanner it walks the store page by page (bounded memory) with thread-safe reads only,
so it runs beside the writer in the long-jobs pool. Checking a candidate schema opens each
value (they are sealed at rest); a value whose data key was destroyed (its subject erased) is
gone and not counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from domicile.causality import Version
from domicile.model import Classification
from domicile.quality import violation
from node.engine.base import StorageEngine

PAGE_KEYS = 1000

# (namespace, key, version) -> the opened version, or None when it can no longer be opened
Opener = Callable[[str, str, Version], Version | None]


@dataclass(frozen=True)
class NamespaceCount:
    namespace: str
    classification: Classification
    records: int
    candidate_invalid: int = 0


def namespace_counts(
    engine: StorageEngine, candidates: Mapping[str, str], opener: Opener
) -> list[NamespaceCount]:
    """Keys with a live version per namespace and classification (a key counts once per
    classification among its live versions), and the live values failing the candidate
    schema of their namespace, if one is given."""
    records: Counter[tuple[str, Classification]] = Counter()
    invalid: Counter[tuple[str, Classification]] = Counter()
    for namespace in engine.namespaces():
        schema = candidates.get(namespace, "")
        start_after = ""
        while True:
            rows = engine.scan(namespace, "", start_after, PAGE_KEYS)
            for key, state in rows:
                live = state.live()
                for classification in {v.classification for v in live}:
                    records[(namespace, classification)] += 1
                if not schema:
                    continue
                for v in live:
                    opened = opener(namespace, key, v)
                    if (
                        opened is not None
                        and violation(schema, opened.value, opened.content_type) is not None
                    ):
                        invalid[(namespace, v.classification)] += 1
            if len(rows) < PAGE_KEYS:
                break
            start_after = rows[-1][0]
    return [
        NamespaceCount(ns, c, n, invalid[(ns, c)])
        for (ns, c), n in sorted(records.items(), key=lambda item: (item[0][0], int(item[0][1])))
    ]
