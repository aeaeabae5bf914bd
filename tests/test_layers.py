"""Layers point down (DESIGN §3): peers → protocols → mpc_agg, and no I/O below peers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = {"mpc_agg": 0, "protocols": 1, "peers": 2}
#: Modules that would give a lower layer I/O, a clock, an event loop or ambient randomness.
FORBIDDEN_BELOW_PEERS = {
    "asyncio",
    "aiomqtt",
    "paho",
    "amqtt",
    "socket",
    "ssl",
    "selectors",
    "socketserver",
    "http",
    "urllib",
    "subprocess",
    "threading",
    "time",
    "datetime",
    "random",
}
# The in-process harness schedules network faults with a seeded `random.Random` (no secret).
# mpc_agg.blas counts the decorated calls of every thread under a lock (no I/O, no clock).
ALLOWED = {("protocols/harness.py", "random"), ("mpc_agg/blas.py", "threading")}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _sources() -> list[tuple[str, Path]]:
    return [(layer, p) for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))]


@pytest.mark.parametrize(("layer", "path"), _sources(), ids=str)
def test_layer_imports_point_down(layer: str, path: Path) -> None:
    relative = path.relative_to(ROOT).as_posix()
    for name in _imports(path):
        top = name.split(".")[0]
        if top in LAYERS:
            assert LAYERS[top] <= LAYERS[layer], f"{relative} ({layer}) imports higher layer {name}"
        if layer != "peers":
            assert top not in FORBIDDEN_BELOW_PEERS or (relative, top) in ALLOWED, (
                f"{relative} imports {name}: no I/O, clock or global RNG below peers/"
            )
        if top == "torch":
            assert relative.startswith("mpc_agg/torch"), f"{relative} imports torch"


def test_scanner_sees_every_layer() -> None:
    layers = {layer for layer, _ in _sources()}
    assert layers == set(LAYERS)
