"""What crosses the wire in an honest round: no input, share or aggregate in clear.

The broker sees every message. Inputs, every holder's share vectors and the aggregate
must not appear as bytes in any message (private shares and output shares are AEAD
ciphertexts under per-pair / per-round keys); broadcasts carry digests, nonces and
verifier values only. The second test shows why the output is *verified* rather than
merely Reed–Solomon decoded: two colluding holders can make plain error-correcting
decoding return a wrong aggregate at n = 2t + 1.
"""

from __future__ import annotations

import numpy as np

from mpc_agg import field as gf
from protocols.common import Broadcast, Send
from protocols.robust.harness import run_robust_round
from tests.protocol.robust.support import plaintext_sum

N, D = 5, 256


def _wire(outcome: object) -> list[bytes]:
    peers = outcome.peers  # type: ignore[attr-defined]
    return [e.data for o in peers.values() for e in o.effects if isinstance(e, Broadcast | Send)]


def _windows(vector: np.ndarray, width: int = 8) -> list[bytes]:
    """Every aligned 64-byte window of a vector's little-endian bytes (8 coordinates)."""
    raw = np.ascontiguousarray(vector, dtype="<u8").tobytes()
    step = 8 * width
    return [raw[i : i + step] for i in range(0, len(raw) - step + 1, step)]


def test_nothing_secret_appears_in_clear() -> None:
    outcome = run_robust_round(n=N, vector_length=D, seed=51)
    wire = b"".join(_wire(outcome))
    secrets: list[np.ndarray] = []
    for peer, vector in outcome.inputs.items():
        secrets.append(vector)  # the input as two's complement words
        secrets.append(gf.reduce_signed(vector.view(np.int64)))  # and as field elements
        machine = outcome.machines[peer]
        for opened in machine._opened[1].values():
            assert opened.vector is not None
            secrets.append(opened.vector)
    result = next(iter(outcome.results().values()))
    secrets.append(result.total)
    for vector in secrets:
        for window in _windows(vector):
            if any(window):  # skip all-zero windows
                assert window not in wire


def test_plain_reed_solomon_decoding_would_be_fooled_at_n_2t_plus_1() -> None:
    # Honest aggregate shares F(x) at x = 1..5 (t = 2); holders 4 and 5 replace theirs by
    # Q(x) = F(x) + (x − 1)(x − 2) in one coordinate. Q agrees with F at the honest x = 1, 2.
    outcome = run_robust_round(n=N, vector_length=D, seed=52)
    machine = outcome.machines[0]
    shares = {h + 1: v[:D].copy() for h, v in machine._output_shares.items()}
    for x in (4, 5):
        shares[x][0] = (int(shares[x][0]) + (x - 1) * (x - 2)) % gf.P
    decoded, wrong = gf.rs_decode(shares, 2, machine._rng)
    assert wrong == {3}  # an honest holder is "corrected" ...
    truth = plaintext_sum(outcome, tuple(range(N)))
    assert gf.to_signed(decoded).tolist() != truth  # ... and the decoded sum is wrong
