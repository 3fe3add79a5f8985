"""A remediation's receipt is one audit entry: whole JSON within the detail's 1,000 characters."""

from __future__ import annotations

import json

from domicile.causality import Dot
from domicile.model import Classification
from domicile.results import ComplianceViolation
from node.compliance.remediation import RECEIPT_BYTES_MAX, Copy, Receipt


def copy(namespace: str, key: str) -> Copy:
    violation = ComplianceViolation(
        namespace=namespace, key=key, region="us-east-1", origin_region="eu-west-1",
        classification=Classification.PERSONAL, subject_jurisdiction="DE", rule="gdpr.no-transfer-basis",
        reason="tightened", allowed_regions=("eu-west-1",),
    )  # fmt: skip
    return Copy(namespace, key, (Dot("eu-west-1", 1),), "s", violation)


def test_the_receipt_counts_per_namespace() -> None:
    receipt = Receipt("r-1", "us-east-1", "us-east-1", "p2", "dpo")
    receipt.removed = [copy("customers", "a"), copy("customers", "b"), copy("orders", "c")]
    receipt.versions_removed = 3
    doc = json.loads(receipt.body())
    assert doc["removed_per_namespace"] == {"customers": 2, "orders": 1}
    assert (doc["copies_removed"], doc["versions_removed"], doc["request_id"]) == (3, 3, "r-1")


def test_a_receipt_of_many_namespaces_stays_whole_json_within_the_limit() -> None:
    receipt = Receipt("r-2", "us-east-1", "us-east-1", "p2", "dpo")
    receipt.removed = [copy(f"namespace_with_a_long_name_{i}", "k") for i in range(100)]
    body = receipt.body()
    assert len(body) <= RECEIPT_BYTES_MAX
    doc = json.loads(body)
    assert doc["copies_removed"] == 100 and doc["removed_per_namespace"] == {"namespaces": 100}


def test_the_receipt_counts_the_copies_a_hold_kept() -> None:
    receipt = Receipt("r-3", "us-east-1", "us-east-1", "p2", "dpo")
    receipt.removed = [copy("customers", "a")]
    receipt.kept_held = 2
    doc = json.loads(receipt.body())
    assert (doc["copies_removed"], doc["kept_held"]) == (1, 2)
