"""Replication: outbound links stream this node's change log; inbound batches are checked
against the policy and merged idempotently."""
