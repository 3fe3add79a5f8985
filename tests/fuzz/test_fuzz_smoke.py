"""Every fuzz harness, for a short fixed number of inputs over its committed seed corpus: the
seeds still load, and the mutations nearest to them find no crash. `make fuzz` runs them for
longer. A negative control proves the runner reports a crash when there is one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fuzz import runner

# Inputs per harness: chosen so that all of them together take well under a minute on two cores
# (the YAML and Cedar harnesses run a few hundred inputs a second, the others tens of thousands).
RUNS = {
    "authz": 600,
    "authz_schema": 200,
    "cluster": 600,
    "context_tokens": 50_000,
    "policy_pack": 1000,
    "records": 100_000,
    "requests": 50_000,
}
# A fixed seed: the same mutations on every run, so a failure here reproduces.
SEED = 1


def test_every_harness_has_runs_and_a_seed_corpus() -> None:
    assert sorted(RUNS) == runner.harnesses()
    for name in runner.harnesses():
        seeds = list((runner.CORPUS_DIR / name).iterdir())
        assert seeds, f"corpus/{name} is empty"
        # A small corpus: enough to start from, not a second copy of the fuzzer's findings.
        assert sum(p.stat().st_size for p in seeds) < 16 * 1024, name


@pytest.mark.parametrize("name", sorted(RUNS))
def test_harness_finds_no_crash(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (result,) = runner.run_all([name], tmp_path, runs=RUNS[name], seed=SEED)
    with capsys.disabled():
        print(f"\n  fuzz smoke: {result.summary()}")
    assert not result.crashed, result.output[-4000:]
    assert result.executions >= RUNS[name]
    # The committed corpus is only read; what the run learnt went to the scratch directory.
    assert not any(p.name.startswith("crash-") for p in (runner.CORPUS_DIR / name).iterdir())


CRASHING_HARNESS = textwrap.dedent(
    """
    import sys

    import atheris

    from domicile.errors import InvalidArgument, DomicileError


    def target(data: bytes) -> None:
        if b"\\x07" in data:
            {}  # the planted bug
        raise InvalidArgument("refused")  # a clean domain error: not a crash


    def test_one_input(data: bytes) -> None:
        try:
            target(data)
        except DomicileError:
            pass


    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
    """
)


@pytest.mark.parametrize("bug", ["{}['missing']", "raise ValueError('from a library')"])
def test_runner_reports_a_crash(bug: str, tmp_path: Path) -> None:
    """Negative control: a harness whose target fails on one byte with an exception that is not a
    domain error is reported as crashed, with its crash file, and the smoke test would fail."""
    script = tmp_path / "fuzz_planted.py"
    script.write_text(CRASHING_HARNESS.format(bug))
    corpus = tmp_path / "seeds"
    corpus.mkdir()
    (corpus / "clean").write_bytes(b"\x01\x02")
    (corpus / "bad").write_bytes(b"\x01\x07")
    result = runner.run(script, corpus, tmp_path / "scratch", runs=100, seed=SEED)
    assert result.crashed
    assert result.crash_count() == 1
    (crash,) = result.crashes
    assert b"\x07" in Path(crash).read_bytes()
    assert "Uncaught Python exception" in result.output


def test_runner_reports_no_crash_for_domain_errors(tmp_path: Path) -> None:
    """The control's other half: the same harness without the planted bug is clean."""
    script = tmp_path / "fuzz_clean.py"
    script.write_text(CRASHING_HARNESS.format("pass"))
    corpus = tmp_path / "seeds"
    corpus.mkdir()
    (corpus / "bad").write_bytes(b"\x01\x07")
    result = runner.run(script, corpus, tmp_path / "scratch", runs=200, seed=SEED)
    assert not result.crashed, result.output[-2000:]
    assert result.executions >= 200


def test_replaying_a_crash_file_reproduces_it(tmp_path: Path) -> None:
    """What the README says to do with a crash file: pass it to the harness, which runs it once."""
    script = tmp_path / "fuzz_planted.py"
    script.write_text(CRASHING_HARNESS.format("{}['missing']"))
    crash = tmp_path / "crash-planted"
    crash.write_bytes(b"\x07")
    proc = subprocess.run(
        [sys.executable, str(script), str(crash)], capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0
    assert "KeyError: 'missing'" in proc.stdout + proc.stderr
