"""Data-subject rights and record lifecycle on a node: encryption of subject data at rest,
erasure orders, retention expiry and legal holds."""
