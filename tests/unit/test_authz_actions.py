"""Every RPC of domicile.v1 is an authorization action, and the default schema declares each one."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import domicile.v1
from domicile.authz import ACTIONS, Authorizer, ResourceKind, action, action_for_method
from domicile.authz.actions import SERVICE_PREFIXES, rpc_methods
from domicile.errors import InvalidArgument


def every_rpc() -> list[tuple[str, str]]:
    """(service, rpc) of every service in every generated module, found independently of actions.py."""
    found = []
    for module_info in pkgutil.iter_modules(domicile.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        module = importlib.import_module(f"domicile.v1.{module_info.name}")
        for service in module.DESCRIPTOR.services_by_name.values():
            found.extend((service.name, method.name) for method in service.methods)
    return found


def test_every_rpc_has_an_action():
    rpcs = every_rpc()
    assert len(rpcs) >= 24
    missing = [
        f"{service}.{rpc}"
        for service, rpc in rpcs
        if service not in SERVICE_PREFIXES or f"{SERVICE_PREFIXES[service]}.{rpc}" not in ACTIONS
    ]
    assert not missing, f"RPCs without an authorization action: {missing}"
    assert len(ACTIONS) == len(rpcs)


def test_the_default_schema_puts_every_action_in_exactly_one_class():
    classes = Authorizer.default().bundle.action_classes
    assert set(classes) == set(ACTIONS)
    assert all(len(c) == 1 for c in classes.values()), classes


def test_record_rpcs_act_on_a_namespace_node_rpcs_on_a_region_and_the_coordinators_on_the_cluster():
    kinds = {name: spec.resource_kind for name, spec in ACTIONS.items()}
    assert [n for n, k in kinds.items() if k is ResourceKind.NAMESPACE] == [
        "storage.Put",
        "storage.Get",
        "storage.Delete",
        "storage.Scan",
        "replication.EntropyDigests",
        "replication.EntropyKeys",
        "replication.EntropyStates",
    ]
    assert kinds["storage.ExportSubject"] is ResourceKind.REGION
    assert kinds["storage.CheckConsistency"] is ResourceKind.REGION
    assert kinds["replication.Replicate"] is ResourceKind.REGION
    assert kinds["coordinator.PlaceLegalHold"] is ResourceKind.CLUSTER


def test_every_grpc_method_path_maps_to_its_action():
    for method in rpc_methods():
        spec = action_for_method(method)
        assert method == f"/{spec.service}/{spec.rpc}"
    assert action_for_method("/domicile.v1.StorageNodeService/Put").name == "storage.Put"
    with pytest.raises(InvalidArgument):
        action_for_method("/domicile.v1.StorageNodeService/Frob")


def test_an_unknown_action_is_invalid_and_says_how_actions_are_named():
    with pytest.raises(InvalidArgument) as exc:
        action("storage.put")
    assert "storage.<Rpc>" in exc.value.message
