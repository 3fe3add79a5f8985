"""A certificate is checked against its validity period at every call and before every message of
a stream, not only in the handshake: a connection outlives the certificate it was opened with
(regression: an expired client certificate kept working on its open connection)."""

from __future__ import annotations

import pytest

from domicile.authz.gate import Validity, check_validity
from domicile.errors import Unauthenticated

VALID = Validity(1_000.0, 2_000.0)


def test_a_certificate_is_accepted_within_its_period() -> None:
    check_validity("spiffe://domicile/client/a", VALID, now_s=1_500.0)
    check_validity("spiffe://domicile/client/a", VALID, now_s=2_000.0)


def test_an_expired_certificate_is_refused_naming_when_it_expired() -> None:
    with pytest.raises(Unauthenticated, match="expired at 1970-01-01 00:33:20 UTC"):
        check_validity("spiffe://domicile/client/a", VALID, now_s=2_000.5)


def test_a_certificate_not_yet_valid_is_refused() -> None:
    with pytest.raises(Unauthenticated, match="not valid yet"):
        check_validity("spiffe://domicile/client/a", VALID, now_s=999.0)
