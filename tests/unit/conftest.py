from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def plaintext_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI tests drive plaintext stand-ins of the daemons (tests/unit/test_client_wire.py's
    FakeCluster), so the CLI is told so, explicitly, as a user of an --insecure cluster would."""
    monkeypatch.setenv("DOMICILE_INSECURE", "1")
    for name in (
        "DOMICILE_TLS_DIR",
        "DOMICILE_TLS_CA",
        "DOMICILE_TLS_CERT",
        "DOMICILE_TLS_KEY",
        "DOMICILE_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
