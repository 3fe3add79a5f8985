"""Encoded Get answers of cache hits, kept for the next Get that would encode the same bytes.

A hit's answer is a function of what it is keyed by here, and of nothing else:
- the cache entry's bytes (the key state, versions and context, sealed as stored) and the
  namespace's conflict mode, which picks the versions shown (ReadResult.source). Only hits
  whose versions open on the event loop carry a source: none is sealed under a subject's data
  key, so no erasure (which destroys such keys) can change them while the bytes stay the same;
- the namespace and the key (the context token is signed over them);
- the read policy's outcome: the fields removed from each version (ReadResult.redacted). A
  refusal never gets here, so the policy still decides, and audits, every read;
- the node's region and its context-token key, which do not change while the node runs (the
  memo belongs to one servicer of one node).
The token is an HMAC over the namespace, the key and the context only: nothing in an answer
depends on the caller or on the time. Bounded in count and in the size of what it keeps.

The service hands out the same result object again for a hit of the same plan with the same
decisions (StorageService._planned_result), and such a result is only ever for one namespace,
key, source and redaction: its answer is also found by the object itself (`of_result`), without
building and hashing the key above.
"""

from __future__ import annotations

from domicile.memo import remember
from domicile.model import ConflictMode

# How many answers are kept (the oldest goes first), the largest answer kept and the largest
# entry one is kept for (its bytes are part of the key): about 12 MiB at most.
ANSWERS_MAX = 1024
ANSWER_BYTES_MAX = 8192
ENTRY_BYTES_MAX = 4096

AnswerKey = tuple[str, str, tuple[bytes, ConflictMode], tuple[tuple[str, ...], ...]]


class EncodedAnswers:
    """Answer bytes by (namespace, key, source, redaction). On the event loop only."""

    def __init__(
        self,
        answers_max: int = ANSWERS_MAX,
        answer_bytes_max: int = ANSWER_BYTES_MAX,
        entry_bytes_max: int = ENTRY_BYTES_MAX,
    ) -> None:
        self.answers_max = answers_max
        self.answer_bytes_max = answer_bytes_max
        self.entry_bytes_max = entry_bytes_max
        self._answers: dict[AnswerKey, bytes] = {}
        # id(result) -> (the result, its answer): each entry holds its result, so that the id
        # cannot name another object while it is kept.
        self._by_result: dict[int, tuple[object, bytes]] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: AnswerKey) -> bytes | None:
        return self._answers.get(key)

    def keep(self, key: AnswerKey, answer: bytes) -> bytes:
        """Keeps `answer` (unless it or its entry is too large to) and returns it."""
        if len(answer) <= self.answer_bytes_max and len(key[2][0]) <= self.entry_bytes_max:
            remember(self._answers, key, answer, self.answers_max)
        return answer

    def of_result(self, result: object) -> bytes | None:
        """The answer kept for this very result object (`keep_for_result`), if any."""
        kept = self._by_result.get(id(result))
        return kept[1] if kept is not None and kept[0] is result else None

    def keep_for_result(self, result: object, answer: bytes) -> None:
        """Keeps `answer` for `result`, an object whose answer is always this one."""
        if len(answer) <= self.answer_bytes_max:
            remember(self._by_result, id(result), (result, answer), self.answers_max)
