"""Compliance: the node's tamper-evident audit trail (and, later, its enforcement hooks)."""
