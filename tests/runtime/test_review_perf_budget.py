"""Review: the per-site byte budget of a Z_2^32 round (peers/node.py ``_byte_budget``).

The budget was "two masked inputs and 1 MiB"; halving the masked input (4 bytes an entry)
halved the budget too, but the other messages of a round do not shrink: an Unmask carries
≈ 35·n² bytes (n − 1 ciphertexts of n revealed shares). With n = 200 and d = 80,000 an
honest site's own messages overflow the Z_2^32 budget (its Unmask is then dropped as
``over limit`` at every receiver), while the same round fitted the Z_2^64 budget.

Fixed: the budget adds 48·n² for the Unmask (``_byte_budget(d, b, n)``); a regression.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from mpc_agg.crypto import AEAD_TAG_SIZE, P256_POINT_SIZE
from mpc_agg.envelope import BROADCAST, EnvelopeContext, seal_envelope
from mpc_agg.vss import SCALAR_SIZE
from peers.node import _byte_budget
from protocols.harness import make_roster
from protocols.secagg.machine import default_threshold, protocol_id
from protocols.secagg.messages import (
    SHARE_CIPHERTEXT_SIZE,
    AdvertiseKeys,
    ConsistencyCheck,
    MaskedInput,
    MessageKind,
    ResultDigest,
    ShareKeys,
    Unmask,
)


def _round_bytes(n: int, d: int, ring_bits: int) -> int:
    """Bytes of the six envelopes an honest site sends in a round where nobody drops."""
    roster, keys = make_roster(n)
    context = EnvelopeContext(
        protocol=protocol_id(ring_bits, d),
        federation="fed",
        roster_digest=roster.digest,
        round_id=1,
    )
    t = default_threshold(n)
    point = b"\x04" + bytes(P256_POINT_SIZE - 1)
    others = tuple(range(1, n))
    digest = bytes(32)
    plaintext = 4 + n * (3 + SCALAR_SIZE)  # encode_revealed: n owners (I ∪ D)
    masked: NDArray[np.uint32] | NDArray[np.uint64] = (
        np.zeros(d, np.uint32) if ring_bits == 32 else np.zeros(d, np.uint64)
    )
    payloads = {
        MessageKind.ADVERTISE_KEYS: AdvertiseKeys(
            encryption_key=point, mask_key=b"\x04" + bytes(63) + b"\x01"
        ).encode(),
        MessageKind.SHARE_KEYS: ShareKeys(
            mask_key_commitments=(point,) * t,
            self_mask_commitments=(point,) * t,
            ciphertexts=tuple((p, bytes(SHARE_CIPHERTEXT_SIZE)) for p in others),
        ).encode(),
        MessageKind.MASKED_INPUT: MaskedInput(
            mask_set=others, complaints=(), masked=masked, ring_bits=ring_bits
        ).encode(),
        MessageKind.CONSISTENCY_CHECK: ConsistencyCheck(
            advertised=tuple((p, digest) for p in range(n)),
            dealers=tuple((p, digest) for p in range(n)),
            inputs=tuple((p, digest) for p in range(n)),
        ).encode(),
        MessageKind.UNMASK: Unmask(
            ciphertexts=tuple((p, bytes(plaintext + AEAD_TAG_SIZE)) for p in others)
        ).encode(),
        MessageKind.RESULT_DIGEST: ResultDigest(digest=digest).encode(),
    }
    return sum(
        len(
            seal_envelope(
                context,
                phase=kind.phase,
                kind=kind,
                sender=0,
                recipient=BROADCAST,
                payload=payload,
                signing_key=keys[0],
            )
        )
        for kind, payload in payloads.items()
    )


def test_review_perf_an_honest_sites_round_fits_the_z_2_32_byte_budget() -> None:
    n, d = 200, 80_000
    wide = _round_bytes(n, d, 64)
    assert wide <= _byte_budget(d, 64, n), "fits Z_2^64 (the budget before the change)"
    narrow = _round_bytes(n, d, 32)
    assert narrow <= _byte_budget(d, 32, n), (
        f"n={n}, d={d}: an honest site sends {narrow} bytes in a Z_2^32 round, its "
        f"receivers accept {_byte_budget(d, 32, n)} from it (Z_2^64: {wide} of "
        f"{_byte_budget(d, 64, n)}): its Unmask is dropped as over the limit"
    )
