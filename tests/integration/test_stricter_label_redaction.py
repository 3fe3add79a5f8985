"""Regression: A record labelled stricter than its namespace is "judged under both labels, and held only
where both allow it" (README; domicile/policy/select.py LayeredPolicy.decide). For a read both
allow only with fields redacted, the decision keeps the label's redactions and drops the
namespace classification's: a value the namespace's classification redacts in a region is served
there in full once the record is labelled stricter (financial instead of personal).
"""

from __future__ import annotations

from pathlib import Path

from domicile.v1 import record_pb2 as pb
from tests.support.cluster import NAMESPACES, LocalCluster, eventually
from tests.support.packs import sample_pack, set_read_refused, with_fact

CUSTOMERS = {"name": "customers", "regions": "global", "classification": "personal"}
DPF = ["destinations", "us-east-1", "recipient", "dpf_certified"]


async def test_a_stricter_label_keeps_the_namespace_classification_redactions(tmp_path: Path) -> None:
    cluster = LocalCluster(
        tmp_path, ["eu-west-1", "us-east-1"], pack=sample_pack(), namespaces=[*NAMESPACES, CUSTOMERS]
    )
    await cluster.start_linked(30.0)
    try:
        for key, label in (
            ("as-personal", pb.CLASSIFICATION_PERSONAL),
            ("as-financial", pb.CLASSIFICATION_FINANCIAL),
        ):
            await cluster.put(
                "eu-west-1",
                "customers",
                key,
                b"iban DE89 3704 0044 0532 0130 00",
                subject_id="subject-1",
                subject_jurisdiction="DE",
                classification=label,
            )

            async def arrived(key: str = key) -> bool:
                return bool(await cluster.values("us-east-1", "customers", key))

            await eventually(arrived, 30.0, f"{key} at us-east-1 (DPF)")

        # DPF lapses; refused reads are answered redacted: personal data with its value removed,
        # financial data with its subject id removed (the operator's pack).
        tightened = with_fact(sample_pack(), "2026-12-04.no-dpf", DPF, False)
        set_read_refused(tightened, "personal", ["value"])
        set_read_refused(tightened, "financial", ["subject_id"])
        await cluster.change_policy(tightened)

        # Control: the record with the namespace's own label has its value redacted in us-east-1.
        got = await cluster.get("us-east-1", "customers", "as-personal")
        (version,) = got.versions
        assert list(version.redacted_fields) == ["value"] and version.value == b""

        # The same record labelled financial (stricter, accepted as such) must be redacted at
        # least as much: the namespace's classification redacts the value here.
        got = await cluster.get("us-east-1", "customers", "as-financial")
        (version,) = got.versions
        assert "subject_id" in version.redacted_fields
        assert version.value == b"", (
            f"the value is served in us-east-1 (redacted: {list(version.redacted_fields)}), where the "
            "namespace's classification redacts it"
        )
    finally:
        await cluster.stop()
