"""Shared helpers of the DP tests: settings with defaults, memory transports."""

from __future__ import annotations

from collections.abc import Callable

from mpc_agg import dp
from peers.memory import MemoryBroker, MemoryTransport
from peers.transport import Transport

DELTA = 1e-5


def dp_settings(**overrides: object) -> dp.DpSettings:
    """``DpSettings`` with z = 1, clip 1, δ = 1e-5 unless overridden."""
    values: dict[str, object] = {"noise_multiplier": 1.0, "clip_norm": 1.0, "delta": DELTA}
    values.update(overrides)
    return dp.DpSettings(**values)  # type: ignore[arg-type]


def memory(broker: MemoryBroker) -> Callable[[int], Transport]:
    """Transports of site-0 … over one in-memory broker."""
    return lambda i: MemoryTransport(broker, name=f"site-{i}")
