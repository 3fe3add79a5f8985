"""hold place, hold release, hold list: legal holds, which stop both expiry and erasure of what
they cover (a subject's records, a namespace, or one record) until released."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from domicile.cli import connect
from domicile.cli.output import iso_ms, print_json, table
from domicile.client import Client
from domicile.errors import InvalidArgument
from domicile.subjects import HoldScope, LegalHold

EXIT_OK = 0


def scope_of(subject: str | None, namespace: str | None, key: str | None) -> HoldScope:
    """The scope the options name: --subject, --namespace, or --namespace with --key."""
    if key is not None and namespace is None:
        raise InvalidArgument("--key needs --namespace: a key hold covers one record of a namespace")
    if subject is not None and namespace is not None:
        raise InvalidArgument("give --subject or --namespace (with --key for one record), not both")
    if subject is not None:
        return HoldScope.SUBJECT
    if namespace is None:
        raise InvalidArgument(
            "say what the hold covers: --subject S, --namespace NS or --namespace NS --key K"
        )
    return HoldScope.KEY if key is not None else HoldScope.NAMESPACE


def target_text(h: LegalHold) -> str:
    if h.scope is HoldScope.SUBJECT:
        return f"subject {h.subject_id}"
    if h.scope is HoldScope.NAMESPACE:
        return f"namespace {h.namespace}"
    if h.scope is HoldScope.KEY:
        return f"record {h.namespace}/{h.key}"
    return "?"


def hold_json(h: LegalHold) -> dict[str, Any]:
    return {
        "hold_id": h.hold_id,
        "scope": h.scope.label,
        "subject_id": h.subject_id,
        "namespace": h.namespace,
        "key": h.key,
        "reason": h.reason,
        "placed_unix_ms": h.placed_ms,
        "placed": iso_ms(h.placed_ms) if h.placed_ms else None,
    }


def holds_table(holds: Sequence[LegalHold]) -> str:
    rows = [
        [h.hold_id, h.scope.label, target_text(h), iso_ms(h.placed_ms) if h.placed_ms else "-", h.reason]
        for h in holds
    ]
    return table(["id", "scope", "covers", "placed", "reason"], rows)


def place(args: argparse.Namespace) -> int:
    scope = scope_of(args.subject, args.namespace, args.key)
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        hold = client.place_hold(
            scope,
            subject_id=args.subject or "",
            namespace=args.namespace or "",
            key=args.key or "",
            reason=args.reason,
        )
    if args.json:
        print_json(hold_json(hold))
    else:
        print(f"placed legal hold {hold.hold_id} on {target_text(hold)}: {hold.reason}")
    return EXIT_OK


def release(args: argparse.Namespace) -> int:
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        hold = client.release_hold(args.hold_id, args.reason)
    if args.json:
        print_json(hold_json(hold))
    else:
        print(f"released legal hold {hold.hold_id} on {target_text(hold)} (placed for: {hold.reason})")
    return EXIT_OK


def list_holds(args: argparse.Namespace) -> int:
    with Client(args.coordinator, deadline_s=args.deadline, **connect.client_options(args)) as client:
        holds = client.holds()
    if args.json:
        print_json({"holds": [hold_json(h) for h in holds]})
    elif not holds:
        print("no legal holds in force")
    else:
        print(holds_table(holds))
    return EXIT_OK
