"""The cluster configuration: regions and namespaces (datasets) with their scopes.

Loaded from YAML by the coordinator, distributed to nodes with the topology, and readable by a
node directly so that it can serve before it has ever reached the coordinator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from domicile.errors import InvalidArgument, NotFound
from domicile.model import Classification, ConflictMode, check_namespace_name


@dataclass(frozen=True)
class RegionSpec:
    name: str
    country: str = ""
    jurisdiction: str = ""


@dataclass(frozen=True)
class NamespaceSpec:
    name: str
    regions: tuple[str, ...] = ()
    is_global: bool = False
    conflict_mode: ConflictMode = ConflictMode.SIBLINGS
    classification: Classification = Classification.INTERNAL
    owner: str = ""
    retention_class: str = ""
    description: str = ""

    def allows(self, region: str) -> bool:
        return self.is_global or region in self.regions

    def scope_text(self) -> str:
        return "global" if self.is_global else ", ".join(self.regions)


@dataclass(frozen=True)
class ClusterSpec:
    regions: tuple[RegionSpec, ...] = ()
    namespaces: tuple[NamespaceSpec, ...] = ()
    policy_version: str = "scope-v1"
    heartbeat_interval_ms: int = 1000
    missed_heartbeats_max: int = 3
    _by_name: Mapping[str, NamespaceSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {n.name: n for n in self.namespaces})

    def namespace(self, name: str) -> NamespaceSpec:
        spec = self._by_name.get(name)
        if spec is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise NotFound(f"unknown namespace {name!r}; known namespaces: {known}")
        return spec

    def find_namespace(self, name: str) -> NamespaceSpec | None:
        return self._by_name.get(name)

    def region_names(self) -> list[str]:
        return [r.name for r in self.regions]

    def region(self, name: str) -> RegionSpec | None:
        return next((r for r in self.regions if r.name == name), None)


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise InvalidArgument(f"{where}: missing required field {key!r}")
    return mapping[key]


def parse_cluster(data: Mapping[str, Any], source: str = "cluster config") -> ClusterSpec:
    """Builds a ClusterSpec from parsed YAML, naming the field at fault on any error."""
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"{source}: expected a mapping at the top level")
    regions = []
    for i, raw in enumerate(data.get("regions") or []):
        where = f"{source}: regions[{i}]"
        if not isinstance(raw, Mapping):
            raise InvalidArgument(f"{where}: expected a mapping")
        regions.append(
            RegionSpec(
                name=str(_require(raw, "name", where)),
                country=str(raw.get("country", "")),
                jurisdiction=str(raw.get("jurisdiction", "")),
            )
        )
    region_names = {r.name for r in regions}
    if len(region_names) != len(regions):
        raise InvalidArgument(f"{source}: region names must be unique")
    namespaces = []
    for i, raw in enumerate(data.get("namespaces") or []):
        where = f"{source}: namespaces[{i}]"
        if not isinstance(raw, Mapping):
            raise InvalidArgument(f"{where}: expected a mapping")
        name = str(_require(raw, "name", where))
        check_namespace_name(name)
        scope = _require(raw, "regions", where)
        is_global = scope == "global"
        scoped: Sequence[str] = () if is_global else scope
        if not is_global and (not isinstance(scoped, list) or not scoped):
            raise InvalidArgument(f"{where} ({name}): regions must be 'global' or a non-empty list")
        unknown = [r for r in scoped if r not in region_names]
        if unknown:
            raise InvalidArgument(
                f"{where} ({name}): unknown regions {unknown}; configured: {sorted(region_names)}"
            )
        namespaces.append(
            NamespaceSpec(
                name=name,
                regions=tuple(str(r) for r in scoped),
                is_global=is_global,
                conflict_mode=ConflictMode.parse(str(raw.get("conflict_mode", "siblings"))),
                classification=Classification.parse(str(raw.get("classification", "internal"))),
                owner=str(raw.get("owner", "")),
                retention_class=str(raw.get("retention_class", "")),
                description=str(raw.get("description", "")),
            )
        )
    if len({n.name for n in namespaces}) != len(namespaces):
        raise InvalidArgument(f"{source}: namespace names must be unique")
    coordinator = data.get("coordinator") or {}
    return ClusterSpec(
        regions=tuple(regions),
        namespaces=tuple(namespaces),
        policy_version=str(data.get("policy_version", "scope-v1")),
        heartbeat_interval_ms=int(coordinator.get("heartbeat_interval_ms", 1000)),
        missed_heartbeats_max=int(coordinator.get("missed_heartbeats_max", 3)),
    )


def load_cluster(path: str | Path) -> ClusterSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise InvalidArgument(f"cluster config {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"cluster config {path} is not valid YAML: {exc}") from None
    return parse_cluster(data, str(path))
