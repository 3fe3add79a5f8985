"""Bounds that both ends of a call must agree on: what a request may ask for, what a message
may weigh. The server enforces them and the SDK and CLI check them before sending, so that a
caller is told the bound instead of getting a refusal from the far side."""

from __future__ import annotations

# A Get may return several siblings of value_bytes_max each; leave room for them.
CLIENT_MESSAGE_BYTES_MAX = 64 * 1024 * 1024
CLIENT_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", CLIENT_MESSAGE_BYTES_MAX),
    ("grpc.max_send_message_length", CLIENT_MESSAGE_BYTES_MAX),
)
# Replication batches stay under replication_batch_bytes_max; the rest is headroom.
NODE_MESSAGE_BYTES_MAX = 32 * 1024 * 1024
# Per service of a node (the coordinator's are CoordinatorLimits.request_bytes_max and
# response_bytes_max). A storage request is one record at most: a 1 MiB value, a 1 KiB key, a
# context of 256 entries or its token (64 KiB); an answer is at most one record of
# read_record_bytes_max (16 MiB) or a scan page, with room to spare.
STORAGE_REQUEST_BYTES_MAX = 4 * 1024 * 1024
STORAGE_RESPONSE_BYTES_MAX = 32 * 1024 * 1024
REPLICATION_MESSAGE_BYTES_MAX = NODE_MESSAGE_BYTES_MAX
# Records one PutBatch call may carry (its request also stays under STORAGE_REQUEST_BYTES_MAX):
# as many as one group commit takes by default (Limits.commit_batch_records_max).
PUT_BATCH_RECORDS_MAX = 1000
# Concurrent calls (HTTP/2 streams) one connection may have open at a node; more wait on the
# client's side. One replication link uses one, an SDK channel as many as its caller runs.
NODE_STREAMS_PER_CONNECTION_MAX = 256
# A server refuses a port another process listens on. gRPC sets SO_REUSEPORT by default: a second
# daemon started on a port in use then binds it too, and the kernel splits the connections between
# the two, so calls meant for one node reach another. Without it the second daemon fails to start.
SERVER_EXCLUSIVE_PORT_OPTIONS = (("grpc.so_reuseport", 0),)

# Keepalive enforcement of both daemons: pings without calls are allowed (replication streams
# idle between batches, and their senders ping every 10 s), but at most one per 5 s; a peer
# that pings faster twice more is sent GOAWAY (too_many_pings) instead of costing CPU.
SERVER_KEEPALIVE_OPTIONS = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 2),
)

# The SDK reads an audit log in pages of this many entries, each page one call with its own
# deadline, so that a log of millions of entries never has to arrive within one deadline.
AUDIT_PAGE_ENTRIES = 10_000
AUDIT_PAGE_ENTRIES_MAX = 100_000
AUDIT_TAIL_ENTRIES_MAX = 10_000

# Bounds of ScanComplianceRequest.violations_max (0 asks for the default).
VIOLATIONS_MAX_DEFAULT = 1000
VIOLATIONS_MAX_LIMIT = 10_000

# Bounds of ListSubjectRequestsRequest.limit (0 asks for the default).
SUBJECT_REQUESTS_LIMIT_DEFAULT = 100
SUBJECT_REQUESTS_LIMIT_MAX = 1000

# Bounds of ListErasedSubjectsRequest.limit (0 asks for the default). An entry of the erased-subject
# list is 84 bytes on the wire, so the largest page is under 1 MiB.
ERASED_SUBJECTS_PAGE_DEFAULT = 5_000
ERASED_SUBJECTS_PAGE_MAX = 10_000
# The most entries a registration answer carries for a node that does not page the list
# (RegisterNodeRequest.lists_erased_subjects false): about 2.5 MiB, well under the 4 MiB such a node
# receives by default. Past it that node is refused rather than sent part of the list.
ERASED_SUBJECTS_IN_REGISTRATION_MAX = 30_000
