"""A real MongoDB wire-protocol server for tests: SecantusDB (PyPI `secantusdb`) started on a
free port and stopped afterwards, or the server DOMICILE_TEST_MONGODB_URI names (a mongod run
as a replica set), in which case every test database is dropped at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pymongo

from domicile.ports import free_port

START_TIMEOUT_S = 60.0
URI_VARIABLE = "DOMICILE_TEST_MONGODB_URI"


def with_option(uri: str, option: str) -> str:
    """`uri` with one more connection option ("name=value"), after any it has."""
    return f"{uri}{'&' if '?' in uri else '?'}{option}"


class MongoServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.external = os.environ.get(URI_VARIABLE, "")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._log = root / "secantus.log"
        self._databases: list[str] = []

    @property
    def uri(self) -> str:
        return self.external or f"mongodb://127.0.0.1:{self.port}/"

    def database_name(self, label: str = "t") -> str:
        """A database name no other test uses (dropped at stop when the server is external)."""
        name = f"{label}_{uuid.uuid4().hex[:12]}"
        self._databases.append(name)
        return name

    def start(self) -> MongoServer:
        if self.external:
            self._wait_ready()
            return self
        if not self.port:
            self.port = free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "secantus",
                    "--host", "127.0.0.1",
                    "--port", str(self.port),
                    "--storage-path", str(self.root / "data"),
                    "--log-level", "WARNING",
                    # Without it SecantusDB acknowledges a journaled write before its log reaches
                    # the file, and a killed server loses it (test_a_database_outage_... found this).
                    "--sync-on-commit",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"SecantusDB exited with {self.process.returncode}: {self._log.read_text()[-2000:]}"
                )
            try:
                client: pymongo.MongoClient[dict[str, Any]]
                with pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=500) as client:
                    client.admin.command("ping")
                return
            except pymongo.errors.PyMongoError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"no MongoDB answered at {self.uri} within {START_TIMEOUT_S} s"
                    ) from None
                time.sleep(0.1)

    def kill(self) -> None:
        """Ends the server at once (SIGKILL), as a crash or a lost machine would."""
        if self.external:
            raise RuntimeError(f"cannot kill the external server {URI_VARIABLE} names")
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        if self.external:
            client: pymongo.MongoClient[dict[str, Any]]
            with pymongo.MongoClient(self.uri, serverSelectionTimeoutMS=2000) as client:
                for name in self._databases:
                    client.drop_database(name)
            return
        # A test's server holds nothing to keep: it is killed rather than stopped, since
        # SecantusDB's orderly stop checkpoints its storage first (3.3 s for an empty server;
        # about 2 s more than a kill at the end of a full run, whose last teardown went from
        # 22.2 to 20.1 s: the rest was SeaweedFS's stop, see domicile/s3_server.py).
        self.kill()
