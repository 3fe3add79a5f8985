"""Where a harness writes the file it loads per input.

The loaders under test read files, so each input is written to one; the runner names a scratch
directory in FUZZ_WORKDIR (and removes it with the rest of its scratch), and a harness run by
hand uses .fuzz/work in the repository (ignored by git). libFuzzer ends the process with exit(),
so a harness cannot clean up after itself.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "FUZZ_WORKDIR"


def workdir(target: str) -> Path:
    base = os.environ.get(ENV) or Path(__file__).resolve().parents[2] / ".fuzz" / "work"
    path = Path(base) / target
    path.mkdir(parents=True, exist_ok=True)
    return path
