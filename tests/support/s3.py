"""A real S3 server for the backup tests: SeaweedFS (domicile.s3_server) on free ports, and the
credentials boto3 signs with (the server checks none)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from domicile.cluster import BackupSpec
from domicile.s3_server import LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, SeaweedServer

_CREDENTIALS = {"AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_KEY}


@contextmanager
def s3_server(root: Path) -> Iterator[SeaweedServer]:
    saved = {name: os.environ.get(name) for name in _CREDENTIALS}
    os.environ.update(_CREDENTIALS)
    server = SeaweedServer(root).start()
    try:
        yield server
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def backup_settings(server: SeaweedServer, region: str, **extra: Any) -> dict[str, Any]:
    """A cluster-config backup section: the session's one bucket (each new bucket costs the
    server volumes), under a prefix no other test uses."""
    return {
        "endpoint": server.endpoint,
        "bucket": "domicile-tests",
        "bucket_region": region,
        "prefix": f"t-{uuid.uuid4().hex[:16]}/",
        **extra,
    }


def backup_spec(server: SeaweedServer, region: str, **extra: Any) -> BackupSpec:
    """A region's backup section as a node receives it, for tests that drive a shipper alone."""
    return BackupSpec(**backup_settings(server, region, **extra))
