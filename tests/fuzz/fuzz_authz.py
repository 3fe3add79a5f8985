"""Fuzzes the Cedar policy loader: policy file bytes -> an Authorizer (validated against the
packaged schema), or InvalidArgument naming the file, line and column. Anything else escaping
(or the process dying in the Cedar library) is a crash. A loaded policy set must then decide
calls without error.

    python tests/fuzz/fuzz_authz.py [-runs=N] [libFuzzer flags] corpus_dir...
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
    from domicile.errors import DomicileError

POLICIES = workdir("authz") / "policies.cedar"
APP = Principal("spiffe://domicile/client/trading", PrincipalKind.CLIENT, frozenset({Role.APP}))
DPO = Principal("spiffe://domicile/client/privacy", PrincipalKind.CLIENT, frozenset({Role.DPO}))
CALLS = (
    (
        APP,
        "storage.Put",
        NamespaceResource("trades", "eu-west-1", "financial", "trading", ("trade_execution",)),
    ),
    (APP, "storage.Get", NamespaceResource("instruments", "us-east-1", "public")),
    (DPO, "storage.ExportSubject", RegionResource("eu-west-1")),
    (DPO, "coordinator.EraseSubject", ClusterResource()),
)
TRADE = RequestContext("trade_execution")


def test_one_input(data: bytes) -> None:
    POLICIES.write_bytes(data)
    try:
        authz = Authorizer.from_files(POLICIES)
    except DomicileError:
        return
    ids = set(authz.bundle.ids.values())
    for principal, action, resource in CALLS:
        decision = authz.authorize(principal, action, resource, TRADE)
        unknown = set(decision.policy_ids) - ids
        if unknown:
            raise AssertionError(f"decision names policies that were not loaded: {sorted(unknown)}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
