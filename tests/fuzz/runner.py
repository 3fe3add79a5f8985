"""Runs the fuzz harnesses (tests/fuzz/fuzz_*.py), each in a process of its own, and reports the
executions and crashes of each.

Short runs (`--runs`) are what `make test` does over the committed corpus; long runs
(`--seconds`, `make fuzz`) keep what they learn in a scratch directory. Either way the committed
corpus is only read: libFuzzer writes new inputs to the first corpus directory it is given, so
that is always a scratch one.

    python tests/fuzz/runner.py --seconds 300 --scratch .fuzz [harness ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS_DIR = FUZZ_DIR / "corpus"
# The largest input the fuzzer makes: the seeds are a few KB; larger inputs only slow the YAML
# and Cedar parsers without reaching new code.
MAX_LEN = 8192
# A single input slower than this is reported as a crash (a hang is a bug too).
TIMEOUT_S = 25
RSS_LIMIT_MB = 1024

_STAT = re.compile(r"^stat::number_of_executed_units: (\d+)", re.MULTILINE)
_DONE = re.compile(r"^Done (\d+) runs in", re.MULTILINE)
_PROGRESS = re.compile(r"^#(\d+)\s", re.MULTILINE)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_EXCEPTION = re.compile(r"=== Uncaught Python exception: ===\n(.*)")


@dataclass(frozen=True)
class Result:
    harness: str
    executions: int
    crashes: list[str]
    returncode: int
    seconds: float
    output: str

    @property
    def crashed(self) -> bool:
        # A crash file or a non-zero exit (a deadly signal can end the process before libFuzzer
        # writes a file).
        return bool(self.crashes) or self.returncode != 0

    def crash_count(self) -> int:
        return max(len(self.crashes), 1 if self.returncode != 0 else 0)

    def summary(self) -> str:
        line = (
            f"{self.harness:<14} executions={self.executions:<9} crashes={self.crash_count()} "
            f"({self.seconds:.1f} s)"
        )
        first = _EXCEPTION.search(self.output)
        if first:
            line += f"\n    {first.group(1)}"
        for path in self.crashes:
            line += f"\n    crash file: {path}"
        return line


def harnesses() -> list[str]:
    """The target names: fuzz_<target>.py, each with a seed corpus in corpus/<target>/."""
    return sorted(p.stem.removeprefix("fuzz_") for p in FUZZ_DIR.glob("fuzz_*.py"))


def run(
    script: Path,
    corpus: Path,
    scratch: Path,
    *,
    runs: int | None = None,
    seconds: int | None = None,
    seed: int | None = None,
    name: str | None = None,
) -> Result:
    """Runs one harness; new inputs go to scratch/corpus/<name>, crash files to scratch/crashes/<name>."""
    name = name or script.stem.removeprefix("fuzz_")
    new_inputs = scratch / "corpus" / name
    crash_dir = scratch / "crashes" / name
    new_inputs.mkdir(parents=True, exist_ok=True)
    crash_dir.mkdir(parents=True, exist_ok=True)
    args = [
        sys.executable,
        str(script),
        f"-artifact_prefix={crash_dir}{os.sep}",
        f"-max_len={MAX_LEN}",
        f"-timeout={TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        # The summary at the end says how many inputs ran; the per-input lines are noise.
        "-print_final_stats=1",
    ]
    if runs is not None:
        args.append(f"-runs={runs}")
    if seconds is not None:
        args.append(f"-max_total_time={seconds}")
    if seed is not None:
        args.append(f"-seed={seed}")
    args += [str(new_inputs), str(corpus)]
    started = time.monotonic()
    env = {**os.environ, "FUZZ_WORKDIR": str(scratch / "work")}
    proc = subprocess.run(args, capture_output=True, text=True, errors="replace", check=False, env=env)
    output = proc.stdout + proc.stderr
    # The final stats when libFuzzer printed them; else its last progress line.
    counted = _STAT.search(output) or _DONE.search(output)
    progress = _PROGRESS.findall(output)
    executions = int(counted.group(1)) if counted else int(progress[-1]) if progress else 0
    return Result(
        name,
        executions,
        _ARTIFACT.findall(output),
        proc.returncode,
        time.monotonic() - started,
        output,
    )


def run_all(
    names: list[str],
    scratch: Path,
    *,
    runs: int | None = None,
    seconds: int | None = None,
    seed: int | None = None,
) -> list[Result]:
    return [
        run(FUZZ_DIR / f"fuzz_{n}.py", CORPUS_DIR / n, scratch, runs=runs, seconds=seconds, seed=seed)
        for n in names
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("harness", nargs="*", help=f"which to run (default: all of {', '.join(harnesses())})")
    parser.add_argument("--seconds", type=int, help="run each harness this long")
    parser.add_argument("--runs", type=int, help="run each harness for this many inputs")
    parser.add_argument("--seed", type=int, help="libFuzzer's random seed (default: a new one each run)")
    parser.add_argument("--scratch", type=Path, default=Path(".fuzz"), help="where new inputs and crashes go")
    args = parser.parse_args(argv)
    if args.seconds is None and args.runs is None:
        parser.error("give --seconds or --runs")
    names = args.harness or harnesses()
    unknown = [n for n in names if n not in harnesses()]
    if unknown:
        parser.error(f"unknown harness {', '.join(unknown)}; known: {', '.join(harnesses())}")
    failed = False
    for name in names:
        (result,) = run_all([name], args.scratch, runs=args.runs, seconds=args.seconds, seed=args.seed)
        print(result.summary(), flush=True)
        failed = failed or result.crashed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
