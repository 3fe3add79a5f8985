"""`domicile policy explain` with the shipped policy pack (deploy/policy/pack.yaml) and the real
JurisdictionPolicy: decisions, output formats, exit codes (0 allow, 1 refuse, 2 bad input) and
the three sources of the policy (a pack file, a cluster config, the coordinator)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from domicile.cli.main import main
from tests.unit.test_client_wire import FakeCluster

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "policy" / "pack.yaml"
CLUSTER = ROOT / "deploy" / "cluster.yaml"

JSON_KEYS = {
    "decision",
    "allowed",
    "redacted_fields",
    "rule",
    "law",
    "basis",
    "reason",
    "evidence",
    "allowed_regions",
    "policy_version",
    "policy_source",
    "classification",
    "subject_jurisdiction",
    "namespace",
    "region",
    "action",
}


def explain(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["policy", "explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def with_pack(capsys, classification: str, jurisdiction: str, region: str, action: str, *more: str):
    return explain(
        capsys,
        "--classification",
        classification,
        "--subject-jurisdiction",
        jurisdiction,
        "--region",
        region,
        "--action",
        action,
        "--pack",
        str(PACK),
        *more,
    )


def fields_of(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith(" "):
            out[name] = value.strip()
    return out


# -- decisions of the shipped pack


def test_german_personal_data_may_be_stored_in_frankfurt(capsys):
    code, out, err = with_pack(capsys, "personal", "DE", "eu-central-1", "store")
    assert (code, err) == (0, "")
    f = fields_of(out)
    assert out.splitlines()[0] == "store of a personal record (DE) at eu-central-1"
    assert f["decision"] == "allow"
    assert f["rule"] == "gdpr.home"
    assert f["law"] == "GDPR"
    assert f["basis"].startswith("Art. 44")
    assert "inside the home area of GDPR" in f["reason"]
    assert "  - EEA members include DE (checked 2026-11-27; source: https://www.efta.int/" in out
    assert f["allowed regions"].startswith("us-east-1, eu-west-1, eu-central-1, ap-northeast-1, sa-east-1")
    assert f["policy version"] == f"2026-12-01.1 (policy pack {PACK})"


def test_german_personal_data_may_be_replicated_to_a_dpf_certified_us_region(capsys):
    code, out, _ = with_pack(capsys, "personal", "DE", "us-east-1", "replicate")
    assert code == 0
    f = fields_of(out)
    assert (f["decision"], f["rule"]) == ("allow", "gdpr.adequacy")
    assert "EU-US Data Privacy Framework" in f["basis"]
    # Both facts the decision relied on, each with its date and source.
    assert "  - GDPR adequacy for the United States in force: yes (checked 2026-11-27; source:" in out
    assert "  - us-east-1 recipient dpf_certified: yes (checked 2026-11-27; source:" in out


def test_but_not_to_a_us_region_without_certification_or_clauses(capsys):
    code, out, _ = with_pack(capsys, "personal", "DE", "us-west-2", "replicate")
    assert code == 1
    f = fields_of(out)
    assert (f["decision"], f["rule"]) == ("refuse", "gdpr.no-transfer-basis")
    assert "us-west-2 recipient dpf_certified: no" in out
    assert "us-west-2" not in f["allowed regions"]


def test_chinese_personal_data_may_not_be_stored_in_the_us(capsys):
    code, out, _ = with_pack(capsys, "personal", "CN", "us-east-1", "store")
    assert code == 1
    f = fields_of(out)
    assert (f["decision"], f["rule"], f["law"]) == ("refuse", "pipl.no-transfer-basis", "PIPL")
    assert f["evidence"] == "-"
    assert f["allowed regions"] == "none (for this store)"


def test_data_that_is_not_personal_goes_anywhere_without_a_jurisdiction(capsys):
    code, out, _ = explain(capsys, "-c", "public", "-r", "us-west-2", "-a", "store", "--pack", str(PACK))
    assert code == 0
    assert fields_of(out)["rule"] == "classification.public"
    assert fields_of(out)["law"] == "-"


def test_personal_data_without_a_jurisdiction_is_a_refusal_not_bad_input(capsys):
    code, out, _ = explain(capsys, "-c", "personal", "-r", "eu-west-1", "-a", "store", "--pack", str(PACK))
    assert code == 1
    assert fields_of(out)["rule"] == "subject-jurisdiction-missing"


def test_json_is_one_object_with_every_field(capsys):
    code, out, _ = with_pack(capsys, "personal", "DE", "us-east-1", "replicate", "--json")
    assert code == 0
    doc = json.loads(out)
    assert set(doc) == JSON_KEYS
    assert doc["decision"] == "allow" and doc["allowed"] is True and doc["redacted_fields"] == []
    assert doc["rule"] == "gdpr.adequacy" and doc["law"] == "GDPR"
    assert len(doc["evidence"]) == 2 and all("checked 2026-11-27" in e for e in doc["evidence"])
    assert "us-east-1" in doc["allowed_regions"] and "us-west-2" not in doc["allowed_regions"]
    assert doc["policy_version"] == "2026-12-01.1"
    assert (doc["classification"], doc["subject_jurisdiction"], doc["region"], doc["action"]) == (
        "personal",
        "DE",
        "us-east-1",
        "replicate",
    )
    code, out, _ = with_pack(capsys, "personal", "CN", "us-east-1", "store", "--json")
    assert code == 1
    assert json.loads(out)["decision"] == "refuse" and json.loads(out)["allowed"] is False


def test_a_read_the_law_refuses_can_be_answered_redacted(capsys, tmp_path):
    pack = yaml.safe_load(PACK.read_text(encoding="utf-8"))
    pack["classifications"]["personal"].update(
        {"on_read_refused": "redact", "redact_fields": ["value", "subject_id"]}
    )
    path = tmp_path / "pack.yaml"
    path.write_text(yaml.safe_dump(pack), encoding="utf-8")
    argv = ["-c", "personal", "-j", "DE", "-r", "us-west-2", "-a", "read", "--pack", str(path)]
    code, out, _ = explain(capsys, *argv)
    assert code == 0
    f = fields_of(out)
    assert f["decision"] == "allow with value, subject_id redacted"
    assert f["rule"] == "gdpr.no-transfer-basis.redacted"
    code, out, _ = explain(capsys, *argv, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["decision"] == "redact" and doc["redacted_fields"] == ["value", "subject_id"]


# -- bad input: exit 2, `error: ...` on stderr, nothing on stdout


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["-c", "personal", "-j", "de", "-r", "eu-west-1", "-a", "store"],
            "invalid subject jurisdiction 'de'",
        ),
        (["-c", "personal", "-j", "XX", "-r", "eu-west-1", "-a", "store"], "XX is not an ISO 3166-1 country"),
        (["-c", "personal", "-j", "UK", "-r", "eu-west-1", "-a", "store"], "use GB"),
        (["-c", "secret", "-j", "DE", "-r", "eu-west-1", "-a", "store"], "unknown classification 'secret'"),
        (["-c", "unspecified", "-j", "DE", "-r", "eu-west-1", "-a", "store"], "a classification is required"),
        (
            ["-c", "personal", "-j", "DE", "-r", "mars-1", "-a", "store"],
            "unknown region 'mars-1'; regions of",
        ),
        (
            ["-c", "personal", "-j", "DE", "-r", "eu-west-1", "-a", "write"],
            "unknown action 'write'; allowed:",
        ),
    ],
    ids=["lower-case", "no-country", "uk", "classification", "unspecified", "region", "action"],
)
def test_bad_input_is_exit_2(capsys, argv, message):
    code, out, err = explain(capsys, *argv, "--pack", str(PACK))
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err


def test_an_unreadable_pack_is_exit_2(capsys, tmp_path):
    argv = ["-c", "personal", "-j", "DE", "-r", "eu-west-1", "-a", "store"]
    code, _, err = explain(capsys, *argv, "--pack", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.startswith("error: policy pack") and "does not exist" in err
    broken = tmp_path / "broken.yaml"
    broken.write_text("version: [unclosed\n", encoding="utf-8")
    code, _, err = explain(capsys, *argv, "--pack", str(broken))
    assert code == 2 and "is not valid YAML" in err
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text('version: "1"\n', encoding="utf-8")
    code, _, err = explain(capsys, *argv, "--pack", str(invalid))
    assert code == 2 and err.startswith("error: ")


def test_usage_mistakes_are_exit_2(capsys):
    with pytest.raises(SystemExit) as raised:
        main(["policy", "explain", "-j", "DE", "-r", "eu-west-1", "-a", "store"])
    assert raised.value.code == 2
    assert "--classification" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["policy", "explain", "-c", "personal", "-r", "eu-west-1", "-a", "store",
              "--pack", str(PACK), "--cluster-config", str(CLUSTER)])  # fmt: skip
    assert raised.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["policy"])
    assert raised.value.code == 2


def test_a_namespace_needs_a_cluster(capsys):
    code, _, err = with_pack(capsys, "personal", "DE", "eu-west-1", "store", "--namespace", "customers_eu")
    assert code == 2 and "--namespace needs a cluster" in err


# -- a cluster config


def _cluster_config(tmp_path: Path, *, with_pack: bool) -> Path:
    data = yaml.safe_load(CLUSTER.read_text(encoding="utf-8"))
    data.pop("policy_pack", None)
    data.pop("authz_policies", None)  # relative to deploy/, not to the copy
    if with_pack:
        data["policy_pack"] = str(PACK)
    data["policy_version"] = "scope-v7"
    data["namespaces"] = [
        {"name": "customers_eu", "regions": ["eu-west-1", "eu-central-1"], "classification": "personal"},
        {"name": "instruments", "regions": "global", "classification": "public"},
    ]
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_a_cluster_config_with_a_pack_decides_by_law_and_by_scope(capsys, tmp_path):
    config = str(_cluster_config(tmp_path, with_pack=True))
    code, out, _ = explain(
        capsys, "-c", "personal", "-j", "DE", "-r", "us-east-1", "-a", "replicate", "--cluster-config", config
    )
    assert code == 0 and fields_of(out)["rule"] == "gdpr.adequacy"
    assert fields_of(out)["policy version"].startswith("scope-v7/2026-12-01.1 (policy pack of cluster config")
    # The same transfer, but the namespace's scope keeps its records in the EU.
    code, out, _ = explain(
        capsys,
        "-c", "personal", "-j", "DE", "-r", "us-east-1", "-a", "replicate",
        "--cluster-config", config, "--namespace", "customers_eu", "--json",
    )  # fmt: skip
    doc = json.loads(out)
    assert code == 1
    assert doc["rule"] == "namespace-scope" and doc["allowed_regions"] == ["eu-west-1", "eu-central-1"]
    assert doc["namespace"] == "customers_eu"


def test_a_cluster_config_without_a_pack_needs_the_namespace(capsys, tmp_path):
    config = str(_cluster_config(tmp_path, with_pack=False))
    argv = ["-c", "personal", "-j", "DE", "-r", "us-east-1", "-a", "store", "--cluster-config", config]
    code, _, err = explain(capsys, *argv)
    assert code == 2 and "has no policy pack" in err and "pass --namespace" in err
    code, out, _ = explain(capsys, *argv, "--namespace", "instruments")
    assert code == 0 and fields_of(out)["rule"] == "namespace-scope"
    assert fields_of(out)["policy version"].startswith("scope-v7 ")
    code, _, err = explain(capsys, *argv, "--namespace", "nope")
    assert code == 2 and "unknown namespace 'nope'" in err


# -- the coordinator's policy in force


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    fake = FakeCluster()
    try:
        yield fake
    finally:
        fake.stop()


def test_by_default_the_coordinators_pack_is_used(capsys, cluster):
    cluster.coordinator.topology.policy_pack_yaml = PACK.read_text(encoding="utf-8")
    argv = ["-c", "personal", "-j", "DE", "-r", "us-east-1", "-a", "replicate", "--json"]
    code, out, _ = explain(capsys, *argv, "--coordinator", cluster.coordinator_address)
    doc = json.loads(out)
    assert code == 0 and doc["rule"] == "gdpr.adequacy"
    # The cluster's regions, not the pack's: us-west-2 is not in this cluster.
    assert doc["allowed_regions"] == ["us-east-1", "eu-west-1", "eu-central-1"]
    assert doc["policy_source"] == f"policy pack of coordinator {cluster.coordinator_address}"
    code, _, err = explain(
        capsys, "-c", "personal", "-j", "DE", "-r", "us-west-2", "-a", "store",
        "--coordinator", cluster.coordinator_address,
    )  # fmt: skip
    assert code == 2 and "unknown region 'us-west-2'" in err


def test_a_coordinator_without_a_pack_needs_the_namespace(capsys, cluster):
    argv = [
        "-c",
        "personal",
        "-j",
        "DE",
        "-r",
        "us-east-1",
        "-a",
        "store",
        "--coordinator",
        cluster.coordinator_address,
    ]
    code, _, err = explain(capsys, *argv)
    assert code == 2 and "pass --namespace" in err
    code, out, _ = explain(capsys, *argv, "--namespace", "customers_eu")
    assert code == 1 and fields_of(out)["rule"] == "namespace-scope"
    assert fields_of(out)["policy version"].startswith("p1 ")


def test_no_coordinator_is_exit_2(capsys):
    code, _, err = explain(
        capsys,
        "-c",
        "public",
        "-r",
        "us-east-1",
        "-a",
        "store",
        "--coordinator",
        "127.0.0.1:1",
        "--deadline",
        "1",
    )
    assert code == 2 and err.startswith("error: coordinator at 127.0.0.1:1")
