"""Round parameters of ``robust/3`` (SPEC §2) and the norm bound on the fixed-point grid."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mpc_agg.normproof import NormProofShape, check_norm_bound
from protocols.common import Roster, check_context

PROTOCOL = "robust/3"


def default_threshold(n: int) -> int:
    """SPEC §2.2 — the default t = ⌊(n − 1)/2⌋: the largest t with 2t + 1 ≤ n."""
    return max(1, (n - 1) // 2)


#: Relative slack on ``max_norm`` for float rounding: a vector scaled to norm exactly C
#: may compute as C·(1 + 2^-52); it must still pass (SPEC §2.3).
NORM_TOLERANCE = 2.0**-30


def grid_norm_bound(max_norm: float, frac_bits: int, vector_length: int) -> int:
    """SPEC §2.3 — B on the integer grid for a float L2 bound ``max_norm``.

    ``⌈C·(1 + 2^-30)·2^f⌉ + ⌈√d⌉``: a float vector with L2 norm ≤ C·(1 + 2^-30) stays
    within B after stochastic rounding (each coordinate moves by less than 1, so the norm
    by less than √d), so an honest update that respects ``max_norm`` is never rejected.
    """
    if not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}")
    scaled = max_norm * (1.0 + NORM_TOLERANCE) * 2.0**frac_bits
    return math.ceil(scaled) + math.isqrt(vector_length - 1) + 1


@dataclass(frozen=True, slots=True, kw_only=True)
class RobustParams:
    """SPEC §2.1 — parameters every peer of a round must agree on.

    ``threshold`` is t: privacy holds against t colluding peers, 2t + 1 live peers are
    needed. ``norm_bound`` is B: an input is accepted iff its L2 norm on the integer grid
    is at most B.
    """

    federation: str
    round_id: int
    roster: Roster
    threshold: int
    vector_length: int
    norm_bound: int
    context: str = ""
    """SPEC §2.1 — ``""`` or ``"x"`` and 16 hex digits, appended to the protocol string:
    the runtime's digest of what else the sites must agree on (the caller's layout)."""

    def __post_init__(self) -> None:
        check_context(self.context)
        n = len(self.roster)
        if self.threshold < 1 or 2 * self.threshold + 1 > n:
            raise ValueError(f"threshold t={self.threshold} needs 1 ≤ t and 2t + 1 ≤ n={n}")
        if not 1 <= self.vector_length <= 1 << 31:
            raise ValueError(f"vector_length must be in [1, 2^31], got {self.vector_length}")
        if not 0 <= self.round_id < 1 << 64:
            raise ValueError("round_id must fit in 64 bits")
        check_norm_bound(self.norm_bound, self.vector_length)

    @property
    def n(self) -> int:
        """Roster size."""
        return len(self.roster)

    @property
    def protocol_id(self) -> str:
        """SPEC §2.1 — the protocol string of every envelope and key derivation."""
        return PROTOCOL + (f" {self.context}" if self.context else "")

    @property
    def shape(self) -> NormProofShape:
        """The validity proof's layout for this round (SPEC §6.3)."""
        return NormProofShape.for_round(
            vector_length=self.vector_length,
            norm_bound=self.norm_bound,
            threshold=self.threshold,
            peers=self.n,
        )

    @property
    def max_bytes_per_sender(self) -> int:
        """Bytes one peer may legitimately send to one other peer in a round (runtime budget).

        A share vector, an encrypted output share, and public reveals of up to n share
        vectors in the two dispute phases, plus 1 MiB of smaller messages.
        """
        return (2 * self.n + 4) * 8 * (self.vector_length + 2) + (1 << 20)
