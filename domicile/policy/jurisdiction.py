"""Jurisdiction codes: ISO 3166-1 alpha-2 countries (DE) and ISO 3166-2 subdivisions (US-CA).

A subdivision code names a state or province where a law of its own applies (California's CCPA);
its first two letters are the country, whose law applies where the subdivision has none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from domicile.errors import InvalidArgument
from domicile.policy.iso3166 import COUNTRY_NAMES

# \Z, not $: $ also matches before a final newline ("DE\n" is no code).
CODE_RE = re.compile(r"^([A-Z]{2})(-[A-Z0-9]{1,3})?\Z")

# Codes people reach for that ISO 3166-1 does not assign, with the one it does.
_USUAL_MISTAKES = {"UK": "GB", "EL": "GR", "EU": "a country code such as DE, or a country group"}


@dataclass(frozen=True)
class Jurisdiction:
    code: str
    country: str

    @property
    def subdivision(self) -> str:
        return self.code if self.code != self.country else ""

    @property
    def label(self) -> str:
        name = COUNTRY_NAMES.get(self.country, self.country)
        return f"{self.code} ({name})"


def parse_jurisdiction(code: str, what: str = "subject jurisdiction") -> Jurisdiction:
    """Parses an ISO 3166-1 alpha-2 or ISO 3166-2 code whose country ISO has assigned."""
    match = CODE_RE.match(code)
    if match is None:
        raise InvalidArgument(
            f"invalid {what} {code!r}: use an upper-case ISO 3166-1 alpha-2 code (e.g. DE) or an "
            "ISO 3166-2 subdivision code (e.g. US-CA)"
        )
    country = match.group(1)
    if country not in COUNTRY_NAMES:
        hint = _USUAL_MISTAKES.get(country)
        suffix = f"; use {hint}" if hint else ""
        raise InvalidArgument(f"invalid {what} {code!r}: {country} is not an ISO 3166-1 country code{suffix}")
    return Jurisdiction(code, country)


def country_label(country: str) -> str:
    return f"{country} ({COUNTRY_NAMES.get(country, 'unknown country')})"
