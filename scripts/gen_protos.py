"""Generate the Python code for protos/domicile/v1 into domicile/v1.

Usage: gen_protos.py          regenerate in place
       gen_protos.py --check  exit 1 when the committed code differs from what protoc makes now

The generated files are committed so that clients need no protoc; --check keeps them honest.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = ROOT / "domicile" / "v1"
INIT_TEXT = (
    '"""Generated protobuf and gRPC code for domicile.v1: do not edit, run scripts/gen_protos.py."""\n'
)


def generate(out_root: Path) -> Path:
    """Runs protoc over every proto file and returns the generated package directory."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "domicile" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    # protoc finds the mypy plugins on PATH; they live beside this interpreter in the venv.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    package = out_root / "domicile" / "v1"
    (package / "__init__.py").write_text(INIT_TEXT)
    return package


def differences(generated: Path, committed: Path) -> list[str]:
    names = {p.name for p in generated.iterdir() if p.is_file()}
    names |= {p.name for p in committed.glob("*") if p.is_file() and p.suffix in {".py", ".pyi"}}
    out = []
    for name in sorted(names):
        a, b = generated / name, committed / name
        if not a.exists():
            out.append(f"{name}: committed but no longer generated")
        elif not b.exists():
            out.append(f"{name}: generated but not committed")
        elif not filecmp.cmp(a, b, shallow=False):
            out.append(f"{name}: differs from a fresh generation")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail when the committed code is stale")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        package = generate(Path(tmp))
        if options.check:
            stale = differences(package, OUT_PACKAGE)
            if stale:
                print("generated protobuf code is stale; run scripts/gen_protos.py", file=sys.stderr)
                for line in stale:
                    print(f"  {line}", file=sys.stderr)
                return 1
            print(f"generated protobuf code is up to date ({OUT_PACKAGE.relative_to(ROOT)})")
            return 0
        OUT_PACKAGE.mkdir(parents=True, exist_ok=True)
        for old in OUT_PACKAGE.glob("*.py*"):
            old.unlink()
        for new in package.iterdir():
            if new.is_file():
                shutil.copy2(new, OUT_PACKAGE / new.name)
    print(f"generated {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
