"""Runs the Domicile benchmarks: `python bench/run.py [--quick] [--out FILE]` (see --help)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The benchmark forks its children while gRPC threads run; gRPC's fork handlers would only log
# that they skip themselves (the children exec a new interpreter at once).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# Run as a script from any directory: make the repository importable (bench is not installed).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.main import main

if __name__ == "__main__":
    sys.exit(main())
