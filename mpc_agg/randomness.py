"""Randomness sources, passed in explicitly (STYLE habit 2).

Production code uses :class:`SystemRandomSource` (``os.urandom``). Tests and the
in-process harness use :class:`DeterministicRandomSource`, an AES-256-CTR keystream
keyed from a seed: cryptographically strong when the seed is secret, reproducible when
it is not. numpy's RNG is never used for anything secret.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class RandomSource(Protocol):
    """Anything that returns uniformly random bytes."""

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` uniformly random bytes."""
        ...


class SystemRandomSource:
    """The operating system's CSPRNG."""

    def random_bytes(self, n: int) -> bytes:
        """Return ``n`` bytes from ``os.urandom``."""
        return os.urandom(n)

    def __repr__(self) -> str:
        return "SystemRandomSource()"


class DeterministicRandomSource:
    """AES-256-CTR keystream from a seed (for tests, the harness and test vectors)."""

    __slots__ = ("_encryptor",)

    def __init__(self, seed: bytes | int | str) -> None:
        if isinstance(seed, int):
            seed = seed.to_bytes(16, "big", signed=True)
        elif isinstance(seed, str):
            seed = seed.encode()
        key = hashlib.sha256(b"mpc-agg/deterministic-random/v1\x00" + seed).digest()
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    def random_bytes(self, n: int) -> bytes:
        """Return the next ``n`` keystream bytes."""
        return self._encryptor.update(bytes(n))

    def fork(self, label: str) -> DeterministicRandomSource:
        """Derive an independent source (e.g. one per simulated peer)."""
        return DeterministicRandomSource(self.random_bytes(32) + label.encode())

    def __repr__(self) -> str:  # never print key material
        return "DeterministicRandomSource(<seeded>)"


def random_below(source: RandomSource, bound: int) -> int:
    """Uniform integer in ``[0, bound)`` by rejection sampling (no modulo bias)."""
    if bound <= 0:
        raise ValueError("bound must be positive")
    nbytes = (bound.bit_length() + 7) // 8 + 8  # 64 spare bits: rejection is rare
    limit = (1 << (8 * nbytes)) - ((1 << (8 * nbytes)) % bound)
    while True:
        value = int.from_bytes(source.random_bytes(nbytes), "big")
        if value < limit:
            return value % bound
