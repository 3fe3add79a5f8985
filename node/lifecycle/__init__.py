"""Data-subject rights and record lifecycle on a node: erasure orders, exports, retention expiry
and legal holds (encryption of subject data at rest is node.crypto.sealing)."""
