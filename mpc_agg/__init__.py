"""mpc_agg — primitives for privacy-preserving gradient aggregation.

This is the bottom layer (``peers`` → ``protocols`` → ``mpc_agg``). Nothing in this
package performs I/O, reads a clock or uses ambient randomness: every random choice
comes from a :class:`mpc_agg.randomness.RandomSource` passed in by the caller.
"""

from mpc_agg.errors import (
    DecodeError,
    EncodingError,
    HeadroomError,
    MpcAggError,
    ProtocolMisuseError,
    SignatureError,
    VerificationError,
)

__all__ = [
    "DecodeError",
    "EncodingError",
    "HeadroomError",
    "MpcAggError",
    "ProtocolMisuseError",
    "SignatureError",
    "VerificationError",
]

__version__ = "0.1.0"
