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
