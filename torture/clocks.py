"""Clock skew for a daemon of the torture run, with libfaketime: the daemon is started with the
library preloaded and an offset, so every wall-clock read in it (HLCs, retention, certificate
checks) is off by that much, while its monotonic clock is left alone, as on a host whose NTP
went wrong."""

from __future__ import annotations

import libfaketime


def skewed_env(offset_s: float) -> dict[str, str]:
    """Environment that starts a process with its wall clock `offset_s` seconds off."""
    _, env = libfaketime.get_reload_information()
    # No cache bypass: the offset is fixed for the process's life, so the library need not
    # look for a changed setting on every clock read.
    return {**{k: str(v) for k, v in env.items()}, "FAKETIME_NO_CACHE": "0", "FAKETIME": f"{offset_s:+.3f}"}
