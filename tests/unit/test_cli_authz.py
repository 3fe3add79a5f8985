"""`domicile authz explain` with the default policy set and the sample cluster config: decisions,
policy ids, output formats and exit codes (0 allow, 1 deny, 2 bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from domicile.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = str(ROOT / "deploy" / "cluster.yaml")
TRADING = "spiffe://domicile/client/trading"

JSON_KEYS = {
    "decision",
    "allowed",
    "policy_ids",
    "reason",
    "errors",
    "principal",
    "kind",
    "name",
    "roles",
    "purpose",
    "action",
    "action_classes",
    "resource",
    "policies_source",
    "schema_source",
}


def explain(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["authz", "explain", "--cluster-config", CLUSTER, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def fields_of(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines()[1:]:
        name, _, value = line.partition(":")
        out[name] = value.strip()
    return out


def test_an_allowed_write_prints_the_policy_and_exits_0(capsys):
    code, out, err = explain(
        capsys, "--principal", TRADING, "--role", "app", "--action", "storage.Put", "-n", "trades",
        "--region", "eu-west-1", "--purpose", "trade_execution",
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"storage.Put by {TRADING}"
    f = fields_of(out)
    assert f["decision"] == "allow"
    assert f["policies"] == "app-records-of-owned-namespaces"
    assert f["principal"] == "client trading, roles: app"
    assert f["action"] == "storage.Put (class record.write)"
    assert f["resource"].startswith("namespace trades at eu-west-1 (financial, owner trading, purposes: ")


def test_a_refusal_by_purpose_exits_1_and_names_the_forbid(capsys):
    code, out, _ = explain(
        capsys, "--principal", TRADING, "--role", "app", "--action", "storage.Get", "-n", "trades",
        "--purpose", "marketing",
    )  # fmt: skip
    assert code == 1
    f = fields_of(out)
    assert (f["decision"], f["policies"]) == ("deny", "purpose-limitation")
    assert "declared purpose: 'marketing'" in f["reason"]


def test_a_refusal_by_role_says_which_roles_would_allow_it(capsys):
    code, out, _ = explain(
        capsys,
        "--principal",
        TRADING,
        "--role",
        "app",
        "--action",
        "storage.ExportSubject",
        "-r",
        "eu-west-1",
    )
    assert code == 1
    assert fields_of(out)["reason"].endswith("may not call storage.ExportSubject at region eu-west-1; "
                                             "allowed for roles: dpo")  # fmt: skip


def test_json_output(capsys):
    code, out, err = explain(
        capsys, "--principal", TRADING, "--role", "app", "--role", "auditor", "--action", "storage.Scan",
        "-n", "customers", "--region", "us-east-1", "--purpose", "trade_execution", "--json",
    )  # fmt: skip
    assert (code, err) == (1, "")
    data = json.loads(out)
    assert set(data) == JSON_KEYS
    assert data["decision"] == "deny" and data["allowed"] is False and data["policy_ids"] == []
    assert data["roles"] == ["app", "auditor"] and data["kind"] == "client" and data["name"] == "trading"
    assert data["action_classes"] == ["record.read"]
    assert data["resource"] == {
        "type": "namespace",
        "name": "customers",
        "region": "us-east-1",
        "classification": "personal",
        "owner": "customer-platform",
        "purposes": ["account_management", "trade_execution", "regulatory_reporting"],
    }
    assert "owned by 'customer-platform'" in data["reason"]


def test_json_output_of_an_allowed_node_call(capsys):
    code, out, _ = explain(
        capsys, "--principal", "spiffe://domicile/node/eu-west-1", "--role", "node",
        "--action", "coordinator.Heartbeat", "--json",
    )  # fmt: skip
    data = json.loads(out)
    assert code == 0 and data["allowed"] is True
    assert data["kind"] == "node" and data["policy_ids"] == ["node-control-plane"]
    assert data["resource"] == {"type": "cluster", "name": "domicile"}


def test_a_policy_file_can_be_given(capsys, tmp_path):
    policies = tmp_path / "p.cedar"
    policies.write_text(
        '@id("everyone-reads-topology")\n'
        'permit (principal, action == Domicile::Action::"coordinator.GetTopology", resource);\n'
    )
    code, out, _ = explain(
        capsys, "--principal", "x", "--role", "node", "--action", "coordinator.GetTopology",
        "--policies", str(policies), "--json",
    )  # fmt: skip
    data = json.loads(out)
    assert code == 0 and data["policy_ids"] == ["everyone-reads-topology"]
    assert data["policies_source"] == str(policies)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--role", "admin", "--action", "storage.Put", "-n", "trades"], "unknown role 'admin'"),
        (["--role", "app", "--action", "storage.Frob", "-n", "trades"], "unknown action 'storage.Frob'"),
        (["--role", "app", "--action", "storage.Put"], "storage.Put acts on a namespace: pass --namespace"),
        (["--role", "app", "--action", "storage.Put", "-n", "nope"], "unknown namespace 'nope'"),
        (
            ["--role", "app", "--action", "storage.Put", "-n", "trades", "-r", "mars-1"],
            "unknown region 'mars-1'",
        ),
        (["--role", "app", "--action", "storage.GetNodeStatus"], "pass --region"),
        (["--role", "app", "--action", "coordinator.GetTopology", "-n", "trades"], "leave out --namespace"),
        (["--role", "app", "--action", "coordinator.GetTopology", "-r", "eu-west-1"], "leave out --region"),
        (
            ["--role", "app", "--action", "storage.Get", "-n", "trades", "--purpose", "Bad Purpose"],
            "invalid purpose",
        ),
        (
            ["--role", "app", "--kind", "robot", "--action", "coordinator.GetTopology"],
            "unknown principal kind",
        ),
        (
            ["--role", "app", "--action", "coordinator.GetTopology", "--policies", "/nonexistent.cedar"],
            "cannot read",
        ),
        (
            ["--role", "app", "--action", "coordinator.GetTopology", "--schema", "s.cedarschema"],
            "--schema needs",
        ),
    ],
)
def test_bad_input_exits_2_with_the_reason(capsys, argv, message):
    code, out, err = explain(capsys, "--principal", TRADING, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("error: ") and message in err, err


def test_a_malformed_policy_file_exits_2_with_its_location(capsys, tmp_path):
    policies = tmp_path / "p.cedar"
    policies.write_text('@id("x")\npermit (principal, action, resource) when { 1 + };\n')
    code, _, err = explain(
        capsys, "--principal", TRADING, "--role", "app", "--action", "coordinator.GetTopology",
        "--policies", str(policies),
    )  # fmt: skip
    assert code == 2
    assert f"error: {policies}:2:49: invalid Cedar policy: unexpected token `}}`" in err


def test_role_is_required(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["authz", "explain", "--principal", TRADING, "--action", "storage.Put"])
    assert exc.value.code == 2
