"""What a redacted read answers: the version with the fields the policy removed emptied."""

from __future__ import annotations

import dataclasses

from domicile.causality import Version


def redact(version: Version, fields: tuple[str, ...]) -> Version:
    """The version with the named fields emptied (and the checksum with the value, since a hash
    of a short value gives the value away)."""
    if not fields:
        return version
    gone = set(fields)
    return dataclasses.replace(
        version,
        value=b"" if "value" in gone else version.value,
        checksum=b"" if "value" in gone else version.checksum,
        content_type="" if "content_type" in gone else version.content_type,
        subject_id="" if "subject_id" in gone else version.subject_id,
        subject_jurisdiction="" if "subject_jurisdiction" in gone else version.subject_jurisdiction,
    )
