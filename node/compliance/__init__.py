"""Compliance: the one decision function (enforcer), redaction, the tamper-evident audit trail,
the compliance scanner and the export of signed audit heads."""
