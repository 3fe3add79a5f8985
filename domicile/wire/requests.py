"""SDK calls -> request messages. Arguments are checked here, before anything is sent, so that a
caller's mistake is reported with what is allowed instead of as a remote refusal."""

from __future__ import annotations

import uuid

from domicile.causality import CausalContext
from domicile.errors import InvalidArgument
from domicile.model import (
    Classification,
    Limits,
    check_jurisdiction,
    check_key,
    check_namespace_name,
    check_request_id,
    check_text,
)
from domicile.subjects import HoldScope, RequestKind, check_reason, check_subject_id
from domicile.v1 import coordinator_pb2 as cpb
from domicile.v1 import storage_node_pb2 as spb
from domicile.wire.limits import SUBJECT_REQUESTS_LIMIT_MAX, VIOLATIONS_MAX_LIMIT

LIMITS = Limits()


def check_name(namespace: str, key: str | None = None) -> None:
    if not isinstance(namespace, str):
        raise InvalidArgument(f"namespace must be a str; got {type(namespace).__name__}")
    check_namespace_name(namespace)
    if key is not None:
        if not isinstance(key, str):
            raise InvalidArgument(f"key must be a str; got {type(key).__name__}")
        check_key(key, LIMITS)


def classification_arg(value: Classification | str | None) -> Classification:
    if value is None:
        return Classification.UNSPECIFIED
    if isinstance(value, Classification):
        return value
    if isinstance(value, str):
        return Classification.parse(value)
    raise InvalidArgument(f"classification must be a Classification or its name; got {type(value).__name__}")


def optional_text(value: str | None, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{name} must be a str; got {type(value).__name__}")
    check_text(value, name)
    return value


def refuse_plain_context(context: CausalContext | None) -> None:
    """A plain CausalContext is no longer sent: nothing authenticates it, so nodes refuse it."""
    if context is None:
        return
    raise InvalidArgument(
        "a plain context is no longer accepted (it is not authenticated): pass context_token=, the "
        "context_token of an earlier get, put, delete or scan of this key, unchanged"
    )


def context_token_arg(token: bytes | None) -> bytes:
    """A context token as given: opaque bytes from an earlier result, passed on unchanged."""
    if token is None:
        return b""
    if not isinstance(token, bytes | bytearray):
        raise InvalidArgument(
            "context_token must be the bytes of an earlier result's context_token; "
            f"got {type(token).__name__}"
        )
    return bytes(token)


def put_request(
    namespace: str,
    key: str,
    value: bytes,
    context: CausalContext | None,
    subject_id: str,
    subject_jurisdiction: str,
    classification: Classification | str | None,
    content_type: str,
    context_token: bytes | None = None,
    request_id: str | None = None,
) -> spb.PutRequest:
    check_name(namespace, key)
    refuse_plain_context(context)
    if not isinstance(value, bytes | bytearray | memoryview):
        raise InvalidArgument(f"value must be bytes; got {type(value).__name__} (encode text first)")
    req = spb.PutRequest(
        namespace=namespace,
        key=key,
        value=bytes(value),
        content_type=optional_text(content_type, "content_type"),
        subject_id=optional_text(subject_id, "subject_id"),
        subject_jurisdiction=optional_text(subject_jurisdiction, "subject_jurisdiction"),
        classification=int(classification_arg(classification)),  # type: ignore[arg-type]
        context_token=context_token_arg(context_token),
        request_id=request_id_arg(request_id),
    )
    return req


def request_id_arg(request_id: str | None) -> str:
    """The id of one logical write: the caller's, or a new random one. The request is built once
    per write and sent as is by every retry, so every attempt carries the same id and the
    cluster writes it once (a retry after a timeout may reach a node that has it already)."""
    if request_id is None:
        return uuid.uuid4().hex
    check_request_id(request_id)
    return request_id


def delete_request(
    namespace: str,
    key: str,
    context: CausalContext | None,
    subject_id: str | None = None,
    subject_jurisdiction: str | None = None,
    context_token: bytes | None = None,
    request_id: str | None = None,
) -> spb.DeleteRequest:
    check_name(namespace, key)
    refuse_plain_context(context)
    req = spb.DeleteRequest(
        namespace=namespace,
        key=key,
        context_token=context_token_arg(context_token),
        subject_id=optional_text(subject_id, "subject_id"),
        subject_jurisdiction=optional_text(subject_jurisdiction, "subject_jurisdiction"),
        request_id=request_id_arg(request_id),
    )
    return req


def check_region_name(region: str) -> None:
    if not isinstance(region, str) or not region:
        raise InvalidArgument(f"a region name is required; got {region!r}")


def check_violations_max(violations_max: int) -> None:
    if not 1 <= violations_max <= VIOLATIONS_MAX_LIMIT:
        raise InvalidArgument(f"violations_max is {violations_max}; use 1 to {VIOLATIONS_MAX_LIMIT}")


def check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= LIMITS.scan_page_size_max:
        raise InvalidArgument(f"page_size is {page_size}; use 1 to {LIMITS.scan_page_size_max}")


def subject_arg(subject_id: str) -> str:
    if not isinstance(subject_id, str):
        raise InvalidArgument(f"subject_id must be a str; got {type(subject_id).__name__}")
    check_subject_id(subject_id)
    return subject_id


def reason_arg(reason: str, *, required: bool) -> str:
    if not isinstance(reason, str):
        raise InvalidArgument(f"reason must be a str; got {type(reason).__name__}")
    check_text(reason, "reason")
    check_reason(reason, required=required)
    return reason


def jurisdiction_arg(subject_jurisdiction: str | None) -> str:
    code = optional_text(subject_jurisdiction, "subject_jurisdiction")
    check_jurisdiction(code)
    return code


def id_arg(value: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(f"a {name} is required, as printed when it was created; got {value!r}")
    check_text(value, name)
    return value


def erase_request(subject_id: str, reason: str, subject_jurisdiction: str | None) -> cpb.EraseSubjectRequest:
    return cpb.EraseSubjectRequest(
        subject_id=subject_arg(subject_id),
        reason=reason_arg(reason, required=True),
        subject_jurisdiction=jurisdiction_arg(subject_jurisdiction),
    )


def access_request(
    subject_id: str, reason: str, subject_jurisdiction: str | None
) -> cpb.OpenSubjectRequestRequest:
    return cpb.OpenSubjectRequestRequest(
        kind=int(RequestKind.ACCESS),  # type: ignore[arg-type]
        subject_id=subject_arg(subject_id),
        subject_jurisdiction=jurisdiction_arg(subject_jurisdiction),
        reason=reason_arg(reason, required=False),
    )


def complete_request(request_id: str, records_exported: int) -> cpb.CompleteSubjectRequestRequest:
    if isinstance(records_exported, bool) or not isinstance(records_exported, int) or records_exported < 0:
        raise InvalidArgument(
            f"records_exported is {records_exported!r}; it must be a whole number, 0 or more"
        )
    return cpb.CompleteSubjectRequestRequest(
        request_id=id_arg(request_id, "request id"), records_exported=records_exported
    )


def list_requests_request(open_only: bool, limit: int) -> cpb.ListSubjectRequestsRequest:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SUBJECT_REQUESTS_LIMIT_MAX:
        raise InvalidArgument(f"limit is {limit!r}; use 1 to {SUBJECT_REQUESTS_LIMIT_MAX}")
    return cpb.ListSubjectRequestsRequest(open_only=bool(open_only), limit=limit)


def hold_scope_arg(scope: HoldScope | str) -> HoldScope:
    if isinstance(scope, HoldScope):
        if scope is HoldScope.UNSPECIFIED:
            raise InvalidArgument("a legal hold scope is required; allowed: subject, namespace, key")
        return scope
    if isinstance(scope, str):
        return HoldScope.parse(scope)
    raise InvalidArgument(f"scope must be a HoldScope or its name; got {type(scope).__name__}")


def place_hold_request(
    scope: HoldScope | str, subject_id: str, namespace: str, key: str, reason: str
) -> cpb.PlaceLegalHoldRequest:
    """Checks that the hold names exactly what its scope covers: a subject, a namespace, or a
    namespace and a key."""
    kind = hold_scope_arg(scope)
    subject_id = optional_text(subject_id, "subject_id")
    namespace = optional_text(namespace, "namespace")
    key = optional_text(key, "key")
    if kind is HoldScope.SUBJECT:
        subject_arg(subject_id)
        if namespace or key:
            raise InvalidArgument(
                "a subject hold covers every record of the subject: give no namespace or key"
            )
    else:
        if subject_id:
            raise InvalidArgument(f"a {kind.label} hold names a namespace, not a subject; use scope subject")
        if not namespace:
            raise InvalidArgument(f"a {kind.label} hold needs a namespace")
        if kind is HoldScope.NAMESPACE and key:
            raise InvalidArgument(
                "a namespace hold covers the whole namespace: give no key (or use scope key)"
            )
        check_name(namespace, key if kind is HoldScope.KEY else None)
    return cpb.PlaceLegalHoldRequest(
        scope=int(kind),  # type: ignore[arg-type]
        subject_id=subject_id,
        namespace=namespace,
        key=key,
        reason=reason_arg(reason, required=True),
    )


def release_hold_request(hold_id: str, reason: str) -> cpb.ReleaseLegalHoldRequest:
    return cpb.ReleaseLegalHoldRequest(
        hold_id=id_arg(hold_id, "hold id"), reason=reason_arg(reason, required=True)
    )


def export_request(region: str, subject_id: str, request_id: str) -> spb.ExportSubjectRequest:
    check_region_name(region)
    return spb.ExportSubjectRequest(
        subject_id=subject_arg(subject_id), request_id=optional_text(request_id, "request_id")
    )
