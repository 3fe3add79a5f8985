"""Backups of a node's store to its region's S3 bucket: the object layout (format), the bucket
client (bucket), what a bucket holds and whether it is sound (catalog), and whether a bucket's
location may hold what the node holds (residency). The node ships (node.backup.shipper); the
command line reads, verifies and restores (domicile.cli.backup, node.backup.restore)."""
