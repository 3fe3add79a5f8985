"""The cluster configuration: regions and namespaces (datasets) with their scopes.

Loaded from YAML by the coordinator, distributed to nodes with the topology, and readable by a
node directly so that it can serve before it has ever reached the coordinator.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domicile.catalog import Controller, NamespaceCatalog, parse_catalog, parse_controller
from domicile.errors import InvalidArgument, NotFound
from domicile.identity.spiffe import check_region
from domicile.model import Classification, ConflictMode, check_namespace_name, check_purpose
from domicile.quality import canonical_schema
from domicile.subjects import DEFAULT_RETENTION_CLASSES, RetentionClass, parse_retention_classes
from domicile.sync_modes import REALTIME, REALTIME_SPEC, SyncSpec, parse_sync
from domicile.yaml_text import load_yaml

BACKUP_RETENTION_DAYS_DEFAULT = 30
BACKUP_GENERATION_HOURS_DEFAULT = 24


@dataclass(frozen=True)
class BackupSpec:
    """Where a region's nodes back up their stores: an S3 endpoint and bucket, and the
    configured region the bucket is located in (checked against the policy at node start,
    domicile.backup.residency). Credentials come from the usual AWS sources (environment,
    shared files, instance role), never from this file."""

    endpoint: str
    bucket: str
    bucket_region: str
    prefix: str = ""
    retention_days: int = BACKUP_RETENTION_DAYS_DEFAULT
    # A new generation (base snapshot) this often; older ones are deleted past retention.
    generation_hours: float = BACKUP_GENERATION_HOURS_DEFAULT


@dataclass(frozen=True)
class RegionSpec:
    name: str
    country: str = ""
    jurisdiction: str = ""
    # The coordinator sends each node its own region's section with the topology.
    backup: BackupSpec | None = None


SIBLINGS_MAX_DEFAULT = 16
# A key state is read whole; past this many versions a read would near the read size limits.
SIBLINGS_MAX_LIMIT = 1024


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
    # The purposes records of this namespace may be processed for (GDPR Art. 5(1)(b) purpose
    # limitation); empty means no limitation. Config-only for now: the topology does not carry it.
    purposes: tuple[str, ...] = ()
    # Steward, lawful basis per law, categories, recipients, schema reference (domicile/catalog.py).
    # Config-only: the topology does not carry it, so a node's copy from the coordinator is empty.
    catalog: NamespaceCatalog = field(default_factory=NamespaceCatalog)
    # The JSON Schema (Draft 2020-12) its values must follow, as compact JSON text read from the
    # catalog's schema reference; "" for none. Carried by the topology, so every node enforces it.
    json_schema: str = ""
    # Top-level fields the dataset wants present (domicile/quality.py: quality_score).
    quality_fields: tuple[str, ...] = ()
    # The most versions (siblings, tombstones included) a client write may leave on one key.
    siblings_max: int = SIBLINGS_MAX_DEFAULT
    # How many in-scope regions must hold a write durably before it is acknowledged (1: the
    # accepting region alone; the others follow asynchronously).
    min_regions_acked: int = 1
    # How often its records are shipped to the regions of its scope (domicile/sync_modes.py).
    sync: SyncSpec = REALTIME_SPEC

    def allows(self, region: str) -> bool:
        return self.is_global or region in self.regions

    @property
    def classification_floor(self) -> Classification:
        """The loosest classification a record of this namespace is written with and judged by:
        the namespace's own, or personal when it is one this version does not know (sent by a
        newer coordinator). A record may be stricter, never looser."""
        if self.classification is Classification.UNSPECIFIED:
            return Classification.PERSONAL
        return self.classification

    def scope_text(self) -> str:
        return "global" if self.is_global else ", ".join(self.regions)


@dataclass(frozen=True)
class ClusterSpec:
    regions: tuple[RegionSpec, ...] = ()
    namespaces: tuple[NamespaceSpec, ...] = ()
    policy_version: str = "scope-v1"
    # The residency policy pack (YAML text, see deploy/policy/pack.yaml) and where it was read
    # from; empty when only the namespace scopes apply. Kept as text so that the coordinator can
    # distribute exactly what it validated; domicile.policy.select parses it.
    policy_pack_yaml: str = ""
    policy_pack_source: str = ""
    # The Cedar authorization policies (text) and where they were read from; empty when the
    # cluster config names none, and each daemon then uses its own (`authz_policies`) or the
    # packaged default set. Kept as text for the same reason as the pack; domicile.authz parses it.
    authz_policies_text: str = ""
    authz_policies_source: str = ""
    retention_classes: tuple[RetentionClass, ...] = DEFAULT_RETENTION_CLASSES
    heartbeat_interval_ms: int = 1000
    missed_heartbeats_max: int = 3
    # The controller of the processing (for the record of processing); config-only.
    controller: Controller | None = None
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

    def retention_class(self, name: str) -> RetentionClass | None:
        """The class of that name; None for "" (a namespace without one) or an unknown name."""
        return next((c for c in self.retention_classes if c.name == name), None)

    def region(self, name: str) -> RegionSpec | None:
        return next((r for r in self.regions if r.name == name), None)


def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise InvalidArgument(f"{where}: missing required field {key!r}")
    return mapping[key]


def _sequence(data: Mapping[str, Any], key: str, source: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise InvalidArgument(f"{source}: {key} must be a list, not {type(value).__name__}")
    return value


def _whole_number(section: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = section.get(key, default)
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(f"{where}.{key} must be a whole number, not {value!r}") from None


def _siblings_max(raw: Mapping[str, Any], where: str) -> int:
    value = raw.get("siblings_max", SIBLINGS_MAX_DEFAULT)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= SIBLINGS_MAX_LIMIT:
        raise InvalidArgument(
            f"{where}: siblings_max must be a whole number from 1 to {SIBLINGS_MAX_LIMIT} (default "
            f"{SIBLINGS_MAX_DEFAULT}), not {value!r}"
        )
    return value


def _min_regions_acked(raw: Mapping[str, Any], where: str, in_scope: int) -> int:
    value = raw.get("min_regions_acked", 1)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= in_scope:
        raise InvalidArgument(
            f"{where}: min_regions_acked must be a whole number from 1 to {in_scope} (the regions in "
            f"its scope; default 1), not {value!r}"
        )
    return value


def _sync(raw: Mapping[str, Any], where: str, scope: list[str]) -> SyncSpec:
    spec = parse_sync(raw.get("sync"), where, scope)
    if spec.mode != REALTIME and raw.get("min_regions_acked", 1) != 1:
        # A write waiting for other regions would wait for the next batch or window.
        raise InvalidArgument(
            f"{where}: min_regions_acked above 1 needs sync: realtime (a {spec.mode} link makes a "
            "write wait for the next shipment)"
        )
    return spec


def _purposes(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = raw.get("purposes")
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidArgument(
            f"{where}: purposes must be a list of short identifiers, e.g. [trade_execution]"
        )
    purposes = []
    for j, purpose in enumerate(value):
        if not isinstance(purpose, str):
            raise InvalidArgument(f"{where}: purposes[{j}] must be a string, not {purpose!r}")
        try:
            check_purpose(purpose)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: purposes[{j}]: {exc.message}") from None
        if purpose in purposes:
            raise InvalidArgument(f"{where}: purposes[{j}]: {purpose!r} is listed twice")
        purposes.append(purpose)
    return tuple(purposes)


def _schema(ref: str, where: str, base_dir: Path | None) -> str:
    """Reads the JSON Schema file a namespace names (relative to the cluster config)."""
    if not ref:
        return ""
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidArgument(f"{where}.schema: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidArgument(f"{where}.schema: {path} is not JSON: {exc}") from None
    return canonical_schema(document, f"{where}.schema ({ref})")


def _quality_fields(raw: Mapping[str, Any], where: str) -> tuple[str, ...]:
    value = raw.get("quality_fields")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(f, str) and f for f in value):
        raise InvalidArgument(f"{where}.quality_fields: expected a list of top-level field names")
    if len(set(value)) != len(value):
        raise InvalidArgument(f"{where}.quality_fields: a field is listed twice")
    return tuple(value)


def _named_file(
    data: Mapping[str, Any], key: str, what: str, source: str, base_dir: Path | None
) -> tuple[str, str]:
    """Reads the file named by `key` (relative to the cluster config's directory): its text and path."""
    ref = data.get(key)
    if ref is None:
        return "", ""
    if not isinstance(ref, str) or not ref:
        raise InvalidArgument(f"{source}: {key} must be the path of a {what}")
    path = Path(ref)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidArgument(f"{source}: {key} {ref}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"{source}: {key} {ref}: {path} is not UTF-8 text") from None
    return text, str(path)


def _pack_version(text: str, source: str) -> tuple[str, list[str]]:
    """The pack's version and its law ids (to check the namespaces' lawful_basis keys); the
    policy package validates the rest."""
    data = load_yaml(text, f"policy pack {source}")
    if not isinstance(data, Mapping) or not data.get("version"):
        raise InvalidArgument(f"policy pack {source}: missing required field 'version'")
    laws = data.get("laws")
    ids = (
        [str(law["id"]) for law in laws if isinstance(law, Mapping) and "id" in law]
        if isinstance(laws, list)
        else []
    )
    return str(data["version"]), ids


_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _backup(raw: Any, where: str) -> BackupSpec | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"{where}: expected a mapping with endpoint, bucket and bucket_region")
    allowed = {"endpoint", "bucket", "bucket_region", "prefix", "retention_days", "generation_hours"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise InvalidArgument(f"{where}: unknown fields {unknown}; allowed: {sorted(allowed)}")
    endpoint = str(_require(raw, "endpoint", where))
    if not endpoint.startswith(("http://", "https://")):
        raise InvalidArgument(f"{where}.endpoint must be an http:// or https:// URL, not {endpoint!r}")
    bucket = str(_require(raw, "bucket", where))
    if not _BUCKET_NAME.fullmatch(bucket):
        raise InvalidArgument(
            f"{where}.bucket {bucket!r} is not an S3 bucket name "
            "(3 to 63 lower-case letters, digits, '.' and '-')"
        )
    prefix = str(raw.get("prefix", ""))
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    retention_days = _whole_number(raw, "retention_days", BACKUP_RETENTION_DAYS_DEFAULT, where)
    if not 1 <= retention_days <= 36_500:
        raise InvalidArgument(f"{where}.retention_days must be 1 to 36500, not {retention_days}")
    try:
        generation_hours = float(raw.get("generation_hours", BACKUP_GENERATION_HOURS_DEFAULT))
    except (TypeError, ValueError):
        raise InvalidArgument(f"{where}.generation_hours must be a number of hours") from None
    if not 0.001 <= generation_hours <= 24 * 366:
        raise InvalidArgument(f"{where}.generation_hours must be 0.001 to 8784, not {generation_hours}")
    return BackupSpec(
        endpoint=endpoint,
        bucket=bucket,
        bucket_region=str(_require(raw, "bucket_region", where)),
        prefix=prefix,
        retention_days=retention_days,
        generation_hours=generation_hours,
    )


def _text(raw: Mapping[str, Any], key: str, where: str) -> str:
    """An optional text field: absent or left empty (YAML null) is "", anything but text is
    refused (str() would turn a null into the text "None", an owner a client could be named)."""
    value = raw.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(
            f"{where}.{key}: expected text, got {type(value).__name__} {value!r}; quote the value in "
            "the YAML (a bare NO, yes or 4711 is read as a boolean or a number)"
        )
    return value


def parse_cluster(
    data: Mapping[str, Any], source: str = "cluster config", base_dir: Path | None = None
) -> ClusterSpec:
    """Builds a ClusterSpec from parsed YAML, naming the field at fault on any error."""
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"{source}: expected a mapping at the top level")
    regions = []
    for i, raw in enumerate(_sequence(data, "regions", source)):
        where = f"{source}: regions[{i}]"
        if not isinstance(raw, Mapping):
            raise InvalidArgument(f"{where}: expected a mapping")
        name = _require(raw, "name", where)
        try:
            # A node's identity (its certificate, its registration) names its region this way.
            check_region(name if isinstance(name, str) else "")
        except InvalidArgument:
            raise InvalidArgument(
                f"{where}.name: {name!r} is not a region name: 1 to 63 of a-z 0-9 '-', starting with "
                "a letter (as node identities name regions)"
            ) from None
        regions.append(
            RegionSpec(
                name=name,
                country=_text(raw, "country", where),
                jurisdiction=_text(raw, "jurisdiction", where),
                backup=_backup(raw.get("backup"), f"{where}.backup"),
            )
        )
    region_names = {r.name for r in regions}
    if len(region_names) != len(regions):
        raise InvalidArgument(f"{source}: region names must be unique")
    pack_yaml, pack_source = _named_file(data, "policy_pack", "policy pack YAML file", source, base_dir)
    pack_version, law_ids = _pack_version(pack_yaml, pack_source) if pack_yaml else ("", None)
    for r in regions:
        if r.backup is not None and r.backup.bucket_region not in region_names:
            raise InvalidArgument(
                f"{source}: region {r.name}: backup.bucket_region {r.backup.bucket_region!r} is not a "
                f"configured region; name the region the bucket is located in: {sorted(region_names)}"
            )
    namespaces = []
    for i, raw in enumerate(_sequence(data, "namespaces", source)):
        where = f"{source}: namespaces[{i}]"
        if not isinstance(raw, Mapping):
            raise InvalidArgument(f"{where}: expected a mapping")
        name = str(_require(raw, "name", where))
        check_namespace_name(name)
        scope = _require(raw, "regions", where)
        is_global = scope == "global"
        scoped: Sequence[str] = () if is_global else scope
        if not is_global and (
            not isinstance(scoped, list) or not scoped or not all(isinstance(r, str) for r in scoped)
        ):
            raise InvalidArgument(
                f"{where} ({name}): regions must be 'global' or a non-empty list of region names"
            )
        unknown = [r for r in scoped if r not in region_names]
        if unknown:
            raise InvalidArgument(
                f"{where} ({name}): unknown regions {unknown}; configured: {sorted(region_names)}"
            )
        catalog = parse_catalog(raw, f"{where} ({name})", law_ids)
        namespaces.append(
            NamespaceSpec(
                name=name,
                regions=tuple(str(r) for r in scoped),
                is_global=is_global,
                conflict_mode=ConflictMode.parse(str(raw.get("conflict_mode", "siblings"))),
                classification=Classification.parse(str(raw.get("classification", "internal"))),
                owner=_text(raw, "owner", f"{where} ({name})"),
                retention_class=_text(raw, "retention_class", f"{where} ({name})"),
                description=_text(raw, "description", f"{where} ({name})"),
                purposes=_purposes(raw, f"{where} ({name})"),
                catalog=catalog,
                json_schema=_schema(catalog.schema, f"{where} ({name})", base_dir),
                quality_fields=_quality_fields(raw, f"{where} ({name})"),
                siblings_max=_siblings_max(raw, f"{where} ({name})"),
                min_regions_acked=_min_regions_acked(
                    raw, f"{where} ({name})", len(region_names) if is_global else len(set(scoped))
                ),
                sync=_sync(raw, f"{where} ({name})", sorted(region_names) if is_global else list(scoped)),
            )
        )
    if len({n.name for n in namespaces}) != len(namespaces):
        raise InvalidArgument(f"{source}: namespace names must be unique")
    retention = parse_retention_classes(data.get("retention_classes"), source)
    known_classes = {c.name for c in retention}
    for n in namespaces:
        if n.retention_class and n.retention_class not in known_classes:
            raise InvalidArgument(
                f"{source}: namespace {n.name}: unknown retention_class {n.retention_class!r}; "
                f"known: {', '.join(sorted(known_classes))}"
            )
    coordinator = data.get("coordinator") or {}
    if not isinstance(coordinator, Mapping):
        raise InvalidArgument(f"{source}: coordinator must be a mapping of settings")
    # Validated by the coordinator at start (domicile.authz), which this module does not import.
    authz_text, authz_source = _named_file(data, "authz_policies", "Cedar policy file", source, base_dir)
    # The version nodes report and the audit trail records: the pack's own version, prefixed
    # with the cluster's policy_version when both are given (the scopes are policy too).
    version = str(data.get("policy_version") or "")
    if pack_yaml:
        version = f"{version}/{pack_version}" if version else pack_version
    version = version or "scope-v1"
    return ClusterSpec(
        regions=tuple(regions),
        namespaces=tuple(namespaces),
        policy_version=version,
        policy_pack_yaml=pack_yaml,
        policy_pack_source=pack_source,
        authz_policies_text=authz_text,
        authz_policies_source=authz_source,
        retention_classes=retention,
        heartbeat_interval_ms=_whole_number(
            coordinator, "heartbeat_interval_ms", 1000, f"{source}: coordinator"
        ),
        missed_heartbeats_max=_whole_number(
            coordinator, "missed_heartbeats_max", 3, f"{source}: coordinator"
        ),
        controller=parse_controller(data.get("controller"), f"{source}: controller"),
    )


def load_cluster(path: str | Path) -> ClusterSpec:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgument(f"cluster config {path} does not exist") from None
    except UnicodeDecodeError:
        raise InvalidArgument(f"cluster config {path} is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidArgument(f"cluster config {path} cannot be read: {exc.strerror}") from None
    return parse_cluster(load_yaml(text, f"cluster config {path}"), str(path), path.parent)
