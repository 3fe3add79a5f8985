"""Loading a policy set: what is refused, and that the error says where (file:line:column)."""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile.authz import Authorizer, ClusterResource, Principal
from domicile.authz.loader import DEFAULT_POLICIES, DEFAULT_SCHEMA, default_text
from domicile.errors import InvalidArgument

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "authz"
SCHEMA = default_text(DEFAULT_SCHEMA)

GOOD = """\
@id("operators-see-topology")
permit (
  principal in Domicile::Role::"operator",
  action == Domicile::Action::"coordinator.GetTopology",
  resource
);
"""


def load(tmp_path: Path, policies: str, schema: str = SCHEMA, schema_name: str = "schema.cedarschema"):
    policy_file = tmp_path / "policies.cedar"
    schema_file = tmp_path / schema_name
    policy_file.write_text(policies)
    schema_file.write_text(schema)
    return Authorizer.from_files(policy_file, schema_file)


def refusal(
    tmp_path: Path, policies: str, schema: str = SCHEMA, schema_name: str = "schema.cedarschema"
) -> str:
    with pytest.raises(InvalidArgument) as exc:
        load(tmp_path, policies, schema, schema_name)
    return exc.value.message.replace(str(tmp_path) + "/", "")


def test_the_deployed_files_are_the_packaged_defaults():
    assert (DEPLOY / "policies.cedar").read_text() == default_text(DEFAULT_POLICIES)
    assert (DEPLOY / "schema.cedarschema").read_text() == SCHEMA


def test_the_deployed_files_load_and_decide():
    authz = Authorizer.from_files(DEPLOY / "policies.cedar", DEPLOY / "schema.cedarschema")
    operator = Principal.of("ops-1", ["operator"])
    assert authz.authorize(operator, "coordinator.WatchTopology", ClusterResource()).allowed
    assert len(authz.bundle.ids) == len(set(authz.bundle.ids.values())) >= 15


def test_a_minimal_policy_set_loads_and_decides(tmp_path):
    authz = load(tmp_path, GOOD)
    decision = authz.authorize(
        Principal.of("ops-1", ["operator"]), "coordinator.GetTopology", ClusterResource()
    )
    assert decision.allowed and decision.policy_ids == ("operators-see-topology",)
    assert not authz.authorize(
        Principal.of("ops-1", ["operator"]), "coordinator.WatchTopology", ClusterResource()
    ).allowed


def test_without_a_schema_file_the_packaged_schema_is_used(tmp_path):
    (tmp_path / "p.cedar").write_text(GOOD)
    authz = Authorizer.from_files(tmp_path / "p.cedar")
    assert authz.bundle.schema_source == "the packaged schema.cedarschema"


def test_a_syntax_error_is_located_at_the_offending_token(tmp_path):
    broken = GOOD + '\n@id("broken")\npermit (principal, action, resource)\nwhen { principal.name == ; };\n'
    message = refusal(tmp_path, broken)
    assert message == "policies.cedar:10:26: invalid Cedar policy: unexpected token `;`"


def test_an_unknown_effect_is_located_at_the_word(tmp_path):
    message = refusal(tmp_path, GOOD + "\n  permt (principal, action, resource);\n")
    assert message == "policies.cedar:8:3: invalid Cedar policy: invalid policy effect: permt"


def test_an_unclosed_string_is_located_where_it_starts(tmp_path):
    message = refusal(
        tmp_path, '@id("a")\npermit (principal, action, resource)\nwhen { principal.name == "x };\n'
    )
    assert message.startswith("policies.cedar:3:26: invalid Cedar policy:")


def test_a_policy_that_fails_schema_validation_is_named_with_its_line(tmp_path):
    typo = GOOD + (
        '\n@id("app-typo")\n'
        "permit (principal, action, resource is Domicile::Namespace)\n"
        "when { resource.ownr == principal.name };\n"
    )
    message = refusal(tmp_path, typo)
    assert message.startswith("policies.cedar: 1 policy error(s) against schema schema.cedarschema:\n")
    assert "policies.cedar:8:1: policy 'app-typo': " in message
    assert "ownr" in message


def test_an_unknown_action_in_a_policy_fails_validation(tmp_path):
    policy = '@id("x")\npermit (principal, action == Domicile::Action::"storage.Frob", resource);\n'
    message = refusal(tmp_path, policy)
    assert "policies.cedar:1:1: policy 'x'" in message and "storage.Frob" in message


def test_a_policy_without_an_id_is_refused(tmp_path):
    message = refusal(tmp_path, GOOD + "\npermit (principal, action, resource);\n")
    assert message.startswith("policies.cedar:8:1: every policy needs an @id")


def test_a_duplicate_id_is_refused(tmp_path):
    message = refusal(tmp_path, GOOD + "\n" + GOOD)
    assert (
        message
        == "policies.cedar:8:1: @id('operators-see-topology') is used twice (also at policies.cedar:1:1)"
    )


def test_a_template_is_refused(tmp_path):
    message = refusal(tmp_path, '@id("t")\npermit (principal == ?principal, action, resource);\n')
    assert message.startswith("policies.cedar:1:1: a template")


def test_a_schema_that_leaves_out_an_rpc_is_refused_naming_it(tmp_path):
    schema = SCHEMA.replace(
        '"storage.GetNodeStatus" in ["status.read"]', '"storage.GetNodeStatusX" in ["status.read"]'
    )
    message = refusal(tmp_path, GOOD, schema)
    assert message.startswith("schema.cedarschema: no action is declared for the RPCs storage.GetNodeStatus;")


def test_a_schema_syntax_error_is_located(tmp_path):
    schema = SCHEMA.replace("entity Cluster;", "entity Cluster")
    message = refusal(tmp_path, GOOD, schema)
    line = next(i for i, text in enumerate(schema.splitlines(), 1) if "entity Cluster" in text)
    assert message.startswith(f"schema.cedarschema:{line + 3}:")
    assert "invalid Cedar schema: unexpected token" in message


def test_a_schema_with_an_unknown_type_is_located_at_the_type(tmp_path):
    schema = SCHEMA.replace("purpose: String,", "purpose: Strng,")
    message = refusal(tmp_path, GOOD, schema)
    line = next(i for i, text in enumerate(schema.splitlines(), 1) if "Strng" in text)
    assert message == f"schema.cedarschema:{line}:14: invalid Cedar schema: failed to resolve type: Strng"


def test_a_json_schema_that_is_not_json_is_located(tmp_path):
    message = refusal(tmp_path, GOOD, '{\n  "Domicile": \n}', "schema.json")
    assert message.startswith("schema.json:3:1: not valid JSON")


def test_a_missing_file_is_invalid(tmp_path):
    with pytest.raises(InvalidArgument) as exc:
        Authorizer.from_files(tmp_path / "nope.cedar")
    assert "cannot read it" in exc.value.message
