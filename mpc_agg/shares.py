"""Shamir sharing of field vectors with seed-compressed shares (robust SPEC §6.1).

A degree-t sharing of a vector s is fixed by f(0) = s and the values at t holders' points.
Those t values are taken pseudo-random — PRG(seed_j) for a fresh 32-byte seed per holder —
so those holders receive a seed instead of a vector; every other holder's share is the
Lagrange combination of s and the t expanded vectors. For a uniformly random seed this is
exactly a uniformly random degree-t polynomial with f(0) = s, and it cuts a dealer's upload
from (n − 1)·d to (n − 1 − t)·d field elements plus t seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mpc_agg import field as gf
from mpc_agg.crypto import derive_key
from mpc_agg.randomness import RandomSource

FieldVector = NDArray[np.uint64]
SEED_SIZE = 32


def expand_seed(seed: bytes, info: bytes, length: int) -> FieldVector:
    """The share vector a seed stands for: ``length`` field elements from KDF(seed, info)."""
    return gf.expand(derive_key(seed, info=b"mpc-agg/share-seed/v1\x00" + info), length)


@dataclass(slots=True)
class DealtShares:
    """A dealer's sharing: seeds for the seeded holders, vectors for the rest (by x)."""

    seeds: dict[int, bytes] = field(repr=False)
    vectors: dict[int, FieldVector] = field(repr=False)

    def vector(self, x: int, info: bytes, length: int) -> FieldVector:
        """Holder x's share as a vector (expanding its seed if it has one)."""
        if x in self.vectors:
            return self.vectors[x]
        return expand_seed(self.seeds[x], info, length)


def deal(
    secret: FieldVector,
    *,
    points: Sequence[int],
    seeded: Sequence[int],
    degree: int,
    randomness: RandomSource,
    info: Mapping[int, bytes],
) -> DealtShares:
    """Share ``secret`` at ``points`` (x ≠ 0) with degree ``degree``; ``seeded`` ⊆ points.

    ``len(seeded)`` must equal ``degree``; ``info[x]`` binds holder x's seed expansion.
    """
    if len(seeded) != degree or not set(seeded) <= set(points):
        raise ValueError("exactly `degree` of the points must be seeded")
    if 0 in points or len(set(points)) != len(points):
        raise ValueError("share points must be distinct and non-zero")
    length = secret.shape[0]
    seeds = {x: randomness.random_bytes(SEED_SIZE) for x in seeded}
    nodes = [0, *seeded]
    stacked = [secret, *(expand_seed(seeds[x], info[x], length) for x in seeded)]
    others = [x for x in points if x not in seeds]
    coefficients = np.array([gf.lagrange_at(nodes, x) for x in others], dtype=np.uint64)
    rows = gf.lincomb(coefficients.reshape(len(others), len(nodes)), stacked)
    return DealtShares(seeds=seeds, vectors={x: rows[k] for k, x in enumerate(others)})


def evaluation_matrix(points: Sequence[int], targets: Sequence[int]) -> NDArray[np.uint64]:
    """Lagrange rows: f(targets[i]) = Σ_k M[i, k]·f(points[k]) whenever deg f < |points|."""
    return np.array([gf.lagrange_at(points, x) for x in targets], dtype=np.uint64).reshape(
        len(targets), len(points)
    )
