"""certs init / certs issue: the cluster CA and the certificates of nodes, the coordinator and clients.

Works on files only; no daemon is contacted. Exit 0 done, 2 bad input (or a CA that exists).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from domicile.errors import InvalidArgument

# Kept in step with domicile.identity.principal.ROLE_NAMES; importing it here would load the
# identity package (and cryptography) for every `domicile` command, since parsers are built first.
ROLES = ("app", "dpo", "auditor", "operator", "monitor")
DAYS_MAX = 36500


def _roles(text: str) -> list[str]:
    roles = [r.strip() for r in text.split(",") if r.strip()]
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        named = ", ".join(unknown) or repr(text)
        raise argparse.ArgumentTypeError(
            f"unknown role {named}; allowed: a comma-separated list of {', '.join(ROLES)}"
        )
    return roles


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if not 1 <= value <= DAYS_MAX:
        raise argparse.ArgumentTypeError(f"{value} days is outside 1..{DAYS_MAX}")
    return value


def add_parser(sub: Any) -> None:
    certs = sub.add_parser("certs", help="the cluster CA and the certificates it issues (files only)")
    actions = certs.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    p = actions.add_parser(
        "init",
        help="create the cluster CA (ca.crt, ca.key)",
        description="Create the cluster's certificate authority in --dir: ca.crt (give it to every "
        "process) and ca.key (mode 0600; keep it where certificates are issued, nowhere else). "
        "An existing CA is kept unless --force. Exit 0 created, 2 bad input or a CA exists.",
    )
    p.add_argument("--dir", required=True, type=Path, help="directory of the CA")
    p.add_argument("--cluster", required=True, help="cluster name, the SPIFFE trust domain (e.g. prod)")
    p.add_argument("--days", type=_days, default=3650, help="validity of the CA (default: %(default)s)")
    p.add_argument(
        "--force", action="store_true", help="replace an existing CA (every issued certificate stops working)"
    )

    p = actions.add_parser(
        "issue",
        help="issue a node, coordinator or client certificate",
        description="Issue a certificate signed by the CA in --dir and write <stem>.crt and <stem>.key "
        "(mode 0600) to --out-dir, replacing older ones: stems node-<ID>, coordinator, client-<NAME>. "
        "Nodes and the coordinator get serverAuth and clientAuth and DNS/IP names for --host; "
        "clients get clientAuth only and their --roles. A node certificate also binds the node's "
        "audit-head key, <stem>.audit.key beside it (--audit-key). Exit 0 issued, 2 bad input.",
    )
    p.add_argument("--dir", required=True, type=Path, help="directory of the CA (from certs init)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", metavar="ID", help="a node: its node id (needs --region)")
    who.add_argument("--coordinator", action="store_true", help="the coordinator")
    who.add_argument("--client", metavar="NAME", help="a client (an application or a person)")
    p.add_argument("--region", help="with --node: the region the node serves")
    p.add_argument("--roles", type=_roles, help=f"with --client: comma-separated, of {', '.join(ROLES)}")
    p.add_argument("--days", type=_days, default=90, help="validity (default: %(default)s)")
    p.add_argument(
        "--host",
        action="append",
        metavar="H",
        help="with --node or --coordinator: a DNS name or IP address the server is reached at "
        "(repeatable; default: localhost and 127.0.0.1)",
    )
    p.add_argument(
        "--out-dir", type=Path, help="where to write (default: --dir); gets a copy of ca.crt (and of ca.crl)"
    )
    p.add_argument(
        "--audit-key",
        type=Path,
        metavar="FILE",
        help="with --node: the Ed25519 key (PEM) the certificate binds for signing audit heads "
        "(default: <stem>.audit.key in --out-dir, kept when re-issuing, made when missing)",
    )

    p = actions.add_parser(
        "revoke",
        help="revoke certificates: add them to the cluster's revocation list (ca.crl)",
        description="Add certificates to the revocation list of the CA in --dir (ca.crl, signed by "
        "the CA; made when missing) by their file (--cert) or serial number (--serial, as `certs "
        "issue` prints it). Copy ca.crl wherever ca.crt is: every daemon reads it beside its CA "
        "file and refuses a revoked certificate from the next call, within a second, without a "
        "restart. Revocations are permanent. Exit 0 written, 2 bad input.",
    )
    p.add_argument("--dir", required=True, type=Path, help="directory of the CA (from certs init)")
    p.add_argument(
        "--cert", action="append", type=Path, metavar="FILE", help="a certificate to revoke (repeatable)"
    )
    p.add_argument(
        "--serial", action="append", metavar="HEX", help="the serial number of one to revoke (repeatable)"
    )


def init(args: argparse.Namespace) -> int:
    from domicile.identity import pki

    ca = pki.init_ca(args.dir, args.cluster, validity=pki.Validity.days(args.days), overwrite=args.force)
    print(f"CA of cluster {ca.cluster}, valid until {ca.certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    print(f"  certificate  {args.dir / pki.CA_CERT}")
    print(f"  key          {args.dir / pki.CA_KEY} (mode 0600; it can issue any identity of the cluster)")
    return 0


def issue(args: argparse.Namespace) -> int:
    from cryptography import x509

    from domicile.identity import audit_key, pki, revocation
    from domicile.identity.files import PUBLIC_MODE, write_atomically
    from domicile.identity.principal import parse_roles

    if args.region and not args.node:
        raise InvalidArgument("--region goes with --node only")
    if args.roles and not args.client:
        raise InvalidArgument("--roles goes with --client only: nodes and the coordinator have no roles")
    if args.host and args.client:
        raise InvalidArgument("--host goes with --node or --coordinator only: clients do not serve")
    if args.node and not args.region:
        raise InvalidArgument("--node needs --region: the region the node serves")
    if args.audit_key and not args.node:
        raise InvalidArgument("--audit-key goes with --node only: only nodes sign audit heads")
    ca = pki.load_ca(args.dir)
    validity = pki.Validity.days(args.days)
    hosts = tuple(args.host or pki.DEFAULT_HOSTS)
    out_dir: Path = args.out_dir or args.dir
    audit_path: Path | None = None
    if args.node:
        stem = f"node-{args.node}"
        # The key stays when the certificate is re-issued: the coordinator keeps a region's key.
        audit_path = args.audit_key or audit_key.key_path(out_dir / f"{stem}.crt")
        signer = audit_key.load_or_create(audit_path)
        issued = pki.issue_node(
            ca,
            args.region,
            args.node,
            hosts=hosts,
            validity=validity,
            audit_public_key=audit_key.public_bytes(signer),
        )
    elif args.coordinator:
        issued = pki.issue_coordinator(ca, hosts=hosts, validity=validity)
        stem = "coordinator"
    else:
        issued = pki.issue_client(ca, args.client, parse_roles(args.roles or ()), validity=validity)
        stem = f"client-{args.client}"
    cert_path, key_path = issued.write(out_dir, stem)
    ca_path = args.dir / pki.CA_CERT
    if out_dir.resolve() != args.dir.resolve():
        # A directory that holds everything one host needs, to copy there as a whole.
        ca_path = out_dir / pki.CA_CERT
        write_atomically(ca_path, ca.certificate_pem, PUBLIC_MODE, overwrite=True)
        crl = args.dir / revocation.CA_CRL
        if crl.exists():
            write_atomically(out_dir / revocation.CA_CRL, crl.read_bytes(), PUBLIC_MODE, overwrite=True)
    serial = x509.load_pem_x509_certificate(issued.certificate_pem).serial_number
    print(f"issued {issued.uri}, valid until {validity.not_after:%Y-%m-%d %H:%M} UTC")
    print(f"  serial       {revocation.serial_text(serial)}")
    print(f"  certificate  {cert_path}")
    print(f"  key          {key_path} (mode 0600)")
    if audit_path is not None:
        print(f"  audit key    {audit_path} (mode 0600; the key of the region's audit heads)")
    print(f"  CA           {ca_path}")
    return 0


def revoke(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    from domicile.identity import pki, revocation
    from domicile.identity.files import read_file

    if not args.cert and not args.serial:
        raise InvalidArgument("name what to revoke: --cert FILE or --serial HEX (each repeatable)")
    ca = pki.load_ca(args.dir)
    serials: dict[int, str] = {}
    for path in args.cert or ():
        try:
            certificate = x509.load_pem_x509_certificate(read_file(path, "certificate"))
        except ValueError:
            raise InvalidArgument(f"{path} is not a PEM certificate") from None
        if certificate == ca.certificate:
            raise InvalidArgument(
                f"{path} is the CA's own certificate: a CA cannot revoke itself. To retire it, make a "
                "new CA (certs init --force in another directory) and issue every certificate again"
            )
        try:
            certificate.verify_directly_issued_by(ca.certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise InvalidArgument(
                f"{path} is not issued by the CA in {args.dir}: revoking it there would change nothing"
            ) from None
        serials[certificate.serial_number] = str(path)
    for text in args.serial or ():
        serials.setdefault(revocation.parse_serial(text), "")
    added, listed = revocation.revoke(ca.certificate, ca.key, args.dir, serials)
    for serial, what in serials.items():
        state = "revoked" if serial in added else "already revoked"
        named = f" ({what})" if what else ""
        print(f"{state} {revocation.serial_text(serial)}{named}")
    print(
        f"revocation list {args.dir / revocation.CA_CRL}: {listed} revoked certificate{'s' * (listed != 1)}"
    )
    print("copy it beside ca.crt on every host; daemons refuse these certificates within a second")
    return 0
