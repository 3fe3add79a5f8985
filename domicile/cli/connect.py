"""How the CLI reaches a cluster: its TLS files (or --insecure), its token and its purpose.

The files are found in this order: --tls-ca/--tls-cert/--tls-key, --tls-dir with --identity, the
DOMICILE_* variables of the same names, and last the directory `domicile up` writes
(.domicile/tls, with the identity `cli`). Nothing found is an error, never plaintext.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from domicile.errors import InvalidArgument
from domicile.identity import settings, transport
from domicile.identity.credentials import Dialer

DEV_TLS_DIR = Path(".domicile") / "tls"
DEFAULT_IDENTITY = "cli"
_TRUE = ("1", "true", "yes", "on")


def add_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--tls-dir",
        default=env("DOMICILE_TLS_DIR"),
        metavar="DIR",
        help=f"directory with ca.crt and client-IDENTITY.crt/.key (default: $DOMICILE_TLS_DIR, else "
        f"{DEV_TLS_DIR} when `domicile up` made it)",
    )
    parser.add_argument(
        "--identity",
        default=env("DOMICILE_IDENTITY", DEFAULT_IDENTITY),
        metavar="NAME",
        help="the client certificate in --tls-dir to use (default: $DOMICILE_IDENTITY or %(default)s)",
    )
    # --tls-*, not --ca/--cert/--key: the record commands' --key is the record's key.
    parser.add_argument("--tls-ca", default=env("DOMICILE_TLS_CA"), metavar="FILE", help="CA certificate")
    parser.add_argument(
        "--tls-cert", default=env("DOMICILE_TLS_CERT"), metavar="FILE", help="client certificate"
    )
    parser.add_argument(
        "--tls-key", default=env("DOMICILE_TLS_KEY"), metavar="FILE", help="client private key (mode 0600)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=env("DOMICILE_INSECURE", "").lower() in _TRUE,
        help="plaintext, for a cluster started with --insecure (default: $DOMICILE_INSECURE)",
    )
    parser.add_argument(
        "--token-file",
        default=env("DOMICILE_TOKEN_FILE"),
        metavar="FILE",
        help="a JWT to send as the bearer token with every call (default: $DOMICILE_TOKEN_FILE)",
    )
    parser.add_argument(
        "--purpose",
        default=env("DOMICILE_PURPOSE", ""),
        help="the processing purpose declared with every call (default: $DOMICILE_PURPOSE)",
    )


def dialer(args: argparse.Namespace) -> Dialer:
    stem = f"client-{args.identity}"
    files = settings.tls_files(
        tls_dir=args.tls_dir,
        ca=args.tls_ca,
        cert=args.tls_cert,
        key=args.tls_key,
        stem=stem,
        flags=("--tls-ca", "--tls-cert", "--tls-key"),
    )
    if files is None and not args.insecure and (DEV_TLS_DIR / "ca.crt").exists():
        files = settings.tls_files(tls_dir=DEV_TLS_DIR, stem=stem)
    return transport.client_dialer(files, args.insecure, "domicile", stem)


def client_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of Client / AsyncClient that say how to connect."""
    token = None
    if args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as exc:
            raise InvalidArgument(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
    return {"dialer": dialer(args), "token": token, "purpose": args.purpose}
