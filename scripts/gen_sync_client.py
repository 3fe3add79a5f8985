"""Generate the blocking client, domicile/client/sync_client.py, from the asyncio one.

Usage: gen_sync_client.py          regenerate in place
       gen_sync_client.py --check  exit 1 when the committed file differs from what this makes now

AsyncClient is the one implementation of the SDK's calls; Client must do exactly the same, only
blocking. This script removes every `async` and `await`, renames the names in NAMES and rewrites
the texts in TEXTS, then formats the result with ruff, so that the output is stable and passes
`make lint`. What cannot be expressed that way belongs in async_runtime.py and its twin
sync_runtime.py, never in an edit of the generated file.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = Path("domicile/client/async_client.py")
TARGET = Path("domicile/client/sync_client.py")

# Names (identifiers, never text inside strings or comments) and their blocking twins.
NAMES = {
    "AsyncClient": "Client",
    "AsyncIterator": "Iterator",
    "StopAsyncIteration": "StopIteration",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
    "__aiter__": "__iter__",
    "__anext__": "__next__",
    "async_runtime": "sync_runtime",
}
# Keywords that have no blocking form: dropped.
DROPPED = {"async", "await"}
# Texts that say which client they describe; each must occur exactly once in the source.
TEXTS = {
    '''"""The asyncio client, AsyncClient: the one implementation of the SDK's calls.

The blocking Client in sync_client.py is generated from this module by
scripts/gen_sync_client.py (`make sync-client`): write every change here, in a form that stays
right once `async` and `await` are removed, and put what must differ in async_runtime.py.
"""''': '''"""The blocking client, Client: AsyncClient's calls, made without an event loop.

Generated from async_client.py: change that module (and async_runtime.py / sync_runtime.py for
what must differ), then run `make sync-client`.
"""''',
    '"""The asyncio client. Create and use it on one event loop."""': (
        '"""Blocking client. Thread-safe; one instance can serve a whole process."""'
    ),
}
HEADER = (
    f"# Generated from {SOURCE.as_posix()} by scripts/gen_sync_client.py: do not edit.\n"
    "# `make sync-client` regenerates it; `make sync-client-check` (part of `make test`) fails when\n"
    "# it is out of date.\n"
)


def unasync(source: str) -> str:
    """`source` with async and await removed and NAMES renamed, token by token."""
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str]] = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.NAME:
            continue
        (row, col), end_col = tok.start, tok.end[1]
        if tok.string in DROPPED:
            line = lines[row - 1]
            # The keyword and the blank after it; ruff format settles the rest.
            while end_col < len(line) and line[end_col] == " ":
                end_col += 1
            edits.append((row, col, end_col, ""))
        elif tok.string in NAMES:
            edits.append((row, col, end_col, NAMES[tok.string]))
    for row, col, end_col, text in sorted(edits, reverse=True):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + text + line[end_col:]
    return "".join(lines)


def rewrite_texts(source: str) -> str:
    for old, new in TEXTS.items():
        count = source.count(old)
        if count != 1:
            raise SystemExit(f"{SOURCE}: expected one occurrence of {old[:60]!r}..., found {count}")
        source = source.replace(old, new)
    return source


def ruff(args: list[str], source: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
        input=source,
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"ruff {' '.join(args)} failed on the generated client:\n{done.stderr}{done.stdout}")
    return done.stdout


def generate() -> str:
    source = (ROOT / SOURCE).read_text(encoding="utf-8")
    blocking = HEADER + rewrite_texts(unasync(source))
    # Renamed imports may sort differently, and a loop that yields each item of a list is
    # `yield from` where no await separates them (the same for a list: nothing is sent to it).
    # Then the layout is ruff's, as for any module.
    blocking = ruff(["check", "--fix", "--unsafe-fixes", "--select", "I,UP028", "--quiet"], blocking)
    return ruff(["format", "--quiet"], blocking)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the committed file is out of date")
    args = parser.parse_args(argv)
    generated = generate()
    target = ROOT / TARGET
    if args.check:
        current = target.read_text(encoding="utf-8") if target.exists() else ""
        if current != generated:
            print(f"{TARGET} is out of date with {SOURCE}: run `make sync-client`", file=sys.stderr)
            return 1
        print(f"generated sync client is up to date ({TARGET})")
        return 0
    target.write_text(generated, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
