"""The cryptographic floor of one broadcast ``secagg`` peer: the primitives alone, timed.

What a peer of a broadcast round (b = 32, no dropouts) cannot avoid under our security
model (secagg SPEC §3, §6), with no parsing, no message objects and no protocol logic:

* masking: n keystreams of L words (self-mask + n − 1 pairwise, SPEC §6.3) added in;
* sum and unmask: the n masked inputs summed and the n self-masks subtracted, in one
  chunked pass (SPEC §6.5, :func:`mpc_agg.prg.apply_masks` with ``sources``);
* payload digests: BLAKE3 over the n masked vectors (its own when sending, n − 1
  received, SPEC §4.3);
* signatures: one Ed25519 signature per phase (6) and 6·(n − 1) verifications;
* key agreement: 2·(n − 1) P-256 exchanges (pairwise mask keys and share channels);
* Feldman VSS: dealing 2 sharings, verifying 2·(n − 1) received shares, recovering n
  self-mask seeds (SPEC §6.1, §6.2, §6.5).

Each part is the best of ``repeat`` (thread CPU). Their sum, times n, is a lower bound
on what all our peers spend in a round on this machine; Flower's CPU divided by it is the
largest Flower / ours ratio our design could show here (``benchmarks.flower_compare``
reports it beside the measured ratio). Run::

    .venv/bin/python -m benchmarks.floor [--n 10] [--d 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks.common import write
from mpc_agg.crypto import AgreementKey, SigningKey, VerifyKey, payload_digest
from mpc_agg.prg import MaskTerm, apply_masks
from mpc_agg.randomness import SystemRandomSource
from mpc_agg.vss import recover, share_secret, verify_share
from protocols.secagg.machine import default_threshold

#: Signed messages a peer sends in a broadcast round (SPEC §4.1): AdvertiseKeys, ShareKeys,
#: MaskedInput, ConsistencyCheck, Unmask, ResultDigest.
SIGNED_PHASES = 6


def _cpu(fn: Callable[[], object], repeat: int) -> float:
    """Best thread-CPU seconds of ``fn`` over ``repeat`` runs, after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        best = min(best, time.thread_time() - start)
    return best


def secagg_floor(n: int, d: int, repeat: int = 5) -> dict[str, Any]:
    """Per-peer CPU of each irreducible part of a broadcast round, and their sum."""
    source = SystemRandomSource()
    terms = [MaskTerm(os.urandom(32), 1 if i % 2 else -1) for i in range(n)]
    received = [os.urandom(4 * d) for _ in range(n)]  # the masked inputs, as bytes arrive
    vectors = [np.frombuffer(data, dtype=np.uint32) for data in received]
    words = np.frombuffer(os.urandom(4 * d), dtype=np.uint32).copy()
    total = np.empty(d, dtype=np.uint32)
    signing = SigningKey.generate(source)
    verify = VerifyKey(signing.public_bytes())
    message = os.urandom(200)
    signature = signing.sign(message)
    mine = AgreementKey.generate(source)
    theirs = AgreementKey.generate(source).public
    threshold = default_threshold(n)
    xs = list(range(1, n + 1))
    shares, commitments = share_secret(1 + 12345, threshold, xs, source)

    def deal() -> None:
        for _ in range(2):
            share_secret(1 + 12345, threshold, xs, source)

    def verify_received() -> None:
        for _ in range(2 * (n - 1)):
            verify_share(commitments.decoded(), 2, shares[2])

    def signatures() -> None:
        for _ in range(SIGNED_PHASES):
            signing.sign(message)
        for _ in range(SIGNED_PHASES * (n - 1)):
            verify.verify(signature, message)

    parts = {
        "mask_s": _cpu(lambda: apply_masks(words, terms), repeat),
        "sum_and_unmask_s": _cpu(lambda: apply_masks(total, terms, sources=vectors), repeat),
        "payload_digests_s": _cpu(lambda: [payload_digest(data) for data in received], repeat),
        "signatures_s": _cpu(signatures, repeat),
        "key_agreement_s": _cpu(
            lambda: [mine.exchange(theirs) for _ in range(2 * (n - 1))], repeat
        ),
        "vss_s": _cpu(deal, repeat)
        + _cpu(verify_received, repeat)
        + _cpu(lambda: [recover(shares, commitments) for _ in range(n)], repeat),
    }
    per_peer = sum(parts.values())
    return {
        "n": n,
        "d": d,
        "threshold": threshold,
        "per_peer": parts,
        "cpu_per_peer_s": per_peer,
        "cpu_all_peers_s": n * per_peer,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--d", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    floor = secagg_floor(args.n, args.d, args.repeat)
    path = write("floor", floor)
    print(f"n={args.n} d={args.d:,}: floor {floor['cpu_per_peer_s'] * 1e3:.1f} ms per peer")
    for name, seconds in floor["per_peer"].items():
        print(f"    {name:20s} {seconds * 1e3:7.2f} ms")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
