"""Revoked certificates: the cluster's certificate revocation list (CRL), `ca.crl` beside `ca.crt`.

A certificate is valid until it expires; a stolen key, or a person who leaves, must stop working
before that. `domicile certs revoke` adds certificates to the CRL, signed by the cluster CA, and
the file goes wherever `ca.crt` goes. Every daemon reads it beside its CA file (a CRL that the CA
did not sign, or that does not parse, is refused) and looks at it again, a stat, at most every
REVOCATION_LOOK_S when a call, a stream message or a scrape asks (ServerSecurity.revoked),
without a restart.

Revocations are permanent: what a daemon holds in force is the union of every valid list of its
CA it has read, kept in its data directory (REVOKED_STATE) across restarts. A stale copy of the
list put back on a host, the file removed, or a list forked from an old copy therefore lifts
nothing; the daemon says so at ERROR. The list is read apart from the certificate and key, so a
fault in those (say a key file's mode) never keeps a new list out.

The daemons check at the application layer, after the handshake (gRPC's Python API takes no
CRL): every call's certificate is looked up by serial number (domicile.authz.gate), so is every
message of a stream open before the revocation (domicile.authz.revoked_streams), and every scrape
of /metrics. What a daemon dials is not checked against the list: a revoked node key could still
serve as that node to a peer that reaches it (only with a position in the network); revoke and
replace its certificate, and remove the node (`domicile nodes remove`) if it is gone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from domicile.errors import DomicileError, InvalidArgument
from domicile.identity.files import PUBLIC_MODE, read_file, write_atomically

log = logging.getLogger("domicile.identity")

CA_CRL = "ca.crl"
# In a daemon's data directory: the revocations it holds in force, for the CA they belong to.
REVOKED_STATE = "revoked-certificates.json"
# How often, at most, a daemon looks at the list for a change (a stat), when asked.
REVOCATION_LOOK_S = 1.0
# Revocations are never dropped, so the list stays in force for the CA's whole life.
_BACKDATE = dt.timedelta(minutes=5)
# The keys a CA may sign with (`certs init` makes an EC one; a CA of one's own may be another).
_SIGNING_KEYS = (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)


def crl_path(ca_file: Path) -> Path:
    """Where the CRL of the CA in `ca_file` lives: ca.crl in the same directory."""
    return ca_file.parent / CA_CRL


def load_revoked(path: Path, ca: x509.Certificate) -> frozenset[int]:
    """The serial numbers the CRL at `path` revokes (none when there is no file)."""
    return load_list(path, ca)[0]


def load_list(path: Path, ca: x509.Certificate) -> tuple[frozenset[int], int]:
    """The serial numbers the CRL at `path` revokes and its CRL number (none and 0 when there is
    no file). Refuses, naming the file, a CRL that does not parse, that another CA issued, or
    whose signature is not the CA's: a forged list could otherwise un-revoke a certificate by
    leaving it out. (An older list of the same CA is refused by the process that holds a newer
    one: domicile.identity.reloading.)"""
    if not path.exists():
        return frozenset(), 0
    crl = _read(path)
    if crl.issuer != ca.subject:
        raise InvalidArgument(
            f"revocation list {path} is not issued by the cluster CA ({crl.issuer.rfc4514_string()})"
        )
    key = ca.public_key()
    if not isinstance(key, _SIGNING_KEYS) or not crl.is_signature_valid(key):
        raise InvalidArgument(f"revocation list {path} is not signed by the cluster CA")
    return frozenset(entry.serial_number for entry in crl), _number(crl)


def revoke(
    ca_certificate: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    directory: Path,
    serials: Iterable[int],
    now: dt.datetime | None = None,
) -> tuple[list[int], int]:
    """Adds `serials` to the CRL of the CA in `directory` (made when missing), signed with the CA
    key, and writes it there atomically. Returns the serials newly revoked (those listed already
    stay as they were) and how many the list holds."""
    path = directory / CA_CRL
    now = now or dt.datetime.now(dt.UTC)
    listed: list[x509.RevokedCertificate] = []
    number = 0
    if path.exists():
        load_revoked(path, ca_certificate)  # checked before anything is added to it
        crl = _read(path)
        listed = list(crl)
        number = _number(crl)
    known = {entry.serial_number for entry in listed}
    added = [s for s in dict.fromkeys(serials) if s not in known]
    for serial in added:
        listed.append(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - _BACKDATE).build()
        )
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_certificate.subject)
        .last_update(now - _BACKDATE)
        .next_update(max(ca_certificate.not_valid_after_utc, now + dt.timedelta(days=1)))
        .add_extension(x509.CRLNumber(number + 1), critical=False)
    )
    for entry in listed:
        builder = builder.add_revoked_certificate(entry)
    signed = builder.sign(ca_key, hashes.SHA256())
    write_atomically(path, signed.public_bytes(Encoding.PEM), PUBLIC_MODE, overwrite=True)
    return added, len(listed)


def parse_serial(text: str) -> int:
    """A serial number as `certs issue` prints it (hex, with or without 0x or colons)."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise InvalidArgument(
            f"serial {text!r} is not a hexadecimal number (as `domicile certs issue` prints it)"
        ) from None
    if value <= 0:
        raise InvalidArgument(f"serial {text!r} must be positive")
    return value


def serial_text(serial: int) -> str:
    return f"0x{serial:x}"


def _number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _read(path: Path) -> x509.CertificateRevocationList:
    data = read_file(path, "revocation list")
    try:
        return x509.load_pem_x509_crl(data)
    except ValueError:
        raise InvalidArgument(f"revocation list {path} is not a PEM CRL") from None


Fingerprint = tuple[int, int, int] | None


def _fingerprint(path: Path) -> Fingerprint:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Revocations:
    """The serial numbers a daemon refuses: the union of every valid revocation list of its CA
    it has read, kept in `state` (a file in its data directory) when given. Thread-safe."""

    def __init__(self, crl: Path, ca_pem: bytes, state: Path | None = None) -> None:
        """Reads the persisted revocations and the list; raises InvalidArgument (naming the
        file) when either cannot be used, so that a bad setup stops the daemon at start."""
        self.crl = crl
        self.state = state
        self._lock = threading.Lock()
        self._ca_pem = b""
        self._ca_id = ""
        self._ca: x509.Certificate | None = None
        self._serials: frozenset[int] = frozenset()
        self.number = 0
        self._adopt_ca(ca_pem, at_start=True)
        self._seen = _fingerprint(crl)
        serials, number = load_list(crl, self._certificate())
        self._merge(serials, number)
        if self._serials or self.crl.exists():
            log.info(
                "revocation list %s: %d revoked certificates in force (CRL number %d)",
                crl,
                len(self._serials),
                self.number,
            )

    @property
    def serials(self) -> frozenset[int]:
        return self._serials

    def refresh(self, ca_pem: bytes) -> None:
        """Reads the list again when it changed (a stat otherwise), for the CA in force now. A
        list that cannot be used changes nothing (logged at ERROR)."""
        with self._lock:
            if ca_pem != self._ca_pem:
                self._adopt_ca(ca_pem, at_start=False)
                self._seen = None
            seen = _fingerprint(self.crl)
            if seen == self._seen:
                return
            self._seen = seen
            try:
                serials, number = load_list(self.crl, self._certificate())
            except DomicileError as error:
                log.error("revocation list not taken; the revocations in force stay: %s", error.message)
                return
            self._merge(serials, number)

    def _certificate(self) -> x509.Certificate:
        assert self._ca is not None
        return self._ca

    def _adopt_ca(self, ca_pem: bytes, *, at_start: bool) -> None:
        """The CA whose lists count (by its DER: the same certificate written out again is the
        same CA), with what was persisted for it. A state that cannot be read stops the daemon
        at start; met for a CA that replaced another while running, it is logged, and the new
        CA starts from its own list (its state is written anew at the next change), so that its
        revocations are still read."""
        try:
            ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError:
            raise InvalidArgument("the CA certificate in force cannot be read") from None
        ca_id = hashlib.sha256(ca.public_bytes(Encoding.DER)).hexdigest()
        if ca_id != self._ca_id:
            try:
                persisted = self._persisted(ca_id)
            except InvalidArgument as error:
                if at_start:
                    raise
                log.error("%s; the new CA starts from its revocation list alone", error.message)
                persisted = (frozenset(), 0)
            self._serials, self.number = persisted
            self._ca_id = ca_id
        self._ca_pem, self._ca = ca_pem, ca

    def _merge(self, serials: frozenset[int], number: int) -> None:
        missing = self._serials - serials
        if missing or number < self.number:
            log.error(
                "revocation list %s (CRL number %d) lacks %d revocations in force (CRL number %d): "
                "a stale copy, a list made from one, or the file removed. They stay in force; copy "
                "the newest ca.crl there",
                self.crl,
                number,
                len(missing),
                self.number,
            )
        merged = self._serials | serials
        highest = max(self.number, number)
        if merged == self._serials and highest == self.number:
            return
        if merged != self._serials:
            log.info("revocation list %s: %d revoked certificates now in force", self.crl, len(merged))
        self._serials, self.number = merged, highest
        self._persist()

    def _persisted(self, ca_id: str) -> tuple[frozenset[int], int]:
        """What the state holds for the CA `ca_id` (nothing for another CA's state)."""
        if self.state is None or not self.state.exists():
            return frozenset(), 0
        try:
            doc = json.loads(read_file(self.state, "revocation state"))
            if doc.get("ca_sha256") != ca_id:
                return frozenset(), 0  # another CA's (the CA was replaced)
            return frozenset(int(s, 16) for s in doc["revoked"]), int(doc["crl_number"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise InvalidArgument(
                f"{self.state} is not a readable revocation state; it holds the revocations this "
                "daemon has in force. Put back a good copy, or remove it to start from ca.crl alone"
            ) from None

    def _persist(self) -> None:
        if self.state is None:
            return
        doc = {
            "ca_sha256": self._ca_id,
            "crl_number": self.number,
            "revoked": sorted(serial_text(s) for s in self._serials),
        }
        self.state.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.state, json.dumps(doc, indent=1).encode(), PUBLIC_MODE, overwrite=True)
