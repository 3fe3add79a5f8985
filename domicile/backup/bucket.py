"""The region's backup bucket through boto3: whole-object puts and gets, each checked against
the sha256 its metadata carries."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from domicile.backup.format import META_SHA256, sha256_hex
from domicile.cluster import BackupSpec
from domicile.errors import DataCorruption, Unavailable

# Backups run beside serving: a stalled endpoint must not hold a shipping round for minutes.
_CLIENT_CONFIG = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


class Bucket:
    def __init__(self, spec: BackupSpec) -> None:
        self.spec = spec
        self.name = spec.bucket
        self._s3: Any = boto3.client(
            "s3", endpoint_url=spec.endpoint, region_name=spec.bucket_region, config=_CLIENT_CONFIG
        )

    def ensure(self) -> None:
        """Creates the bucket when it does not exist yet (a local server starts empty)."""
        try:
            self._s3.head_bucket(Bucket=self.name)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise _unavailable(self, "head_bucket", error) from None
            try:
                self._s3.create_bucket(Bucket=self.name)
            except (ClientError, BotoCoreError) as exc:
                raise _unavailable(self, "create_bucket", exc) from None
        except BotoCoreError as error:
            raise _unavailable(self, "head_bucket", error) from None

    def put(self, key: str, body: bytes, metadata: Mapping[str, str] | None = None) -> str:
        """Stores body under key with its sha256 in the metadata; returns the sha256."""
        digest = sha256_hex(body)
        meta = {**(metadata or {}), META_SHA256: digest}
        try:
            self._s3.put_object(Bucket=self.name, Key=key, Body=body, Metadata=meta)
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(self, f"put {key}", error) from None
        return digest

    def get(self, key: str, expected_sha256: str = "") -> tuple[bytes, dict[str, str]]:
        """The body and metadata of key, after checking the body against its sha256 (the
        metadata's, and expected_sha256 when given)."""
        try:
            reply = self._s3.get_object(Bucket=self.name, Key=key)
            body: bytes = reply["Body"].read()
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(self, f"get {key}", error) from None
        meta: dict[str, str] = dict(reply.get("Metadata") or {})
        actual = sha256_hex(body)
        for claimed in (meta.get(META_SHA256, ""), expected_sha256):
            if claimed and claimed != actual:
                raise DataCorruption(
                    f"backup object {key} in bucket {self.name} does not match its sha256 "
                    f"({actual[:16]}… read, {claimed[:16]}… recorded); it is damaged"
                )
        if not meta.get(META_SHA256):
            raise DataCorruption(f"backup object {key} in bucket {self.name} carries no sha256")
        return body, meta

    def head(self, key: str) -> dict[str, str]:
        try:
            reply = self._s3.head_object(Bucket=self.name, Key=key)
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(self, f"head {key}", error) from None
        return dict(reply.get("Metadata") or {})

    def objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under prefix, in key order."""
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
            for page in pages:
                for item in page.get("Contents", []):
                    yield StoredObject(str(item["Key"]), int(item["Size"]))
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(self, f"list {prefix}", error) from None

    def children(self, prefix: str) -> list[str]:
        """The names one level below prefix (S3 common prefixes, without the trailing /)."""
        names: list[str] = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=prefix, Delimiter="/"
            )
            for page in pages:
                for item in page.get("CommonPrefixes", []):
                    names.append(str(item["Prefix"])[len(prefix) :].rstrip("/"))
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(self, f"list {prefix}", error) from None
        return sorted(names)

    def delete_prefix(self, prefix: str) -> int:
        """Deletes every object under prefix; returns how many."""
        keys = [o.key for o in self.objects(prefix)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            try:
                self._s3.delete_objects(Bucket=self.name, Delete={"Objects": batch, "Quiet": True})
            except (ClientError, BotoCoreError) as error:
                raise _unavailable(self, f"delete under {prefix}", error) from None
        return len(keys)


def _unavailable(bucket: Bucket, what: str, error: Exception) -> Unavailable:
    return Unavailable(f"backup bucket {bucket.name} at {bucket.spec.endpoint}: {what} failed: {error}")
