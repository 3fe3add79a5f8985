"""The kept Get answers are bounded in count (the oldest goes first), in size, and in the size of
the entry they are kept for."""

from __future__ import annotations

from domicile.model import ConflictMode
from node.api.read_answers import AnswerKey, EncodedAnswers


def key(n: int) -> AnswerKey:
    return ("ns", f"k{n}", (b"entry", ConflictMode.LWW), ((),))


def test_the_oldest_answer_goes_first_when_the_memo_is_full() -> None:
    answers = EncodedAnswers(answers_max=3, answer_bytes_max=16)
    for n in range(4):
        assert answers.keep(key(n), b"answer %d" % n) == b"answer %d" % n
    assert len(answers) == 3
    assert answers.get(key(0)) is None
    assert [answers.get(key(n)) for n in (1, 2, 3)] == [b"answer 1", b"answer 2", b"answer 3"]


def test_an_answer_larger_than_the_bound_is_sent_but_not_kept() -> None:
    answers = EncodedAnswers(answers_max=3, answer_bytes_max=16)
    large = b"x" * 17
    assert answers.keep(key(0), large) == large
    assert answers.get(key(0)) is None and len(answers) == 0
    assert answers.keep(key(1), b"x" * 16) and answers.get(key(1)) == b"x" * 16


def test_an_answer_of_an_entry_larger_than_the_bound_is_not_kept() -> None:
    answers = EncodedAnswers(answers_max=3, answer_bytes_max=16, entry_bytes_max=8)
    large: AnswerKey = ("ns", "k", (b"e" * 9, ConflictMode.LWW), ((),))
    assert answers.keep(large, b"small") == b"small"
    assert answers.get(large) is None
    fits: AnswerKey = ("ns", "k", (b"e" * 8, ConflictMode.LWW), ((),))
    answers.keep(fits, b"small")
    assert answers.get(fits) == b"small"


class Result:
    """Stands in for a read result: compared by identity, as `of_result` finds them."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Result)

    def __hash__(self) -> int:
        return 0


def test_an_answer_kept_for_a_result_is_found_by_that_object_only() -> None:
    answers = EncodedAnswers(answers_max=2, answer_bytes_max=16)
    first, equal = Result(), Result()
    answers.keep_for_result(first, b"first")
    assert answers.of_result(first) == b"first"
    assert answers.of_result(equal) is None  # equal, but another object
    # Bounded, the oldest first; and an answer over the size bound is not kept.
    second, third = Result(), Result()
    answers.keep_for_result(second, b"second")
    answers.keep_for_result(third, b"third")
    assert answers.of_result(first) is None
    assert [answers.of_result(r) for r in (second, third)] == [b"second", b"third"]
    large = Result()
    answers.keep_for_result(large, b"x" * 17)
    assert answers.of_result(large) is None
