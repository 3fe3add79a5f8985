"""The catalog metadata of namespaces, `domicile catalog list|show|ropa`, and the GDPR Art. 30(1)
record of processing built from the sample cluster config, its policy pack and its regions."""

from __future__ import annotations

import copy
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from domicile.cli.main import main
from domicile.cluster import load_cluster, parse_cluster
from domicile.errors import InvalidArgument
from domicile.policy.select import pack_of
from domicile.ropa import ITEMS, as_csv, as_markdown, record_of_processing

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "deploy" / "cluster.yaml"
PACK = ROOT / "deploy" / "policy" / "pack.yaml"


def sample() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    return copy.deepcopy(data)


def customers(data: dict[str, Any]) -> dict[str, Any]:
    return next(n for n in data["namespaces"] if n["name"] == "customers")


def parse(data: dict[str, Any]) -> Any:
    return parse_cluster(data, "cluster.yaml", SAMPLE.parent)


# -- validation at load --------------------------------------------------------------------------


def test_the_sample_declares_the_catalog_of_each_personal_namespace():
    cluster = load_cluster(SAMPLE)
    c = cluster.namespace("customers").catalog
    assert c.steward == "privacy-office@example.com"
    assert c.lawful_basis["gdpr"].startswith("Art. 6(1)(b)")
    assert {"gdpr", "uk-gdpr", "fadp", "pipa", "dpdp"} <= set(c.lawful_basis)
    assert c.data_subjects and c.personal_data and c.recipients
    assert cluster.controller is not None and cluster.controller.name and cluster.controller.contact


@pytest.mark.parametrize(
    ("field", "value", "fragments"),
    [
        ("steward", "", ["namespaces[1] (customers).steward", "non-empty text"]),
        ("steward", 42, ["(customers).steward", "got 42"]),
        ("lawful_basis", ["gdpr"], ["(customers).lawful_basis", "mapping of law id"]),
        ("lawful_basis", {"gdpx": "Art. 6"}, ["lawful_basis.gdpx", "unknown law 'gdpx'", "uk-gdpr"]),
        ("lawful_basis", {"gdpr": ""}, ["lawful_basis.gdpr", "non-empty text"]),
        ("lawful_basis", {"GDPR": "x"}, ["lawful_basis", "'GDPR' is not a law id"]),
        ("data_subjects", "customers", ["(customers).data_subjects", "expected a list"]),
        ("personal_data", ["name", "name"], ["personal_data[1]", "'name' is listed twice"]),
        ("recipients", ["x" * 400], ["recipients[0]", "limit is 300"]),
        ("schema", "", ["(customers).schema", "non-empty text"]),
    ],
)
def test_a_bad_catalog_field_is_refused_naming_it(field, value, fragments):
    data = sample()
    customers(data)[field] = value
    with pytest.raises(InvalidArgument) as info:
        parse(data)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("controller", "fragment"),
    [
        ("Example Ltd", "controller: expected a mapping"),
        ({"name": "Example Ltd"}, "controller: missing required field 'contact'"),
        ({"name": "E", "contact": "c", "phone": "1"}, "controller: unknown field 'phone'"),
    ],
)
def test_a_bad_controller_is_refused_naming_the_field(controller, fragment):
    data = sample()
    data["controller"] = controller
    with pytest.raises(InvalidArgument, match=fragment):
        parse(data)


def test_catalog_fields_are_optional():
    data = sample()
    for key in ("steward", "lawful_basis", "data_subjects", "personal_data", "recipients"):
        customers(data).pop(key)
    del data["controller"]
    cluster = parse(data)
    assert cluster.namespace("customers").catalog.lawful_basis == {}
    assert cluster.controller is None


# -- the record of processing -----------------------------------------------------------------


def ropa(data: dict[str, Any] | None = None) -> dict[str, Any]:
    cluster = load_cluster(SAMPLE) if data is None else parse(data)
    pack = pack_of(cluster)
    assert pack is not None
    return record_of_processing(cluster, pack)


def test_the_record_has_every_art_30_1_item_for_the_sample():
    record = ropa()
    activities = {a["namespace"]: a for a in record["activities"]}
    # only namespaces that hold personal data are processing activities of personal data
    assert set(activities) == {"customers", "trades", "trades_eu"}
    a = activities["customers"]
    # (a) the controller and its contact details, and the DPO
    assert a["a_controller"] == {
        "name": "Example Brokerage Ltd (sample value)",
        "contact": "privacy@example.com, 1 Example Street, Dublin, Ireland",
        "representative": "",
        "dpo": "dpo@example.com",
    }
    # (b) the purposes of the processing
    assert a["b_purposes"] == ["account_management", "trade_execution", "regulatory_reporting"]
    assert a["lawful_basis"].startswith("Art. 6(1)(b)")
    # (c) the categories of data subjects and of personal data
    assert a["c_data_subjects"] == ["customers", "prospective customers"]
    assert "contact details" in a["c_personal_data"]
    # (d) the categories of recipients, including those in third countries
    assert "trading service" in a["d_recipients"]
    assert a["d_third_countries"] == ["BR", "JP", "KR", "US"]
    # (e) transfers to third countries with the safeguard: the regions outside the EEA the pack
    # allows for EEA subjects, never us-west-2 (its recipient is not DPF-certified)
    transfers = {t["region"]: t for t in a["e_transfers"]}
    assert set(transfers) == {"us-east-1", "ap-northeast-1", "sa-east-1", "ap-northeast-2"}
    assert "2023/1795" in transfers["us-east-1"]["safeguard"]
    assert "2022/254" in transfers["ap-northeast-2"]["safeguard"]
    assert all(t["rule"] == "gdpr.adequacy" for t in transfers.values())
    # (f) the envisaged time limit for erasure
    assert a["f_erasure_time_limit"]["period"] == "7 years after the last write"
    # (g) the technical and organisational security measures
    assert any("mutual TLS" in m for m in a["g_security_measures"])
    assert a["gaps"] == []
    # a scope narrows the transfers: trades_eu never leaves the EU
    assert activities["trades_eu"]["e_transfers"] == []
    assert activities["trades"]["f_erasure_time_limit"]["period"] == "3 years after the last write"


def test_a_transfer_follows_the_mechanism_when_adequacy_is_switched_off(tmp_path):
    pack = yaml.safe_load(PACK.read_text())
    gdpr = next(law for law in pack["laws"] if law["id"] == "gdpr")
    next(e for e in gdpr["adequacy"]["countries"] if e["country"] == "BR")["in_force"] = False
    (tmp_path / "pack.yaml").write_text(yaml.safe_dump(pack))
    data = sample()
    data["policy_pack"] = str(tmp_path / "pack.yaml")
    record = ropa(data)
    a = next(x for x in record["activities"] if x["namespace"] == "customers")
    br = next(t for t in a["e_transfers"] if t["region"] == "sa-east-1")
    assert br["rule"] == "gdpr.mechanism.scc" and br["safeguard"].startswith("Art. 46(2)(c)")


def test_undeclared_items_are_reported_as_gaps_not_invented():
    # negative control: the same record without the declarations names each missing item
    data = sample()
    for key in ("lawful_basis", "data_subjects", "recipients"):
        customers(data).pop(key)
    customers(data).pop("purposes")
    customers(data).pop("retention_class")
    del data["controller"]
    a = next(x for x in ropa(data)["activities"] if x["namespace"] == "customers")
    text = " ".join(a["gaps"])
    for item in ("(a) controller", "(b) purposes", "lawful basis", "(c) categories", "(d) recipients", "(f)"):
        assert item in text, text
    assert a["a_controller"]["name"] == "" and a["f_erasure_time_limit"] == {}


def test_csv_and_markdown_carry_the_same_items():
    record = ropa()
    rows = list(csv.DictReader(io.StringIO(as_csv(record))))
    assert [r["namespace"] for r in rows] == ["customers", "trades", "trades_eu"]
    assert "ap-northeast-2 (KR)" in rows[0]["transfers"] and rows[0]["gaps"] == ""
    md = as_markdown(record)
    for item in ITEMS:
        assert f"| ({item}) " in md, item


# -- the command ------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["catalog", *args, "--cluster-config", str(SAMPLE)])
    out, err = capsys.readouterr()
    return code, out, err


def test_catalog_list(capsys):
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    names = [n["namespace"] for n in json.loads(out)["namespaces"]]
    assert names == ["instruments", "customers", "trades", "trades_eu"]
    code, out, _ = run(capsys, "list")
    assert "privacy-office@example.com" in out and "eu-west-1, eu-central-1" in out


def test_catalog_show_says_where_the_records_may_go(capsys):
    code, out, _ = run(capsys, "show", "customers", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["steward"] == "privacy-office@example.com"
    assert doc["may_go"]["pipa"] == ["eu-west-1", "eu-central-1", "ap-northeast-2"]
    assert doc["may_go"]["pipl"] == []
    assert "us-west-2" not in doc["may_go"]["gdpr"]
    code, out, _ = run(capsys, "show", "trades_eu", "--json")
    assert json.loads(out)["may_go"]["dpdp"] == ["eu-west-1", "eu-central-1"]
    code, out, _ = run(capsys, "show", "instruments")
    assert "any: us-east-1" in out
    code, _, err = run(capsys, "show", "nope")
    assert code == 2 and "nope" in err


@pytest.mark.parametrize("fmt", ["json", "csv", "md"])
def test_catalog_ropa_formats(capsys, fmt):
    code, out, _ = run(capsys, "ropa", "--format", fmt)
    assert code == 0
    if fmt == "json":
        assert json.loads(out)["activities"][0]["namespace"] == "customers"
    else:
        assert "customers" in out and "2022/254" in out
