"""Node configuration: command-line flags, optionally a YAML file with the same keys."""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from domicile.errors import InvalidArgument
from domicile.identity import settings
from domicile.identity.tls_files import TlsFiles
from domicile.model import Limits, check_node_id
from domicile.yaml_text import load_yaml

ENGINES = ("sqlite", "mongodb")
_MONGO_DB_NAME = re.compile(r"[A-Za-z0-9_-]{1,63}")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class SQLiteSettings:
    """The embedded engine: one file in the node's data directory."""

    # FULL: a commit is on disk when it is acknowledged; NORMAL and OFF exist for benchmarks.
    synchronous: str = "FULL"


@dataclass(frozen=True)
class MongoSettings:
    """A database on a MongoDB server; every node of a region may share it."""

    uri: str
    database: str


EngineSettings = SQLiteSettings | MongoSettings


def default_mongodb_database(region: str) -> str:
    """One database per region. Region names are lower-case letters, digits and dashes; MongoDB
    database names may not hold '.', '/', ' ' and a few more."""
    return "domicile_" + region.replace("-", "_")


@dataclass(frozen=True)
class NodeConfig:
    region: str
    node_id: str = ""
    listen: str = "127.0.0.1:7401"
    # Address other nodes and clients use to reach this node (a proxy or NAT in front of it);
    # empty means the bound listen address.
    advertise: str = ""
    metrics_port: int = 9401
    metrics_host: str = "127.0.0.1"
    data_dir: str = ""
    # What the node shares with the other daemons of its region over one MongoDB database: the
    # data keys (keys/) and the subject-hash key. Empty: the data directory (a node of its own).
    region_dir: str = ""
    coordinator: str = "127.0.0.1:7400"
    cluster_config: str = ""
    # The storage engine: "sqlite" (embedded, one file in data_dir) or "mongodb" (the region's
    # MongoDB database at mongodb_uri, which several nodes of the region may share).
    engine: str = "sqlite"
    # SQLite only: FULL (the default when empty) makes every acknowledged write durable; NORMAL
    # and OFF exist for benchmarks.
    synchronous: str = ""
    mongodb_uri: str = ""
    # Default: domicile_<region> (dashes become underscores).
    mongodb_database: str = ""
    log_level: str = "INFO"
    limits: Limits = field(default_factory=Limits)
    # Replication reconnect back-off: first delay and cap, in seconds.
    reconnect_delay_s: float = 0.05
    reconnect_delay_max_s: float = 5.0
    # How often the source persists acknowledged positions (only informational at the source:
    # the target's position is the authoritative one).
    ack_persist_interval_s: float = 1.0
    # How often records past their retention period are swept; 0 turns the sweeper off (a
    # sweep can still be run on demand).
    retention_sweep_interval_s: float = 300.0
    # How often this node compares its digest trees with each peer it replicates with and pulls
    # the keys that differ (anti-entropy); 0 turns the rounds off (the consistency check still
    # compares on demand).
    antientropy_interval_s: float = 60.0
    # After a policy change lets this region hold records it was refused before, the most key
    # states per second its backfill pulls from its peers (node.replication.backfill).
    backfill_rate_keys_s: float = 500.0
    # The most records one sweep deletes. A clock far ahead makes every short-lived record look
    # expired; the cap bounds what one such sweep destroys, and hitting it raises an alert.
    retention_expire_max: int = 10_000
    # Seconds between backup rounds (when the cluster config names a bucket for the region): the
    # recovery point objective. Ignored without a backup bucket.
    backup_interval_s: float = 0.5
    # How often the change log is truncated up to what every link acknowledged (and a backup
    # shipped), and tombstones past the horizon are collected; 0 turns both off.
    changelog_truncate_interval_s: float = 5.0
    # How long a link whose target acknowledges nothing and has no session (a peer that is down)
    # may hold change-log truncation back; past it the log is truncated without it and the
    # target is bootstrapped from a snapshot when it returns. 0: such a link holds truncation
    # back for ever.
    changelog_hold_max_s: float = 86_400.0
    # How old a tombstone must be (by its HLC) before it may be purged, once every replica in
    # scope has acknowledged its delete.
    tombstone_gc_horizon_s: float = 7 * 86_400.0
    # How far ahead of this node's clock a replicated write's HLC may be; further is refused.
    max_clock_drift_ms: int = 5000
    # At start, ask the coordinator whether the store is behind the log position this node
    # already reported (a store copied back by hand) and take a new incarnation if so
    # (node.rewind). Off only to show what the check prevents (the torture run's negative control).
    rewind_check: bool = True
    # The most calls one peer (a client certificate; a host on an insecure port) may have in
    # flight at this node, across all its connections; past it, RESOURCE_EXHAUSTED.
    peer_calls_max: int = 1024
    # The cluster's keys for causal-context tokens (1 to 4 keys of 32 bytes one after the other,
    # mode 0600; the first issues, all verify), the same file content on every node; empty: a key
    # of this node's own in the data directory (single-node development).
    context_key_file: str = ""
    # Mutual TLS: a directory with ca.crt, node-<node_id>.crt and node-<node_id>.key (what
    # `domicile certs issue --node` writes), and/or single files that override its files.
    tls_dir: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Plaintext, no authentication, no authorization: development only, never a fallback.
    insecure: bool = False
    # Cedar policies every call is decided by (validated against the packaged schema); empty:
    # the packaged default set (deploy/authz/policies.cedar).
    authz_policies: str = ""
    # Bearer tokens: a JWKS file of the issuer's public keys, and the issuer and audience a token
    # must name. Without jwks, calls that carry a token are refused.
    jwks: str = ""
    token_issuer: str = ""
    token_audience: str = ""
    # The region's read cache (node/cache/): a Redis URL (redis://HOST:PORT/DB, rediss:// for
    # TLS, unix:///PATH) and the region that Redis is in, which must be this node's. Empty: no cache.
    cache_redis_url: str = ""
    cache_redis_region: str = ""
    # How long an entry may live (bounds staleness if an invalidation is ever lost), and the
    # deadline of each cache call (past it, the read uses the store).
    cache_ttl_s: float = 300.0
    cache_deadline_ms: int = 50

    def __post_init__(self) -> None:
        if not self.region:
            raise InvalidArgument("--region is required")
        if not self.node_id:
            object.__setattr__(self, "node_id", self.region)
        check_node_id(self.node_id)
        if not self.data_dir:
            object.__setattr__(self, "data_dir", str(Path(".domicile") / self.node_id))
        self._check_engine()
        split_host_port(self.listen)
        if not -1 <= self.metrics_port <= 65_535:
            raise InvalidArgument(
                "metrics_port must be -1 (any free port), 0 (disabled) or a port up to 65535, "
                f"not {self.metrics_port}"
            )
        if self.log_level.upper() not in LOG_LEVELS:
            raise InvalidArgument(f"log_level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        # A zero delay would make every retry loop spin while a peer or the coordinator is down.
        if not 0 < self.reconnect_delay_s <= self.reconnect_delay_max_s <= 3_600:
            raise InvalidArgument(
                "reconnect_delay_s and reconnect_delay_max_s must satisfy 0 < reconnect_delay_s <= "
                f"reconnect_delay_max_s <= 3600 seconds, not {self.reconnect_delay_s} and "
                f"{self.reconnect_delay_max_s}"
            )
        if not 0 < self.ack_persist_interval_s <= 3_600:
            raise InvalidArgument(
                "ack_persist_interval_s must be above 0 and at most 3600 seconds, "
                f"not {self.ack_persist_interval_s}"
            )
        if not isinstance(self.limits, Limits):
            raise InvalidArgument("limits must be a Limits (set its fields one by one, not as a mapping)")
        if not 1 <= self.peer_calls_max <= 1_000_000:
            raise InvalidArgument(f"peer_calls_max must be 1 to 1000000 calls, not {self.peer_calls_max}")
        if not 1 <= self.max_clock_drift_ms <= 3_600_000:
            raise InvalidArgument(
                f"max_clock_drift_ms must be 1 to 3600000 milliseconds, not {self.max_clock_drift_ms}"
            )
        if not isinstance(self.rewind_check, bool):
            raise InvalidArgument(f"rewind_check must be true or false, not {self.rewind_check!r}")
        if not isinstance(self.insecure, bool):
            raise InvalidArgument(f"insecure must be true or false, not {self.insecure!r}")
        settings.check_choice(self.tls_files(), self.insecure, f"node {self.node_id}", self.tls_stem)
        settings.check_token_settings(self.jwks, self.token_issuer, self.token_audience)
        if not 1 <= self.retention_expire_max <= 10_000_000:
            raise InvalidArgument(
                "retention_expire_max must be 1 to 10000000 records per sweep, "
                f"not {self.retention_expire_max}"
            )
        if not 0 <= self.antientropy_interval_s <= 86_400:
            raise InvalidArgument(
                f"antientropy_interval_s must be 0 (off) to 86400 seconds, not {self.antientropy_interval_s}"
            )
        if not 0 <= self.changelog_truncate_interval_s <= 86_400:
            raise InvalidArgument(
                "changelog_truncate_interval_s must be 0 (off) to 86400 seconds, "
                f"not {self.changelog_truncate_interval_s}"
            )
        if not 0 <= self.changelog_hold_max_s <= 10 * 365 * 86_400:
            raise InvalidArgument(
                "changelog_hold_max_s must be 0 (a down peer holds truncation for ever) to 10 years "
                f"(in seconds), not {self.changelog_hold_max_s}"
            )
        if not 1 <= self.tombstone_gc_horizon_s <= 10 * 365 * 86_400:
            raise InvalidArgument(
                "tombstone_gc_horizon_s must be 1 second to 10 years (in seconds), "
                f"not {self.tombstone_gc_horizon_s}"
            )
        if not 1 <= self.backfill_rate_keys_s <= 1_000_000:
            raise InvalidArgument(
                f"backfill_rate_keys_s must be 1 to 1000000 keys per second, not {self.backfill_rate_keys_s}"
            )
        if not 0.01 <= self.backup_interval_s <= 3600:
            raise InvalidArgument(
                f"backup_interval_s must be 0.01 to 3600 seconds, not {self.backup_interval_s}"
            )
        if not 0 <= self.retention_sweep_interval_s <= 86_400:
            raise InvalidArgument(
                "retention_sweep_interval_s must be 0 (off) to 86400 seconds, "
                f"not {self.retention_sweep_interval_s}"
            )
        check_cache(self)

    def _check_engine(self) -> None:
        if self.engine not in ENGINES:
            raise InvalidArgument(f"engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.engine == "sqlite":
            if self.synchronous and self.synchronous.upper() not in {"FULL", "NORMAL", "OFF"}:
                raise InvalidArgument(f"synchronous must be FULL, NORMAL or OFF, not {self.synchronous!r}")
            if self.mongodb_uri or self.mongodb_database:
                raise InvalidArgument(
                    "mongodb_uri and mongodb_database are settings of the mongodb engine; "
                    "set engine: mongodb to use them"
                )
            return
        if self.synchronous:
            raise InvalidArgument(
                "synchronous is a setting of the sqlite engine; the mongodb engine commits with "
                "write concern majority and journaling"
            )
        if not self.mongodb_uri.startswith(("mongodb://", "mongodb+srv://")):
            raise InvalidArgument(
                "engine mongodb needs mongodb_uri, a mongodb:// or mongodb+srv:// URI, "
                f"not {self.mongodb_uri!r}"
            )
        if not self.mongodb_database:
            object.__setattr__(self, "mongodb_database", default_mongodb_database(self.region))
        if not _MONGO_DB_NAME.fullmatch(self.mongodb_database):
            raise InvalidArgument(
                f"mongodb_database {self.mongodb_database!r} is not allowed; use 1 to 63 letters, "
                "digits, '_' and '-'"
            )

    @property
    def region_directory(self) -> Path:
        return Path(self.region_dir or self.data_dir)

    def engine_settings(self) -> EngineSettings:
        if self.engine == "mongodb":
            return MongoSettings(uri=self.mongodb_uri, database=self.mongodb_database)
        return SQLiteSettings(synchronous=(self.synchronous or "FULL").upper())

    @property
    def tls_stem(self) -> str:
        return f"node-{self.node_id}"

    def tls_files(self) -> TlsFiles | None:
        return settings.tls_files(
            tls_dir=self.tls_dir, ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key, stem=self.tls_stem
        )


CACHE_RULE = "cache-in-region"
_CACHE_SCHEMES = ("redis", "rediss", "unix")
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def redis_url_for_logs(url: str) -> str:
    """The URL without its password (messages and logs must not carry it)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def check_cache(cfg: NodeConfig) -> None:
    """The cache settings; a cache in another region is refused (rule cache-in-region): what it
    holds are the region's records, which must not leave it."""
    if not cfg.cache_redis_url:
        if cfg.cache_redis_region:
            raise InvalidArgument("cache_redis_region is set without cache_redis_url; set both or neither")
        return
    url = urlsplit(cfg.cache_redis_url)
    shown = redis_url_for_logs(cfg.cache_redis_url)
    if url.scheme not in _CACHE_SCHEMES:
        raise InvalidArgument(
            f"cache_redis_url {shown!r} is not a Redis URL; use "
            "redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH"
        )
    if url.scheme == "redis" and url.hostname not in _LOOPBACK and not cfg.insecure:
        raise InvalidArgument(
            f"cache_redis_url {shown!r} is plaintext to another host; use rediss:// "
            "(TLS), a loopback address or a unix socket"
        )
    if not cfg.cache_redis_region:
        raise InvalidArgument(
            f"cache_redis_region is required with cache_redis_url: name the region the Redis is in "
            f"(it must be {cfg.region}, rule {CACHE_RULE})"
        )
    if cfg.cache_redis_region != cfg.region:
        raise InvalidArgument(
            f"the cache's Redis is in {cfg.cache_redis_region} but this node serves {cfg.region}; "
            f"rule {CACHE_RULE}: a node caches its records only in a Redis of its own region"
        )
    if not 0.001 <= cfg.cache_ttl_s <= 86_400:
        raise InvalidArgument(f"cache_ttl_s must be 0.001 to 86400 seconds, not {cfg.cache_ttl_s}")
    if not 1 <= cfg.cache_deadline_ms <= 10_000:
        raise InvalidArgument(
            f"cache_deadline_ms must be 1 to 10000 milliseconds, not {cfg.cache_deadline_ms}"
        )


def split_host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise InvalidArgument(f"invalid address {address!r}: expected HOST:PORT")
    return host, int(port)


def parse_args(argv: Sequence[str] | None = None) -> NodeConfig:
    parser = argparse.ArgumentParser(prog="domicile node", description="Run a regional storage node.")
    parser.add_argument("--config", help="YAML file with the same keys as these flags (flags override)")
    parser.add_argument("--region", help="region this node serves, e.g. eu-west-1 (required)")
    parser.add_argument("--node-id", help="node id, the writer id in version vectors (default: the region)")
    parser.add_argument("--listen", help="HOST:PORT for gRPC (default 127.0.0.1:7401)")
    parser.add_argument(
        "--advertise", help="HOST:PORT that others use to reach this node (default: --listen)"
    )
    parser.add_argument(
        "--metrics-port", type=int, help="Prometheus /metrics port (default 9401; 0 disables)"
    )
    parser.add_argument("--metrics-host", help="address the metrics endpoint binds (default 127.0.0.1)")
    parser.add_argument("--data-dir", help="directory of the embedded store (default ./.domicile/NODE_ID)")
    parser.add_argument(
        "--region-dir",
        help="directory shared with the region's other daemons over one MongoDB database: data keys "
        "and the subject-hash key (default: --data-dir)",
    )
    parser.add_argument("--coordinator", help="HOST:PORT of the coordinator (default 127.0.0.1:7400)")
    parser.add_argument("--cluster-config", help="cluster YAML, to serve before the coordinator is reached")
    parser.add_argument("--engine", choices=ENGINES, help="storage engine: sqlite (default) or mongodb")
    parser.add_argument("--synchronous", help="SQLite synchronous mode: FULL (default), NORMAL or OFF")
    parser.add_argument(
        "--mongodb-uri", help="the region's MongoDB, e.g. mongodb://host:27017 (engine mongodb)"
    )
    parser.add_argument(
        "--mongodb-database", help="database of the region's records (default domicile_<region>)"
    )
    parser.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    parser.add_argument(
        "--retention-sweep-interval-s",
        type=float,
        help="seconds between retention sweeps (default 300; 0 turns them off)",
    )
    parser.add_argument(
        "--antientropy-interval-s",
        type=float,
        help="seconds between anti-entropy rounds with each peer (default 60; 0 turns them off)",
    )
    parser.add_argument(
        "--changelog-truncate-interval-s",
        type=float,
        help="seconds between change-log truncation and tombstone collection passes (default 5; 0: off)",
    )
    parser.add_argument(
        "--changelog-hold-max-s",
        type=float,
        help="seconds a link whose target acknowledges nothing, with no session open, may hold "
        "change-log truncation back; then it is bootstrapped when it returns (default 86400; "
        "0: for ever)",
    )
    parser.add_argument(
        "--tombstone-gc-horizon-s",
        type=float,
        help="age (by HLC) past which a tombstone every replica acknowledged is purged (default 604800)",
    )
    parser.add_argument(
        "--backfill-rate-keys-s",
        type=float,
        help="key states per second a backfill pulls after the policy loosens (default 500)",
    )
    parser.add_argument(
        "--retention-expire-max",
        type=int,
        help="the most records one retention sweep deletes (default 10000; hitting it alerts)",
    )
    parser.add_argument(
        "--peer-calls-max",
        type=int,
        help="the most calls one peer may have in flight at this node (default 1024)",
    )
    parser.add_argument(
        "--backup-interval-s",
        type=float,
        help="seconds between backup rounds when the region has a backup bucket (default 0.5)",
    )
    parser.add_argument(
        "--max-clock-drift-ms",
        type=int,
        help="refuse replicated writes whose HLC is further ahead of this clock (default 5000)",
    )
    parser.add_argument(
        "--context-key-file",
        help="the cluster's context-token keys (mode 0600, the same on every node): one to four "
        "32-byte keys one after the other, the first issuing tokens and every one verifying them; "
        "default: a key of this node's own in the data directory",
    )
    parser.add_argument(
        "--tls-dir", help="directory with ca.crt, node-NODE_ID.crt and node-NODE_ID.key (mutual TLS)"
    )
    parser.add_argument("--ca", dest="tls_ca", help="CA certificate (overrides the one in --tls-dir)")
    parser.add_argument("--cert", dest="tls_cert", help="this node's certificate")
    parser.add_argument("--key", dest="tls_key", help="this node's private key (mode 0600)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="plaintext, no authentication or authorization (development only; logged at WARNING)",
    )
    parser.add_argument(
        "--unsafe-no-rewind-check",
        dest="rewind_check",
        action="store_false",
        default=None,
        help="do not check at start whether the store was copied back from an older copy (a rewound "
        "store then hands out dots again and loses writes; for tests of that failure only)",
    )
    parser.add_argument(
        "--authz-policies", help="Cedar policy file (default: the packaged deploy/authz/policies.cedar)"
    )
    parser.add_argument("--jwks", help="JWKS file of the public keys bearer tokens are signed with")
    parser.add_argument("--token-issuer", help="the iss a bearer token must carry (with --jwks)")
    parser.add_argument("--token-audience", help="the aud a bearer token must carry (with --jwks)")
    parser.add_argument(
        "--cache-redis-url",
        help="the region's Redis for the read cache (redis://HOST:PORT/DB, rediss://, unix:///PATH)",
    )
    parser.add_argument(
        "--cache-redis-region", help="the region that Redis is in; must be --region (rule cache-in-region)"
    )
    parser.add_argument("--cache-ttl-s", type=float, help="longest life of a cache entry (default 300)")
    parser.add_argument("--cache-deadline-ms", type=int, help="deadline of each cache call (default 50)")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    if args.config:
        try:
            text = Path(args.config).read_text(encoding="utf-8")
            loaded = load_yaml(text, f"--config {args.config}") or {}
        except (OSError, UnicodeDecodeError) as exc:
            parser.error(f"cannot read --config {args.config}: {exc}")
        except InvalidArgument as exc:
            parser.error(exc.message)
        if not isinstance(loaded, dict):
            parser.error(f"--config {args.config}: expected a mapping")
        values.update({k.replace("-", "_"): v for k, v in loaded.items()})
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "config"})
    known = {f.name for f in fields(NodeConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        parser.error(f"unknown configuration keys: {', '.join(unknown)}")
    if "region" not in values:
        parser.error("--region is required")
    try:
        return NodeConfig(**values)
    except (InvalidArgument, TypeError) as exc:
        parser.error(str(exc))
    raise AssertionError("unreachable")  # parser.error exits
