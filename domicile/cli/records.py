"""put, get, delete and scan."""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence
from pathlib import Path

from domicile.cli import connect
from domicile.cli.output import (
    context_arg,
    context_json,
    dot_text,
    print_json,
    version_json,
    write_value_line,
)
from domicile.client import Client, ReadVersion
from domicile.errors import InvalidArgument

EXIT_OK = 0
EXIT_NOT_FOUND = 1


def _client(args: argparse.Namespace) -> Client:
    return Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args))


def _value(args: argparse.Namespace) -> bytes:
    if args.value_file is not None:
        path = Path(args.value_file)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read --value-file {path}: {exc.strerror}") from None
    value: str = args.value
    return value.encode("utf-8")


def put(args: argparse.Namespace) -> int:
    token = context_arg(args.context) if args.context else None
    with _client(args) as client:
        result = client.put(
            args.namespace,
            args.key,
            _value(args),
            context_token=token,
            subject_id=args.subject_id,
            subject_jurisdiction=args.subject_jurisdiction,
            classification=args.classification,
            content_type=args.content_type,
            region=args.region,
        )
    if args.json:
        print_json(
            {
                "namespace": args.namespace,
                "key": args.key,
                "region": result.region,
                "lsn": result.lsn,
                "version": version_json(result.version),
                "context": context_json(result.context, result.context_token),
            }
        )
    else:
        print(
            f"written {args.namespace}/{args.key} region={result.region} "
            f"dot={dot_text(result.version)} lsn={result.lsn} "
            f"context={context_json(result.context, result.context_token)}"
        )
    return EXIT_OK


def _note_redactions(versions: Sequence[ReadVersion]) -> None:
    # On stderr: stdout carries exactly the value, and a redacted value is empty.
    for version in versions:
        if version.redacted_fields:
            print(
                f"note: version {dot_text(version)}: the residency policy redacted "
                f"{', '.join(version.redacted_fields)} from this read",
                file=sys.stderr,
            )


def get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        result = client.get(args.namespace, args.key, region=args.region)
    if not args.json:
        _note_redactions(result.versions)
    if args.json:
        print_json(
            {
                "namespace": args.namespace,
                "key": args.key,
                "found": result.found,
                "region": result.region,
                "versions": [version_json(v) for v in result.versions],
                "context": context_json(result.context, result.context_token),
            }
        )
    elif len(result.versions) == 1:
        write_value_line(result.versions[0].value)
    else:
        # Concurrent siblings: one per line, each with the dot that identifies it.
        for version in result.versions:
            write_value_line(version.value, prefix=f"{dot_text(version)}\t")
    return EXIT_OK if result.found else EXIT_NOT_FOUND


def delete(args: argparse.Namespace) -> int:
    token = context_arg(args.context) if args.context else None
    with _client(args) as client:
        result = client.delete(
            args.namespace,
            args.key,
            context_token=token,
            region=args.region,
            subject_id=args.subject_id or None,
            subject_jurisdiction=args.subject_jurisdiction or None,
        )
    if args.json:
        print_json(
            {
                "namespace": args.namespace,
                "key": args.key,
                "existed": result.existed,
                "region": result.region,
                "lsn": result.lsn,
                "context": context_json(result.context, result.context_token),
            }
        )
    else:
        existed = "true" if result.existed else "false"
        print(
            f"deleted {args.namespace}/{args.key} region={result.region} existed={existed} "
            f"dot={dot_text(result.version)} lsn={result.lsn} "
            f"context={context_json(result.context, result.context_token)}"
        )
    return EXIT_OK


def scan(args: argparse.Namespace) -> int:
    page_size = min(args.limit, 1000) if args.limit else 100
    with _client(args) as client:
        items = client.scan(args.namespace, args.prefix, region=args.region, page_size=page_size)
        for item in itertools.islice(items, args.limit):
            if args.json:
                # JSON Lines: one record per line, so that a long scan streams.
                print_json(
                    {
                        "key": item.key,
                        "versions": [version_json(v) for v in item.versions],
                        "context": context_json(item.context, item.context_token),
                    }
                )
            else:
                for version in item.versions:
                    write_value_line(version.value, prefix=f"{item.key}\t")
    return EXIT_OK
