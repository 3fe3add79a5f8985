"""Coordinator settings: the dataclass the daemon runs on, and the CLI / YAML that fill it.

Precedence: command-line flags, then the --config YAML file, then defaults. Heartbeat settings
left unset come from the cluster config. Relative paths in a --config file are relative to the
directory of that file; relative paths given as flags are relative to the working directory.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.addresses import split_host_port
from domicile.errors import InvalidArgument
from domicile.identity import settings
from domicile.identity.tls_files import TlsFiles
from domicile.yaml_text import load_yaml

DEFAULT_LISTEN = "127.0.0.1:7400"
DEFAULT_METRICS_PORT = 9400
DEFAULT_DATA_DIR = Path(".domicile/coordinator")

HEARTBEAT_INTERVAL_MS_MIN = 10
HEARTBEAT_INTERVAL_MS_MAX = 600_000
MISSED_HEARTBEATS_MAX_MIN = 1
MISSED_HEARTBEATS_MAX_MAX = 1000
TLS_STEM = "coordinator"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class CoordinatorLimits:
    """Every count and size the coordinator accepts. Units go last in names."""

    # Links grow with the square of the node count and every revision is pushed to every
    # watcher, so the node count is kept to what one Topology message carries comfortably.
    nodes_max: int = 256
    watchers_max: int = 1024
    address_bytes_max: int = 255
    # An erasure receipt lists every record a region kept (legal retention, holds): thousands
    # for a trading customer's transactions.
    request_bytes_max: int = 4 * 1024 * 1024
    response_bytes_max: int = 64 * 1024 * 1024
    concurrent_rpcs_max: int = 4096
    # Open erasures and holds travel to every node as a set of 1 MiB pages at every change
    # (WatchSubjectOrders): these keep a set a few megabytes.
    open_subject_requests_max: int = 5000
    legal_holds_max: int = 1000


@dataclass(frozen=True)
class CoordinatorConfig:
    cluster_config: Path
    listen: str = DEFAULT_LISTEN
    metrics_port: int = DEFAULT_METRICS_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    # None: take the value of the cluster config (ClusterSpec).
    heartbeat_interval_ms: int | None = None
    missed_heartbeats_max: int | None = None
    log_level: str = "INFO"
    shutdown_grace_s: float = 5.0
    limits: CoordinatorLimits = field(default_factory=CoordinatorLimits)
    # Mutual TLS: a directory with ca.crt, coordinator.crt and coordinator.key (what
    # `domicile certs issue --coordinator` writes), and/or single files that override its files.
    tls_dir: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Plaintext, no authentication, no authorization: development only, never a fallback.
    insecure: bool = False
    # Roll out changed schemas even when a registered node could not be asked whether its
    # stored values still validate (coordinator/schema_gate.py).
    allow_unchecked_schemas: bool = False
    # Cedar policies every call is decided by; None: the packaged default set.
    authz_policies: Path | None = None
    # Bearer tokens: the issuer's public keys (JWKS) and the iss and aud a token must carry.
    jwks: Path | None = None
    token_issuer: str = ""
    token_audience: str = ""
    # The region the coordinator runs in: when the cluster config names a backup bucket for it,
    # the coordinator's state is copied there every state_backup_interval_s it changed.
    region: str = ""
    state_backup_interval_s: float = 5.0

    def tls_files(self) -> TlsFiles | None:
        return settings.tls_files(
            tls_dir=self.tls_dir, ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key, stem=TLS_STEM
        )


def validate(config: CoordinatorConfig) -> None:
    """Raises InvalidArgument naming the first bad setting and what is allowed."""
    split_host_port(config.listen, "listen address")
    if not 0 <= config.metrics_port <= 65535:
        raise InvalidArgument(f"metrics port {config.metrics_port} is out of range 0 (disabled) to 65535")
    if not 0.05 <= config.state_backup_interval_s <= 86_400:
        raise InvalidArgument(
            f"state_backup_interval_s must be 0.05 to 86400 seconds, not {config.state_backup_interval_s}"
        )
    interval = config.heartbeat_interval_ms
    if interval is not None and not HEARTBEAT_INTERVAL_MS_MIN <= interval <= HEARTBEAT_INTERVAL_MS_MAX:
        raise InvalidArgument(
            f"heartbeat interval {interval} ms is out of range "
            f"{HEARTBEAT_INTERVAL_MS_MIN} to {HEARTBEAT_INTERVAL_MS_MAX} ms"
        )
    missed = config.missed_heartbeats_max
    if missed is not None and not MISSED_HEARTBEATS_MAX_MIN <= missed <= MISSED_HEARTBEATS_MAX_MAX:
        raise InvalidArgument(
            f"missed heartbeats max {missed} is out of range "
            f"{MISSED_HEARTBEATS_MAX_MIN} to {MISSED_HEARTBEATS_MAX_MAX}"
        )
    if config.log_level.upper() not in LOG_LEVELS:
        raise InvalidArgument(f"log level {config.log_level!r} is unknown; allowed: {', '.join(LOG_LEVELS)}")
    if not isinstance(config.insecure, bool):
        raise InvalidArgument(f"insecure must be true or false, not {config.insecure!r}")
    settings.check_choice(config.tls_files(), config.insecure, "the coordinator", TLS_STEM)
    settings.check_token_settings(config.jwks, config.token_issuer, config.token_audience)
    if not 0 <= config.shutdown_grace_s <= 600:
        raise InvalidArgument(f"shutdown grace {config.shutdown_grace_s} s is out of range 0 to 600 s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator",
        description="Domicile coordinator: tracks regions, nodes, health and replication links.",
    )
    # Defaults stay None so that a value from --config is only overridden by an explicit flag.
    parser.add_argument("--config", type=Path, help="YAML file with the same keys as these flags")
    parser.add_argument("--listen", help=f"gRPC HOST:PORT (default {DEFAULT_LISTEN}; port 0 picks one)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help=f"Prometheus /metrics port (default {DEFAULT_METRICS_PORT}; 0 disables)",
    )
    parser.add_argument("--data-dir", type=Path, help=f"state directory (default {DEFAULT_DATA_DIR})")
    parser.add_argument("--cluster-config", type=Path, help="cluster YAML: regions and namespaces")
    parser.add_argument(
        "--heartbeat-interval-ms", type=int, help="heartbeat interval (default: from the cluster config)"
    )
    parser.add_argument(
        "--missed-heartbeats-max",
        type=int,
        help="heartbeats a node may miss before it is marked down (default: from the cluster config)",
    )
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    parser.add_argument(
        "--tls-dir", type=Path, help="directory with ca.crt, coordinator.crt and coordinator.key (mutual TLS)"
    )
    parser.add_argument("--ca", dest="tls_ca", type=Path, help="CA certificate (overrides --tls-dir's)")
    parser.add_argument("--cert", dest="tls_cert", type=Path, help="the coordinator's certificate")
    parser.add_argument("--key", dest="tls_key", type=Path, help="the coordinator's private key (mode 0600)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plaintext, no authentication or authorization (development only; logged at WARNING)",
    )
    parser.add_argument(
        "--allow-unchecked-schemas",
        action="store_true",
        default=None,
        help="roll out changed schemas even when a node cannot be asked whether its stored values "
        "still validate (a node that answers with invalid values still refuses the config)",
    )
    parser.add_argument(
        "--authz-policies",
        type=Path,
        help="Cedar policy file (default: the packaged deploy/authz/policies.cedar)",
    )
    parser.add_argument(
        "--jwks", type=Path, help="JWKS file of the public keys bearer tokens are signed with"
    )
    parser.add_argument("--token-issuer", help="the iss a bearer token must carry (with --jwks)")
    parser.add_argument("--token-audience", help="the aud a bearer token must carry (with --jwks)")
    parser.add_argument(
        "--region", help="region the coordinator runs in; its state is backed up to that region's bucket"
    )
    parser.add_argument(
        "--state-backup-interval-s",
        type=float,
        help="seconds between state backups when the state changed (default 5)",
    )
    return parser


_FILE_KEYS = (
    "listen",
    "metrics_port",
    "data_dir",
    "cluster_config",
    "heartbeat_interval_ms",
    "missed_heartbeats_max",
    "log_level",
    "tls_dir",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "insecure",
    "allow_unchecked_schemas",
    "authz_policies",
    "jwks",
    "token_issuer",
    "token_audience",
    "region",
    "state_backup_interval_s",
)
_BOOL_KEYS = ("insecure", "allow_unchecked_schemas")
_INT_KEYS = ("metrics_port", "heartbeat_interval_ms", "missed_heartbeats_max")
_PATH_KEYS = (
    "data_dir",
    "cluster_config",
    "tls_dir",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "authz_policies",
    "jwks",
)


def load_config_file(path: Path) -> dict[str, Any]:
    """Reads a coordinator YAML; keys may use dashes or underscores."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidArgument(f"coordinator config {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"coordinator config {path} cannot be read as UTF-8 text: {exc}") from None
    data = load_yaml(text, f"coordinator config {path}")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise InvalidArgument(f"coordinator config {path}: expected a mapping at the top level")
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FILE_KEYS:
            raise InvalidArgument(
                f"coordinator config {path}: unknown key {raw_key!r}; allowed: {', '.join(_FILE_KEYS)}"
            )
        if key in _BOOL_KEYS:
            if not isinstance(value, bool):
                raise InvalidArgument(
                    f"coordinator config {path}: {raw_key} must be true or false, got {value!r}"
                )
        elif key in _INT_KEYS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidArgument(
                    f"coordinator config {path}: {raw_key} must be an integer, got {value!r}"
                )
        elif key == "state_backup_interval_s":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidArgument(f"coordinator config {path}: {raw_key} must be a number, got {value!r}")
        elif not isinstance(value, str):
            raise InvalidArgument(f"coordinator config {path}: {raw_key} must be a string, got {value!r}")
        if key in _PATH_KEYS:
            value = path.parent / Path(value)
        values[key] = value
    return values


def config_from_args(argv: Sequence[str] | None = None) -> CoordinatorConfig:
    """Parses flags (and --config); raises InvalidArgument on bad values."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = load_config_file(args.config) if args.config is not None else {}
    for key in _FILE_KEYS:
        flag_value = getattr(args, key)
        if flag_value is not None:
            values[key] = flag_value
    if "cluster_config" not in values:
        raise InvalidArgument("--cluster-config is required (as a flag or as cluster_config in --config)")
    config = CoordinatorConfig(**values)
    validate(config)
    return config


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
