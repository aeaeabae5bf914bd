"""PRG throughput, mask application, fixed-point encode/decode, hashing and VSS costs.

Hashing: SHA-256 (message digests, commitments) and BLAKE3-256 (payload digests).

Run: ``.venv/bin/python -m benchmarks.primitives`` (writes results/primitives.json).
"""

from __future__ import annotations

import os
import time

import numpy as np

from benchmarks.common import best_of, write
from mpc_agg.crypto import payload_digest, sha256
from mpc_agg.fixedpoint import FixedPointCodec
from mpc_agg.prg import MaskTerm, apply_masks
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.vss import recover, share_secret, verify_share


def main() -> None:
    d = 1_000_000
    rows: dict[str, float] = {}
    acc = np.zeros(d, dtype=np.uint64)
    one = [MaskTerm(os.urandom(32), +1)]
    ten = [MaskTerm(os.urandom(32), 1 if i % 2 else -1) for i in range(10)]
    best, _ = best_of(lambda: apply_masks(acc, one), 20)
    rows["prg_one_mask_1e6_ms"] = best * 1e3
    rows["prg_throughput_GBps"] = 8 * d / best / 1e9
    best, _ = best_of(lambda: apply_masks(acc, ten), 10)
    rows["prg_ten_masks_1e6_ms"] = best * 1e3
    rows["prg_ten_masks_GBps"] = 80 * d / best / 1e9

    codec = FixedPointCodec(frac_bits=16, n_peers=10, max_abs_value=1.0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, d)
    encoded = codec.encode(x, rng)
    best, _ = best_of(lambda: codec.encode(x, rng), 10)
    rows["encode_1e6_ms"] = best * 1e3
    best, _ = best_of(lambda: codec.decode(encoded.ring), 10)
    rows["decode_1e6_ms"] = best * 1e3
    best, _ = best_of(lambda: sha256(encoded.ring.view(np.uint8).data), 10)
    rows["sha256_8MB_ms"] = best * 1e3
    best, _ = best_of(lambda: payload_digest(encoded.ring.view(np.uint8).data), 10)
    rows["blake3_payload_digest_8MB_ms"] = best * 1e3

    source = DeterministicRandomSource(1)
    secret = 123456789
    xs = list(range(1, 11))
    shares, commitments = share_secret(secret, 7, xs, source)
    decoded = commitments.decoded()
    best, _ = best_of(lambda: share_secret(secret, 7, xs, source), 20)
    rows["vss_deal_n10_T7_ms"] = best * 1e3
    best, _ = best_of(lambda: verify_share(decoded, 5, shares[5]), 50)
    rows["vss_verify_share_T7_ms"] = best * 1e3
    best, _ = best_of(lambda: recover(shares, commitments), 20)
    rows["vss_recover_fast_T7_ms"] = best * 1e3
    start = time.perf_counter()
    bad = dict(shares)
    bad[3] = (bad[3] + 1) % (1 << 255)
    recover(bad, commitments)
    rows["vss_recover_with_bad_share_T7_ms"] = (time.perf_counter() - start) * 1e3

    path = write("primitives", {"vector_length": d, "results": rows})
    for key, value in rows.items():
        print(f"{key:38s} {value:10.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
