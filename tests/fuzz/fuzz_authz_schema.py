"""Fuzzes the Cedar schema loader: schema file bytes (the first byte picks the form: even for
the .cedarschema text, odd for Cedar's JSON) loaded with the packaged default policies. The
outcome is an Authorizer or InvalidArgument naming the file; anything else escaping (or the
process dying in the Cedar library) is a crash. A schema that loads must then decide calls
without error. fuzz_authz.py does the same for the policy file.

    python tests/fuzz/fuzz_authz_schema.py [-runs=N] [libFuzzer flags] corpus_dir...
"""

from __future__ import annotations

import sys

import atheris
from workdir import workdir

with atheris.instrument_imports(include=["domicile"]):
    from domicile.authz import (
        Authorizer,
        ClusterResource,
        NamespaceResource,
        Principal,
        PrincipalKind,
        RegionResource,
        RequestContext,
        Role,
    )
    from domicile.authz.loader import DEFAULT_POLICIES, default_text
    from domicile.errors import DomicileError

WORK = workdir("authz_schema")
POLICIES = WORK / "policies.cedar"
POLICIES.write_text(default_text(DEFAULT_POLICIES))
SCHEMAS = (WORK / "schema.cedarschema", WORK / "schema.json")
APP = Principal("spiffe://domicile/client/trading", PrincipalKind.CLIENT, frozenset({Role.APP}))
DPO = Principal("spiffe://domicile/client/privacy", PrincipalKind.CLIENT, frozenset({Role.DPO}))
CALLS = (
    (
        APP,
        "storage.Put",
        NamespaceResource("trades", "eu-west-1", "financial", "trading", ("trade_execution",)),
    ),
    (DPO, "storage.ExportSubject", RegionResource("eu-west-1")),
    (DPO, "coordinator.EraseSubject", ClusterResource()),
)
TRADE = RequestContext("trade_execution")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    schema = SCHEMAS[data[0] % 2]
    schema.write_bytes(data[1:])
    try:
        authz = Authorizer.from_files(POLICIES, schema)
    except DomicileError:
        return
    for principal, action, resource in CALLS:
        authz.authorize(principal, action, resource, TRADE)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
