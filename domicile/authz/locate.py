"""Where in a Cedar file an error is.

cedarpy says what is wrong ("unexpected token `;`") but not where. A file is split into its
statements, the first that fails alone is the one at fault, and within it the first prefix
that fails with a syntax error (rather than "unexpected end of input") ends at the offending
token. Errors found only once the text is complete (an unknown function, an unresolved type)
are placed at the first token the message names in backquotes or after its last colon, or else
at the start of the statement.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<comment>//[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*"?)
    | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<number>[0-9]+)
    | (?P<punct>::|==|!=|<=|>=|&&|\|\||.)
    """,
    re.VERBOSE | re.DOTALL,
)
_SYNTAX_ERRORS = ("unexpected token", "invalid token")
_NAMED = re.compile(r"`([^`]+)`")


@dataclass(frozen=True)
class Token:
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Location:
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


def tokens(text: str) -> list[Token]:
    return [
        Token(m.start(), m.end(), m.group())
        for m in _TOKEN.finditer(text)
        if m.lastgroup not in ("space", "comment")
    ]


def location(text: str, offset: int) -> Location:
    line = text.count("\n", 0, offset) + 1
    return Location(line, offset - (text.rfind("\n", 0, offset) + 1) + 1)


def statements(text: str) -> list[tuple[int, int]]:
    """(start, end) of each top-level statement ending with ';', from its first token."""
    spans: list[tuple[int, int]] = []
    depth = 0
    start: int | None = None
    for token in tokens(text):
        if start is None:
            start = token.start
        if token.text in ("(", "[", "{"):
            depth += 1
        elif token.text in (")", "]", "}"):
            depth -= 1
        elif token.text == ";" and depth <= 0:
            spans.append((start, token.end))
            start, depth = None, 0
    if start is not None:
        spans.append((start, len(text)))
    return spans


def error_offset(text: str, start: int, end: int, message: str, parse: Callable[[str], object]) -> int:
    """Offset in `text` of the error `message` that parsing text[start:end] reported."""
    part = tokens(text[start:end])
    if any(kind in message for kind in _SYNTAX_ERRORS):
        named = _NAMED.findall(message)
        for i, token in enumerate(part):
            try:
                parse(text[start : start + token.end])
            except ValueError as exc:
                if any(kind in str(exc) for kind in _SYNTAX_ERRORS):
                    # The parser may only notice the named token once it has read the next one.
                    for earlier in reversed(part[max(0, i - 1) : i + 1]):
                        if named and earlier.text == named[0]:
                            return start + earlier.start
                    return start + token.start
    names = _NAMED.findall(message)
    _, colon, last = message.rpartition(": ")
    if colon and re.fullmatch(r"[\w:\"]+", last):
        names.append(last)
    for name in names:
        bare = name.strip('"').rpartition("::")[2]
        for token in part:
            if token.text in (name, bare, f'"{bare}"'):
                return start + token.start
    return start


def first_failing_statement(text: str, parse: Callable[[str], object]) -> tuple[int, int, str] | None:
    """The first statement that does not parse on its own, and the error it gives."""
    for start, end in statements(text):
        try:
            parse(text[start:end])
        except ValueError as exc:
            return start, end, str(exc)
    return None
