"""The data-subject request desk: erasure and access requests, and legal holds.

An erasure request orders every region that has a node to erase a subject's records (any of
them may hold copies, whatever the policy says now); the order rides in the subject orders
every node watches (WatchSubjectOrders, apart from the topology) until each of those regions has
reported what it did, and then the request is completed. A
region without a node holds nothing and is not waited for; when it gains its first node while
the request is open, it is added (reconcile), so that node erases and blocks the subject too.
An access request is only recorded here: the exporter reads the regions and completes it. A
legal hold rides in the subject orders while in force.

Like the registry, the desk runs on the daemon's event loop (no locks) and commits every change
to the store before memory changes and before anything is published. A change that nodes must
see (an erasure opened, a region reporting, a hold placed or released) is written in the same
transaction as the topology revision it is published at (Registry.touch), so a crash can never
leave an erasure stored but unpublished. Access requests are not published and do not bump the
revision. batch() makes many changes in one revision.

Subject ids are personal data: log lines name request ids only.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from coordinator.config import CoordinatorLimits
from coordinator.registry import Registry
from coordinator.store import CoordinatorStore, SubjectChanges
from domicile.audit import subject_hash
from domicile.cluster import ClusterSpec
from domicile.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable
from domicile.model import Limits, check_jurisdiction, check_key, check_node_id
from domicile.subjects import (
    ErasureOrder,
    HoldRelease,
    HoldScope,
    LegalHold,
    RegionReceipt,
    RequestKind,
    RequestStatus,
    SubjectRequest,
    check_reason,
    check_subject_id,
    due_ms,
)
from domicile.wire.limits import (
    ERASED_SUBJECTS_IN_REGISTRATION_MAX,
    ERASED_SUBJECTS_PAGE_DEFAULT,
    ERASED_SUBJECTS_PAGE_MAX,
    SUBJECT_REQUESTS_LIMIT_DEFAULT,
    SUBJECT_REQUESTS_LIMIT_MAX,
)

log = logging.getLogger(__name__)

ID_HEX_DIGITS = 10
REQUEST_ID_RE = re.compile(r"^req-[0-9a-f]{10}\Z")
HOLD_ID_RE = re.compile(r"^hold-[0-9a-f]{10}\Z")
_HEX_RE = re.compile(r"^[0-9a-f]{10}\Z")
# With 16**10 ids a collision is rare; this many in a row means a broken generator.
ID_ATTEMPTS_MAX = 16
# SQLite integers are signed 64-bit.
COUNT_MAX = 2**63 - 1
KINDS = (RequestKind.ERASURE, RequestKind.ACCESS)


def random_hex() -> str:
    """Ten random lower-case hex digits."""
    return secrets.token_hex(ID_HEX_DIGITS // 2)


def check_request_id(request_id: str) -> None:
    if not request_id:
        raise InvalidArgument("a request id is required (req- followed by 10 hex digits)")
    if not REQUEST_ID_RE.match(request_id):
        raise InvalidArgument(
            f"invalid request id {request_id[:64]!r}: request ids are req- followed by 10 lower-case "
            "hex digits, e.g. req-0001f3c2a9"
        )


def check_hold_id(hold_id: str) -> None:
    if not hold_id:
        raise InvalidArgument("a hold id is required (hold- followed by 10 hex digits)")
    if not HOLD_ID_RE.match(hold_id):
        raise InvalidArgument(
            f"invalid hold id {hold_id[:64]!r}: hold ids are hold- followed by 10 lower-case hex "
            "digits, e.g. hold-0001f3c2a9"
        )


def check_open_kind(kind: int) -> RequestKind:
    """The kind of request OpenSubjectRequest accepts: access only."""
    if kind == RequestKind.ERASURE:
        raise InvalidArgument("erasure requests cannot be opened here; use EraseSubject")
    if kind != RequestKind.ACCESS:
        raise InvalidArgument(
            f"request kind {kind} cannot be opened; allowed: SUBJECT_REQUEST_KIND_ACCESS "
            "(erasures go through EraseSubject)"
        )
    return RequestKind.ACCESS


def _check_limit(limit: int, default: int, maximum: int, unit: str = "") -> int:
    """A page size from a request: 1 to `maximum`, 0 meaning `default`."""
    if limit == 0:
        return default
    if not 1 <= limit <= maximum:
        raise InvalidArgument(f"limit {limit} is out of range: 1 to {maximum}{unit}, or 0 for {default}")
    return limit


def check_list_limit(limit: int) -> int:
    """The number of requests to list: 1 to 1000, 0 meaning the default of 100."""
    return _check_limit(limit, SUBJECT_REQUESTS_LIMIT_DEFAULT, SUBJECT_REQUESTS_LIMIT_MAX)


def check_erased_page_limit(limit: int) -> int:
    """The size of a page of the erased-subject list: 1 to 10,000, 0 meaning 5,000."""
    return _check_limit(
        limit, ERASED_SUBJECTS_PAGE_DEFAULT, ERASED_SUBJECTS_PAGE_MAX, " erased subjects a page"
    )


def check_erased_cursor(after_request_id: str) -> None:
    if not REQUEST_ID_RE.match(after_request_id):
        raise InvalidArgument(
            f"invalid after_request_id {after_request_id[:64]!r}: it is empty for the first page, else "
            "the next_after_request_id of the previous page (req- followed by 10 lower-case hex digits)"
        )


@dataclass(frozen=True)
class ErasedPage:
    """A page of the permanent erasure list: the list's key, (subject hash, request id) pairs,
    the cursor of the next page ("" on the last) and how many entries the list had."""

    key: bytes
    entries: tuple[tuple[str, str], ...]
    next_after_request_id: str
    total: int


def erasure_orders(requests: dict[str, SubjectRequest]) -> tuple[ErasureOrder, ...]:
    """The orders the topology carries for the open requests (oldest first)."""
    return tuple(
        ErasureOrder(r.request_id, r.subject_id, r.received_ms, r.regions_pending, r.requested_by)
        for r in requests.values()
        if r.kind is RequestKind.ERASURE
    )


def _erasing(requests: dict[str, SubjectRequest]) -> dict[str, str]:
    """Subject id -> the open erasure request of the subject."""
    return {r.subject_id: r.request_id for r in requests.values() if r.kind is RequestKind.ERASURE}


def _regions_of(request: SubjectRequest) -> list[str]:
    return sorted({*request.regions_pending, *(r.region for r in request.receipts)})


class SubjectDesk:
    """`now_ms` is the wall clock (milliseconds since the Unix epoch) that stamps requests and
    decides what is overdue; `random_hex` draws the 10 hex digits of new ids. Inject both in
    tests. `on_change` runs after every committed change (metrics)."""

    def __init__(
        self,
        cluster: ClusterSpec,
        store: CoordinatorStore,
        registry: Registry,
        *,
        limits: CoordinatorLimits,
        now_ms: Callable[[], int],
        random_hex: Callable[[], str] = random_hex,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._cluster = cluster
        self._store = store
        self._registry = registry
        self._limits = limits
        self._now_ms = now_ms
        self._random_hex = random_hex
        self._on_change = on_change
        # Open requests and holds in force, oldest first (dicts keep insertion order). Completed
        # requests and released holds stay in the store only, so memory does not grow with time.
        self._open: dict[str, SubjectRequest] = {r.request_id: r for r in store.open_requests()}
        self._holds: dict[str, LegalHold] = {h.hold_id: h for h in store.holds_in_force()}
        # The open erasure of each subject: one lookup per new request, not a scan of all.
        self._erasing = _erasing(self._open)
        # Inside batch(): the changes made so far, written in one revision when the block ends.
        self._batched: list[SubjectChanges] | None = None
        self._batched_orders = False
        configured = set(cluster.region_names())
        for request in self._open.values():
            gone = sorted(set(request.regions_pending) - configured)
            if gone:
                log.warning(
                    "erasure request %s waits for regions %s, which the cluster config no longer has; "
                    "it completes only when they report",
                    request.request_id,
                    ", ".join(gone),
                )

    # --- requests ---------------------------------------------------------------------------

    def erase(
        self, subject_id: str, reason: str, jurisdiction: str = "", requested_by: str = ""
    ) -> SubjectRequest:
        """Opens an erasure request and orders every region with a node to carry it out.
        `requested_by`: the DPO's verified identity, which every region audits its steps as."""
        self._check_open()
        check_subject_id(subject_id)
        check_reason(reason, required=True)
        check_jurisdiction(jurisdiction)
        existing_id = self._erasing.get(subject_id)
        existing = self._open.get(existing_id) if existing_id is not None else None
        if existing is not None:
            raise AlreadyExists(
                f"an erasure of this subject is already open: {existing.request_id}, regions pending: "
                f"{', '.join(existing.regions_pending) or 'none'}; follow it with GetSubjectRequest"
            )
        request = self._new_request(RequestKind.ERASURE, subject_id, jurisdiction, reason)
        request = replace(request, regions_pending=self._ordered_regions(), requested_by=requested_by)
        if not request.regions_pending:
            # No node has ever registered, so no region holds anything to erase.
            request = replace(request, status=RequestStatus.COMPLETED, completed_ms=request.received_ms)
        self._commit_requests(request)
        log.info(
            "erasure request %s opened; due %d; %d regions to report",
            request.request_id,
            request.due_ms,
            len(request.regions_pending),
        )
        return request

    def open_access(self, subject_id: str, jurisdiction: str = "", reason: str = "") -> SubjectRequest:
        """Records an access request; the exporter completes it with complete_access."""
        self._check_open()
        check_subject_id(subject_id)
        check_reason(reason, required=False)
        check_jurisdiction(jurisdiction)
        request = self._new_request(RequestKind.ACCESS, subject_id, jurisdiction, reason)
        self._commit_requests(request)
        log.info("access request %s opened; due %d", request.request_id, request.due_ms)
        return request

    def complete_access(self, request_id: str, records_exported: int) -> SubjectRequest:
        self._check_open()
        request = self._find(request_id)
        if request.kind is not RequestKind.ACCESS:
            raise FailedPrecondition(
                f"request {request_id} is an {request.kind.label} request; it completes when every "
                "region has reported with ReportErasure, and only access requests are completed here"
            )
        if request.status is not RequestStatus.OPEN:
            raise FailedPrecondition(
                f"access request {request_id} was completed already at {request.completed_ms} ms "
                f"({request.records_exported} records exported); only open requests can be completed"
            )
        if not 0 <= records_exported <= COUNT_MAX:
            raise InvalidArgument(f"records exported must be 0 to {COUNT_MAX}, not {records_exported}")
        done = replace(
            request,
            status=RequestStatus.COMPLETED,
            completed_ms=self._now_ms(),
            records_exported=records_exported,
        )
        self._commit_requests(done)
        log.info("access request %s completed; %d records exported", request_id, records_exported)
        return done

    def report_erasure(self, request_id: str, receipt: RegionReceipt) -> SubjectRequest:
        """Records what one region did; the request completes when the last region reports.
        A second report of a region changes nothing and returns the request as it is. A receipt
        naming a released hold is what the region erased later, at that hold's release
        (report_release)."""
        self._check_open()
        request = self._find(request_id)
        if request.kind is not RequestKind.ERASURE:
            raise FailedPrecondition(
                f"request {request_id} is an {request.kind.label} request; only erasure requests "
                "take erasure reports"
            )
        if not receipt.region:
            raise InvalidArgument(
                f"the receipt names no region; it must name the region that carried out {request_id}, "
                f"one of: {', '.join(_regions_of(request))}"
            )
        if receipt.released_hold_id:
            return self._report_release(request, receipt)
        if any(r.region == receipt.region for r in request.receipts):
            return request
        if receipt.region not in request.regions_pending:
            if self._cluster.region(receipt.region) is None:
                raise InvalidArgument(
                    f"unknown region {receipt.region!r}; configured regions: "
                    f"{', '.join(self._cluster.region_names())}"
                )
            raise InvalidArgument(
                f"region {receipt.region} was not asked to carry out {request_id}; its regions: "
                f"{', '.join(_regions_of(request))}"
            )
        _check_receipt_node(receipt)
        pending = tuple(r for r in request.regions_pending if r != receipt.region)
        updated = replace(request, regions_pending=pending, receipts=(*request.receipts, receipt))
        if not pending:
            updated = replace(updated, status=RequestStatus.COMPLETED, completed_ms=self._now_ms())
        self._commit_requests(updated)
        log.info(
            "erasure request %s: region %s erased %d records, kept %d%s",
            request_id,
            receipt.region,
            receipt.erased_total,
            len(receipt.kept),
            "; completed" if not pending else f"; {len(pending)} regions pending",
        )
        return updated

    def _report_release(self, request: SubjectRequest, receipt: RegionReceipt) -> SubjectRequest:
        """Records, beside the erasure's own receipts, what a node erased of the request's subject
        at the release of a hold that had kept it. Neither the request's status nor the orders
        change, so no revision is published. A node's second report of the same hold (a retry)
        changes nothing and returns the request as it is."""
        hold_id = receipt.released_hold_id
        check_hold_id(hold_id)
        if receipt.region not in _regions_of(request):
            raise InvalidArgument(
                f"region {receipt.region!r} was not asked to carry out {request.request_id}; its regions: "
                f"{', '.join(_regions_of(request)) or 'none'}"
            )
        _check_receipt_node(receipt)
        if hold_id in self._holds:
            raise FailedPrecondition(
                f"legal hold {hold_id} is in force; what it keeps is erased, and reported, only "
                "after its release"
            )
        if self._store.hold_release(hold_id) is None:
            raise NotFound(f"no legal hold {hold_id} was released; a release receipt names a released hold")
        if any(
            r.node_id == receipt.node_id and r.released_hold_id == hold_id for r in request.release_receipts
        ):
            return request
        updated = replace(request, release_receipts=(*request.release_receipts, receipt))
        # A batch changes the open requests in place (its failure reloads them from the store).
        opened = self._open if self._batched is not None else dict(self._open)
        if updated.request_id in opened:
            opened[updated.request_id] = updated
        self._write(SubjectChanges(requests=(updated,)), opened, self._holds, orders=False)
        self._open = opened
        self._changed()
        log.info(
            "erasure request %s: region %s erased %d records at the release of legal hold %s; %d still kept",
            request.request_id,
            receipt.region,
            receipt.erased_total,
            hold_id,
            receipt.kept_total,
        )
        return updated

    def reconcile(self) -> None:
        """Adds to every open erasure the regions that gained a node since it was opened and
        have not reported, and drops those left without any node (their last one removed:
        nothing is left there to report, and a node that registers there again is sent the
        permanent list and sweeps what it holds); an erasure left waiting for none is
        complete. One revision for all. Run at start, after every registration and removal."""
        self._check_open()
        regions = self._ordered_regions()
        with_nodes = self._registry.regions_with_nodes()
        changed = []
        for request in self._open.values():
            if request.kind is not RequestKind.ERASURE:
                continue
            known = {*request.regions_pending, *(r.region for r in request.receipts)}
            missing = tuple(r for r in regions if r not in known)
            pending = tuple(r for r in (*request.regions_pending, *missing) if r in with_nodes)
            if pending == request.regions_pending:
                continue
            updated = replace(request, regions_pending=pending)
            if not pending:
                updated = replace(updated, status=RequestStatus.COMPLETED, completed_ms=self._now_ms())
            changed.append(updated)
        if changed:
            self._commit_requests(*changed)
        for request in changed:
            if request.status is RequestStatus.COMPLETED:
                log.warning(
                    "erasure request %s completed: the regions it still waited for have no node left",
                    request.request_id,
                )
            else:
                log.info(
                    "erasure request %s now waits for %s (regions gained or lost their nodes)",
                    request.request_id,
                    ", ".join(request.regions_pending),
                )

    def erased_subjects(self) -> tuple[bytes, list[tuple[str, str]]]:
        """The permanent erasure list whole, for a registration answer to a node that does not
        page it: its key, and (keyed hash of the subject, request id) of every subject ever
        erased (the subject ids stay here). FailedPrecondition past
        ERASED_SUBJECTS_IN_REGISTRATION_MAX entries: such a node must not join knowing only part
        of the list (erasures win over backups), and the whole would not reach it."""
        total = self._store.erasure_subjects_count()
        if total > ERASED_SUBJECTS_IN_REGISTRATION_MAX:
            raise FailedPrecondition(
                f"the list of erased subjects has {total} entries, more than the "
                f"{ERASED_SUBJECTS_IN_REGISTRATION_MAX} a registration answer carries; this node reads it "
                "only from that answer: upgrade it to a version that sets lists_erased_subjects and "
                "pages the list with ListErasedSubjects"
            )
        erased = self._store.erasure_subjects()
        if not erased:
            return b"", []
        key = self._store.erased_subjects_key()
        return key, [(subject_hash(key, subject), request_id) for request_id, subject in erased]

    def erased_key(self) -> bytes:
        """The key of the permanent erasure list; b"" while the list is empty."""
        return self._store.erased_subjects_key() if self._store.erasure_subjects_count() else b""

    def erased_page(self, after_request_id: str, limit: int) -> ErasedPage:
        """A page of the permanent erasure list (ListErasedSubjects): up to `limit` (1 to
        ERASED_SUBJECTS_PAGE_MAX, 0 for the default) entries after `after_request_id` ("" for the
        first page), with the list's size as of this read."""
        limit = check_erased_page_limit(limit)
        if after_request_id:
            check_erased_cursor(after_request_id)
        # One more than asked says whether another page follows.
        found = self._store.erasure_subjects_after(after_request_id, limit + 1)
        if found is None:
            raise InvalidArgument(
                f"after_request_id {after_request_id} is not on the list of erased subjects; pass the "
                "next_after_request_id of the previous page, or an empty one for the first page"
            )
        total = self._store.erasure_subjects_count()
        if not total:
            return ErasedPage(b"", (), "", 0)
        key = self._store.erased_subjects_key()
        page = found[:limit]
        return ErasedPage(
            key,
            tuple((subject_hash(key, subject), request_id) for request_id, subject in page),
            page[-1][0] if len(found) > limit else "",
            total,
        )

    def get(self, request_id: str) -> SubjectRequest:
        return self._find(request_id)

    def list(self, open_only: bool = False, limit: int = 0) -> tuple[SubjectRequest, ...]:
        """Requests, newest first; `limit` 1 to 1000, 0 for 100."""
        return self._store.list_requests(open_only, check_list_limit(limit))

    def open_counts(self) -> dict[RequestKind, int]:
        counts = dict.fromkeys(KINDS, 0)
        for r in self._open.values():
            counts[r.kind] = counts.get(r.kind, 0) + 1
        return counts

    def oldest_open_ms(self) -> dict[RequestKind, int]:
        """When the oldest open request of each kind was received; 0 when none is open."""
        oldest = dict.fromkeys(KINDS, 0)
        for r in self._open.values():
            if oldest.get(r.kind, 0) == 0 or r.received_ms < oldest[r.kind]:
                oldest[r.kind] = r.received_ms
        return oldest

    def overdue_counts(self) -> dict[RequestKind, int]:
        """Open requests past their due time by the wall clock."""
        now = self._now_ms()
        counts = dict.fromkeys(KINDS, 0)
        for r in self._open.values():
            if r.overdue(now):
                counts[r.kind] = counts.get(r.kind, 0) + 1
        return counts

    # --- legal holds -----------------------------------------------------------------------

    def place_hold(
        self,
        scope: HoldScope,
        subject_id: str = "",
        namespace: str = "",
        key: str = "",
        reason: str = "",
        placed_by: str = "",
    ) -> LegalHold:
        self._check_open()
        if scope is HoldScope.SUBJECT:
            check_subject_id(subject_id)
            if namespace or key:
                raise InvalidArgument(
                    "a subject hold covers every record of the subject and takes no namespace or key; "
                    "use scope key for one record"
                )
        elif scope in (HoldScope.NAMESPACE, HoldScope.KEY):
            if subject_id:
                raise InvalidArgument(
                    f"a {scope.label} hold takes no subject id; use scope subject to hold a subject's records"
                )
            if not namespace:
                raise InvalidArgument(f"a {scope.label} hold needs a namespace (a configured one)")
            self._cluster.namespace(namespace)
            if scope is HoldScope.KEY:
                check_key(key, Limits())
            elif key:
                raise InvalidArgument("a namespace hold covers the whole namespace and takes no key")
        else:
            raise InvalidArgument("a legal hold needs a scope: subject, namespace or key")
        check_reason(reason, required=True)
        if len(self._holds) >= self._limits.legal_holds_max:
            raise FailedPrecondition(
                f"{len(self._holds)} legal holds are in force, the limit; release one before placing another"
            )
        hold_id = self._new_id("hold-", lambda i: i in self._holds or self._store.hold_id_taken(i))
        hold = LegalHold(hold_id, scope, subject_id, namespace, key, reason, self._now_ms(), placed_by)
        holds = {**self._holds, hold_id: hold}
        self._write(SubjectChanges(placed=(hold,)), self._open, holds, orders=True)
        self._holds = holds
        self._changed()
        log.info("legal hold %s placed (scope %s)", hold_id, scope.label)
        return hold

    def release_hold(self, hold_id: str, reason: str = "", released_by: str = "") -> LegalHold:
        """Releases a hold in force; returns it as it was."""
        self._check_open()
        check_hold_id(hold_id)
        check_reason(reason, required=False)
        hold = self._holds.get(hold_id)
        if hold is None:
            released = self._store.hold_release(hold_id)
            if released is not None:
                raise NotFound(
                    f"legal hold {hold_id} is not in force: it was released at {released.released_ms} ms"
                )
            raise NotFound(f"no legal hold {hold_id}; ListLegalHolds lists the holds in force")
        holds = {k: v for k, v in self._holds.items() if k != hold_id}
        changes = SubjectChanges(released=(HoldRelease(hold_id, self._now_ms(), reason, released_by),))
        self._write(changes, self._open, holds, orders=True)
        self._holds = holds
        self._changed()
        log.info("legal hold %s released by %s", hold_id, released_by or "-")
        return hold

    def holds(self) -> tuple[LegalHold, ...]:
        """Holds in force, oldest first."""
        return tuple(self._holds.values())

    # --- internals -------------------------------------------------------------------------

    def _new_request(
        self, kind: RequestKind, subject_id: str, jurisdiction: str, reason: str
    ) -> SubjectRequest:
        if len(self._open) >= self._limits.open_subject_requests_max:
            raise FailedPrecondition(
                f"{len(self._open)} subject requests are open, the limit; complete some before opening more"
            )
        request_id = self._new_id("req-", lambda i: i in self._open or self._store.request_id_taken(i))
        received = self._now_ms()
        return SubjectRequest(
            request_id=request_id,
            kind=kind,
            subject_id=subject_id,
            subject_jurisdiction=jurisdiction,
            reason=reason,
            received_ms=received,
            due_ms=due_ms(received, jurisdiction),
            status=RequestStatus.OPEN,
        )

    def _new_id(self, prefix: str, taken: Callable[[str], bool]) -> str:
        for _ in range(ID_ATTEMPTS_MAX):
            digits = self._random_hex()
            if not _HEX_RE.match(digits):
                raise ValueError(f"the id generator returned {digits!r}, not 10 lower-case hex digits")
            candidate = prefix + digits
            if not taken(candidate):
                return candidate
        raise Unavailable(f"no unused {prefix}id found in {ID_ATTEMPTS_MAX} draws; retry")

    def _ordered_regions(self) -> tuple[str, ...]:
        """Every region with a registered node: the configured ones in cluster config order, then
        any the config no longer has (a node registered there still holds what it stored until
        it is removed, so it is ordered to erase too), by name."""
        held = self._registry.regions_with_nodes()
        configured = self._cluster.region_names()
        return (*(r for r in configured if r in held), *sorted(set(held) - set(configured)))

    def _commit_requests(self, *requests: SubjectRequest) -> None:
        """Stores `requests` (new or changed) and, for erasures, publishes the new orders."""
        # A batch changes the open requests in place (its failure reloads them from the store).
        opened = self._open if self._batched is not None else dict(self._open)
        for request in requests:
            if request.status is RequestStatus.OPEN:
                opened[request.request_id] = request
            else:
                opened.pop(request.request_id, None)
        changes = SubjectChanges(requests=requests)
        self._write(changes, opened, self._holds, orders=any(r.kind is RequestKind.ERASURE for r in requests))
        self._open = opened
        for request in requests:
            if request.kind is not RequestKind.ERASURE:
                continue
            if request.status is RequestStatus.OPEN:
                self._erasing[request.subject_id] = request.request_id
            elif self._erasing.get(request.subject_id) == request.request_id:
                del self._erasing[request.subject_id]
        self._changed()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Makes every change of the block in one revision: they are written in one transaction,
        and the orders and holds published once, when the block ends (many requests or holds
        at once: an import, a test at the limits). Each change is checked as it is made, against
        the limits too. When the block raises or the write fails, nothing is written and the
        desk reloads its state from the store."""
        self._check_open()
        if self._batched is not None:
            raise FailedPrecondition("subject desk batches do not nest")
        self._batched, self._batched_orders = [], False
        try:
            yield
            batched, orders = self._batched, self._batched_orders
            self._batched = None
            if batched:
                changes = SubjectChanges(
                    requests=tuple(r for c in batched for r in c.requests),
                    placed=tuple(h for c in batched for h in c.placed),
                    released=tuple(h for c in batched for h in c.released),
                )
                self._write(changes, self._open, self._holds, orders=orders)
        except BaseException:
            self._batched = None
            self._open = {r.request_id: r for r in self._store.open_requests()}
            self._holds = {h.hold_id: h for h in self._store.holds_in_force()}
            self._erasing = _erasing(self._open)
            raise
        finally:
            self._on_change()

    def _write(
        self,
        changes: SubjectChanges,
        opened: dict[str, SubjectRequest],
        holds: dict[str, LegalHold],
        *,
        orders: bool,
    ) -> None:
        """Stores `changes`; when they change the orders or holds (`orders`), in a new revision
        that publishes those now in force. Inside batch(), only gathers them."""
        if self._batched is not None:
            self._batched.append(changes)
            self._batched_orders = self._batched_orders or orders
        elif orders:
            self._registry.touch(changes, erasure_orders(opened), tuple(holds.values()))
        else:
            self._store.save_subjects(changes)

    def _changed(self) -> None:
        # Inside a batch the metrics are refreshed once, at its end.
        if self._batched is None:
            self._on_change()

    def _find(self, request_id: str) -> SubjectRequest:
        check_request_id(request_id)
        request = self._open.get(request_id) or self._store.request(request_id)
        if request is None:
            raise NotFound(f"no subject request {request_id}; ListSubjectRequests lists them")
        return request

    def _check_open(self) -> None:
        if self._registry.closed:
            raise Unavailable("coordinator is shutting down; retry against the restarted coordinator")


def _check_receipt_node(receipt: RegionReceipt) -> None:
    """A receipt names the node that erased, by a valid node id."""
    if not receipt.node_id:
        raise InvalidArgument("the receipt names no node; it must name the node that erased")
    check_node_id(receipt.node_id)
