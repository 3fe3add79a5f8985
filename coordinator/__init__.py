"""The coordinator: the topology control plane (regions, nodes, health, replication links)."""

from __future__ import annotations

from coordinator.config import CoordinatorConfig
from coordinator.daemon import Coordinator

__all__ = ["Coordinator", "CoordinatorConfig"]
