"""`python -m domicile.die_with_parent PARENT_PID PROGRAM ARGS...`: runs PROGRAM so that it
gets SIGTERM when the process that started it dies, even by SIGKILL, so that no daemon outlives
its supervisor (`domicile up`, the benchmarks).

This replaces a `preexec_fn`: that runs Python between fork and exec, which in a parent with
threads (gRPC's, once a run has clients) can crash the child before it starts. The death signal
set here survives the exec.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent, program = int(sys.argv[1]), sys.argv[2:]
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            sys.exit(1)
    os.execv(program[0], program)


if __name__ == "__main__":
    main()
