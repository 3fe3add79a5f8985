"""Inputs the fuzz harnesses (tests/fuzz) found that crashed a loader or a decoder with an
exception other than a domain error, each minimized. Every one must now be refused with a
DomicileError that says what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from domicile.authz import Authorizer
from domicile.authz.loader import DEFAULT_POLICIES, DEFAULT_SCHEMA, default_text
from domicile.cluster import load_cluster
from domicile.errors import DataCorruption, InvalidArgument
from domicile.model import check_jurisdiction, check_namespace_name, check_node_id, check_purpose
from domicile.policy.jurisdiction import parse_jurisdiction
from domicile.policy.pack import load_pack
from domicile.wire import records, requests


def written(tmp_path: Path, data: bytes, name: str = "input.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- the record codec (fuzz_records) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("decode", "what"),
    [(records.key_state_from_bytes, "key state"), (records.mutation_from_bytes, "change-log entry")],
)
def test_stored_bytes_that_are_no_message_are_data_corruption(decode, what) -> None:
    # Was google.protobuf DecodeError: the codec's own functions take the stored bytes.
    with pytest.raises(DataCorruption, match=f"stored {what} is not a valid"):
        decode(b"\xff")


# -- the cluster config (fuzz_cluster) ----------------------------------------------------------


def test_cluster_config_that_is_not_utf8(tmp_path: Path) -> None:
    # Was UnicodeDecodeError.
    with pytest.raises(InvalidArgument, match="is not UTF-8 text"):
        load_cluster(written(tmp_path, b"regions: []\n\xdb"))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        # Was AttributeError: 'str' object has no attribute 'get'.
        (b"coordinator: x\n", "coordinator must be a mapping"),
        # Was ValueError from int().
        (b"coordinator: {heartbeat_interval_ms: often}\n", "heartbeat_interval_ms must be a whole number"),
        # Was TypeError: 'int' object is not iterable.
        (b"regions: 5\n", "regions must be a list"),
    ],
)
def test_cluster_sections_of_the_wrong_type(tmp_path: Path, config: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        load_cluster(written(tmp_path, config))


def test_cluster_namespace_scoped_to_a_mapping(tmp_path: Path) -> None:
    # Was TypeError: unhashable type: 'dict' (looking the "region" up among the known ones).
    config = b"regions: [{name: eu-west-1}]\nnamespaces: [{name: trades, regions: [{}]}]\n"
    with pytest.raises(InvalidArgument, match="regions must be 'global' or a non-empty list of region names"):
        load_cluster(written(tmp_path, config))


# -- YAML that PyYAML refuses with something other than a YAMLError (fuzz_policy_pack) ---------


@pytest.mark.parametrize(
    "text",
    [
        b"checked: 2026-13-01\n",  # ValueError: month must be in 1..12
        b"limit: " + b"9" * 5000 + b"\n",  # ValueError: more than 4300 digits for int()
        b"limit: !!int many\n",  # ValueError: invalid literal for int()
        b"[" * 3000,  # past libyaml's nesting limit; RecursionError in the pure-Python composer
    ],
)
def test_yaml_refused_other_than_by_yaml_error(tmp_path: Path, text: bytes) -> None:
    with pytest.raises(InvalidArgument, match="is not valid YAML"):
        load_pack(written(tmp_path, text))
    with pytest.raises(InvalidArgument, match="is not valid YAML"):
        load_cluster(written(tmp_path, text))


# -- names and codes followed by a newline (fuzz_requests, fuzz_cluster, fuzz_policy_pack) -------
# The patterns ended in $, which also matches before a final newline.


def test_sdk_namespace_with_a_final_newline() -> None:
    with pytest.raises(InvalidArgument, match="invalid namespace name"):
        requests.put_request("tr\n", "k", b"v", None, "", "", None, "")


@pytest.mark.parametrize("check", [check_namespace_name, check_purpose, check_node_id, check_jurisdiction])
def test_names_with_a_final_newline(check) -> None:
    valid = {check_jurisdiction: "DE", check_node_id: "n1"}.get(check, "trades")
    check(valid)
    with pytest.raises(InvalidArgument):
        check(valid + "\n")


PACK_WITH_VERSION = """\
version: {version}
regions: [{{name: eu-west-1, country: IE, jurisdiction: EU}}]
classifications:
  public: {{personal_data: false}}
  internal: {{personal_data: false}}
  confidential: {{personal_data: false}}
  personal: {{personal_data: true}}
  sensitive_personal: {{personal_data: true}}
  financial: {{personal_data: true}}
laws: [{{id: us, name: US, title: US, regime: no_localization, subjects: [US], checked: 2026-11-27,
        source: s, basis: b}}]
"""


def test_pack_version_with_a_final_newline(tmp_path: Path) -> None:
    assert load_pack(written(tmp_path, PACK_WITH_VERSION.format(version='"1"').encode())).version == "1"
    with pytest.raises(InvalidArgument, match="version: got '1\\\\n'"):
        load_pack(written(tmp_path, PACK_WITH_VERSION.format(version='"1\\n"').encode()))


def test_jurisdiction_code_with_a_final_newline() -> None:
    with pytest.raises(InvalidArgument, match="invalid code"):
        parse_jurisdiction("US-CA\n", "code")


# -- the SDK's request builders (fuzz_requests) -------------------------------------------------


def test_sdk_delete_with_a_lone_surrogate_in_the_subject() -> None:
    # Was UnicodeEncodeError from protobuf, after the SDK's checks had passed.
    with pytest.raises(InvalidArgument, match="subject_id is not valid Unicode text"):
        requests.delete_request("trades", "t-1", None, "gg\udddd", None)


def test_sdk_key_with_a_lone_surrogate() -> None:
    # check_key measured the key with surrogatepass, so this one passed and then failed to encode.
    with pytest.raises(InvalidArgument, match="key is not valid Unicode text"):
        requests.put_request("trades", "t-\ud800", b"v", None, "", "", None, "")


# -- the Cedar schema (fuzz_authz_schema) -------------------------------------------------------


def test_a_schema_that_does_not_describe_the_built_entities_is_refused_at_load() -> None:
    # Was cedarpy's ValueError("error during entity deserialization") from every decision: the
    # default schema with Region's `name` attribute renamed still validates the default policies
    # (none reads it), but the entities each decision builds carry `name`.
    schema = default_text(DEFAULT_SCHEMA).replace(
        "entity Region in [Cluster] = {\n    name: String",
        "entity Region in [Cluster] = {\n    Cname: String",
    )
    assert schema != default_text(DEFAULT_SCHEMA)
    with pytest.raises(InvalidArgument, match="the schema does not describe what Domicile builds"):
        Authorizer.from_text(default_text(DEFAULT_POLICIES), schema, "policies.cedar", "schema.cedarschema")
    # The unchanged schema loads and decides.
    assert Authorizer.from_text(default_text(DEFAULT_POLICIES), default_text(DEFAULT_SCHEMA))
