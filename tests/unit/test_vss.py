"""Feldman VSS over P-256, Lagrange interpolation, point/scalar codecs, DLEQ proofs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc_agg.crypto import AgreementKey, scalar_base_point
from mpc_agg.errors import DecodeError, VerificationError
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.vss import (
    PROOF_SIZE,
    Commitments,
    Q,
    Recovery,
    decode_point,
    decode_scalar,
    encode_point,
    encode_scalar,
    evaluate,
    interpolate,
    lagrange_at_zero,
    prove_dleq,
    recover,
    share_secret,
    shared_point,
    verify_dleq,
    verify_share,
)
from tests.unit.p256 import G_X, G_Y, NON_CANONICAL_POINT, SMALL_X, SMALL_Y, sec1

EC_SETTINGS = settings(max_examples=25, deadline=None)
SECRETS = st.integers(1, Q - 1)


def _deal(
    secret: int, threshold: int, n: int, seed: int | str = 0
) -> tuple[dict[int, int], Commitments]:
    return share_secret(secret, threshold, list(range(1, n + 1)), DeterministicRandomSource(seed))


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


# --------------------------------------------------------------------------- sharing


@EC_SETTINGS
@given(secret=SECRETS, n=st.integers(1, 6), data=st.data())
def test_share_and_recover_round_trip(secret: int, n: int, data: st.DataObject) -> None:
    threshold = data.draw(st.integers(1, n), label="threshold")
    shares, commitments = _deal(secret, threshold, n, seed=secret % 1000)
    assert sorted(shares) == list(range(1, n + 1))
    assert commitments.threshold == threshold
    assert commitments.secret_commitment == scalar_base_point(secret)
    decoded = commitments.decoded()
    for x, y in shares.items():
        assert 0 <= y < Q
        assert verify_share(decoded, x, y)
        assert not verify_share(decoded, x, (y + 1) % Q)
    recovery = recover(shares, commitments)
    assert recovery.secret == secret
    assert recovery.invalid_xs == ()


@pytest.mark.parametrize(("threshold", "n"), [(1, 1), (1, 4), (2, 2), (3, 5), (5, 5), (4, 7)])
def test_recover_with_exactly_threshold_shares(threshold: int, n: int) -> None:
    secret = 0xC0FFEE + n
    shares, commitments = _deal(secret, threshold, n)
    for start in range(n - threshold + 1):
        subset = {x: shares[x] for x in list(shares)[start : start + threshold]}
        recovery = recover(subset, commitments)
        assert recovery.secret == secret
        assert recovery.invalid_xs == ()


def test_threshold_one_gives_every_party_the_secret() -> None:
    shares, commitments = _deal(99, 1, 4)
    assert set(shares.values()) == {99}
    assert commitments.points == (scalar_base_point(99),)


def test_commitments_commit_to_the_polynomial_coefficients() -> None:
    shares, commitments = _deal(1234, 4, 6)
    coefficients = interpolate({x: shares[x] for x in (2, 3, 5, 6)})
    assert coefficients[0] == 1234
    assert all(a != 0 for a in coefficients)
    assert commitments.points == tuple(scalar_base_point(a) for a in coefficients)
    assert all(evaluate(coefficients, x) == y for x, y in shares.items())


def test_share_secret_is_reproducible_and_random() -> None:
    assert _deal(5, 3, 4, seed="s") == _deal(5, 3, 4, seed="s")
    assert _deal(5, 3, 4, seed="s")[0] != _deal(5, 3, 4, seed="t")[0]


@pytest.mark.parametrize(
    ("secret", "threshold", "xs"),
    [
        (0, 1, [1]),
        (Q, 1, [1]),
        (-1, 1, [1]),
        (5, 0, [1, 2]),
        (5, 3, [1, 2]),
        (5, 1, [1, 1]),
        (5, 1, [0, 1]),
        (5, 1, [Q]),
        (5, 1, [-2]),
        (5, 1, []),
    ],
)
def test_share_secret_rejects_bad_arguments(secret: int, threshold: int, xs: list[int]) -> None:
    with pytest.raises(ValueError):
        share_secret(secret, threshold, xs, DeterministicRandomSource(0))


def test_verify_share_rejects_wrong_x() -> None:
    shares, commitments = _deal(777, 3, 5)
    decoded = commitments.decoded()
    for x, y in shares.items():
        for other in shares:
            if other != x:
                assert not verify_share(decoded, other, y)
        assert not verify_share(decoded, x + 10, y)


@pytest.mark.parametrize("offset", [Q, -Q, 2 * Q])
def test_verify_share_rejects_out_of_range_shares(offset: int) -> None:
    shares, commitments = _deal(777, 2, 3)
    decoded = commitments.decoded()
    assert not verify_share(decoded, 1, shares[1] + offset)
    assert not verify_share(decoded, 1, -1)
    assert not verify_share(decoded, 1, Q)


@pytest.mark.parametrize("threshold", [1, 2, 3])
def test_verify_share_rejects_evaluation_points_outside_the_domain(threshold: int) -> None:
    # x = 0 is the secret's own point and never a share; x ≤ 0 or x ≥ q must not verify
    # against anything (in particular not against f(1), which a double-and-add that
    # treats x = 0 like x = 1 would accept).
    secret = 4242
    shares, commitments = _deal(secret, threshold, 3)
    decoded = commitments.decoded()
    for x in (0, -1, -2, Q, Q + 1):
        for y in (secret, shares[1], shares[2], 0):
            assert not verify_share(decoded, x, y)


def test_recover_identifies_a_share_at_x_zero() -> None:
    secret = 31337
    shares, commitments = _deal(secret, 2, 3)
    recovery = recover({0: shares[1], 1: shares[1], 2: shares[2]}, commitments)
    assert recovery.secret == secret
    assert recovery.invalid_xs == (0,)


@pytest.mark.parametrize(
    "tampered",
    [(1,), (2,), (5,), (1, 2), (4, 5), (1, 5), (3,)],
    ids=lambda xs: "tampered=" + ",".join(map(str, xs)),
)
def test_recover_returns_secret_and_exactly_the_invalid_shares(tampered: tuple[int, ...]) -> None:
    secret = 0xDEADBEEF
    shares, commitments = _deal(secret, 3, 5)
    bad = {x: (y + 1) % Q if x in tampered else y for x, y in shares.items()}
    recovery = recover(bad, commitments)
    assert recovery.secret == secret
    assert recovery.invalid_xs == tuple(sorted(tampered))


@pytest.mark.parametrize("x", [1, 4])
def test_recover_flags_a_non_reduced_share(x: int) -> None:
    # y + q is the same residue but not a valid share encoding; recover must agree with
    # verify_share whether the share falls among the first T (interpolated) or later.
    secret = 0xBADC0DE
    shares, commitments = _deal(secret, 2, 4)
    bad = dict(shares)
    bad[x] += Q
    assert not verify_share(commitments.decoded(), x, bad[x])
    recovery = recover(bad, commitments)
    assert recovery.secret == secret
    assert recovery.invalid_xs == (x,)


@EC_SETTINGS
@given(secret=SECRETS, data=st.data())
def test_recover_with_random_tampering(secret: int, data: st.DataObject) -> None:
    n = data.draw(st.integers(2, 6), label="n")
    threshold = data.draw(st.integers(1, n - 1), label="threshold")
    shares, commitments = _deal(secret, threshold, n, seed=secret % 997)
    tampered = data.draw(
        st.sets(st.sampled_from(sorted(shares)), min_size=1, max_size=n - threshold),
        label="tampered",
    )
    deltas = data.draw(st.lists(st.integers(1, Q - 1), min_size=n, max_size=n), label="deltas")
    bad = {x: (y + deltas[x - 1]) % Q if x in tampered else y for x, y in shares.items()}
    recovery = recover(bad, commitments)
    assert recovery.secret == secret
    assert recovery.invalid_xs == tuple(sorted(tampered))


def test_recover_raises_with_fewer_than_threshold_valid_shares() -> None:
    shares, commitments = _deal(1111, 3, 5)
    bad = {x: (y + 1) % Q if x in (1, 2, 3) else y for x, y in shares.items()}
    with pytest.raises(VerificationError, match="only 2 valid shares of 5"):
        recover(bad, commitments)


def test_recover_raises_with_fewer_than_threshold_shares() -> None:
    shares, commitments = _deal(1111, 3, 5)
    with pytest.raises(VerificationError, match="3 needed"):
        recover({1: shares[1], 4: shares[4]}, commitments)
    with pytest.raises(VerificationError):
        recover({}, commitments)


def test_recover_rejects_shares_for_other_commitments() -> None:
    shares, _ = _deal(1111, 2, 3, seed="a")
    _, other = _deal(2222, 2, 3, seed="b")
    with pytest.raises(VerificationError):
        recover(shares, other)


def test_commitments_require_at_least_one_point() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Commitments(())


def test_commitments_decoded_rejects_malformed_points() -> None:
    with pytest.raises(DecodeError):
        Commitments((scalar_base_point(3), sec1(G_X, G_Y + 1))).decoded()


def test_recovery_repr_hides_the_secret() -> None:
    secret = 0x5EC12E7_5EC12E7_5EC12E7
    text = repr(Recovery(secret, (2, 3)))
    assert str(secret) not in text
    assert f"{secret:x}" not in text.lower()
    assert "(2, 3)" in text


# --------------------------------------------------------------------------- interpolation


@settings(max_examples=40, deadline=None)
@given(
    coefficients=st.lists(st.integers(0, Q - 1), min_size=1, max_size=8),
    extra=st.integers(0, 3),
    data=st.data(),
)
def test_interpolate_recovers_coefficients(
    coefficients: list[int], extra: int, data: st.DataObject
) -> None:
    count = len(coefficients) + extra
    xs = data.draw(
        st.lists(st.integers(1, Q - 1), min_size=count, max_size=count, unique=True), label="xs"
    )
    points = {x: evaluate(coefficients, x) for x in xs}
    assert interpolate(points) == coefficients + [0] * extra
    assert lagrange_at_zero(points) == coefficients[0]


def test_evaluate_and_lagrange_small_example() -> None:
    # f(X) = 3 + 2X + X^2
    assert [evaluate([3, 2, 1], x) for x in (1, 2, 3)] == [6, 11, 18]
    assert lagrange_at_zero({1: 6, 2: 11, 3: 18}) == 3
    assert interpolate({1: 6, 2: 11, 3: 18}) == [3, 2, 1]
    assert lagrange_at_zero({3: 18, 1: 6, 2: 11}) == 3  # order does not matter
    assert lagrange_at_zero({5: 42}) == 42
    assert evaluate([Q - 1, 1], 1) == 0  # reduced mod q


# --------------------------------------------------------------------------- encodings


@pytest.mark.parametrize("scalar", [1, 2, 3, 0xABCDEF, Q - 1, Q // 2])
def test_point_round_trip(scalar: int) -> None:
    encoded = scalar_base_point(scalar)
    point = decode_point(encoded)
    assert not point.is_point_at_infinity()
    assert encode_point(point) == encoded


def test_encode_point_at_infinity() -> None:
    point = decode_point(scalar_base_point(5))
    assert encode_point(point * Q) == b"\x00"
    assert encode_point(point * 0) == b"\x00"


def test_decode_point_accepts_a_point_with_small_coordinates() -> None:
    assert encode_point(decode_point(sec1(SMALL_X, SMALL_Y))) == sec1(SMALL_X, SMALL_Y)


@pytest.mark.parametrize(
    "encoded",
    [
        b"",
        b"\x00",
        bytes(64),
        b"\x04" + bytes(63),
        scalar_base_point(5) + b"\x00",
        b"\x02" + scalar_base_point(5)[1:],
        b"\x03" + scalar_base_point(5)[1:],
        b"\x05" + scalar_base_point(5)[1:],
        sec1(G_X, G_Y + 1),
        sec1(G_X + 1, G_Y),
        sec1(0, 0),
        NON_CANONICAL_POINT,
        sec1(SMALL_X, SMALL_Y + (2**256 - 1 - SMALL_Y) // 2),
    ],
    ids=[
        "empty",
        "infinity-byte",
        "64-bytes",
        "short",
        "long",
        "prefix-02",
        "prefix-03",
        "prefix-05",
        "off-curve-y",
        "off-curve-x",
        "zero-coordinates",
        "x-plus-p",
        "y-garbage",
    ],
)
def test_decode_point_rejects_malformed_encodings(encoded: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_point(encoded)


@pytest.mark.parametrize("value", [0, 1, 2**255, Q - 1])
def test_scalar_round_trip(value: int) -> None:
    encoded = encode_scalar(value)
    assert len(encoded) == 32
    assert decode_scalar(encoded) == value


@pytest.mark.parametrize("value", [-1, Q, 2**256])
def test_encode_scalar_rejects_out_of_range(value: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        encode_scalar(value)


@pytest.mark.parametrize("value", [Q, Q + 1, 2**256 - 1])
def test_decode_scalar_rejects_non_reduced(value: int) -> None:
    with pytest.raises(DecodeError, match="not reduced"):
        decode_scalar(value.to_bytes(32, "big"))


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_decode_scalar_rejects_wrong_length(length: int) -> None:
    with pytest.raises(DecodeError, match="32 bytes"):
        decode_scalar(bytes(length))


# --------------------------------------------------------------------------- DLEQ

CONTEXT = b"secagg/1|fed|round 4|complaint 2->5"


@pytest.fixture(scope="module")
def dleq_case() -> tuple[bytes, bytes, bytes, bytes]:
    """(public, other, shared, proof) for a valid Chaum–Pedersen proof."""
    complainant, dealer = AgreementKey(0x1111_2222_3333), AgreementKey(0x4444_5555_6666)
    shared = shared_point(complainant.scalar, dealer.public)
    proof = prove_dleq(
        complainant.scalar, dealer.public, shared, CONTEXT, DeterministicRandomSource("nonce")
    )
    return complainant.public, dealer.public, shared, proof


def test_shared_point_matches_ecdh() -> None:
    a, b = AgreementKey(12345), AgreementKey(67890)
    shared = shared_point(a.scalar, b.public)
    assert shared == shared_point(b.scalar, a.public)
    assert shared[1:33] == a.exchange(b.public)
    assert shared == scalar_base_point(a.scalar * b.scalar)


def test_dleq_proof_verifies(dleq_case: tuple[bytes, bytes, bytes, bytes]) -> None:
    public, other, shared, proof = dleq_case
    assert len(proof) == PROOF_SIZE
    assert verify_dleq(public, other, shared, proof, CONTEXT) is True


@EC_SETTINGS
@given(scalar=SECRETS, other_scalar=SECRETS)
def test_dleq_proof_verifies_for_random_scalars(scalar: int, other_scalar: int) -> None:
    other = scalar_base_point(other_scalar)
    shared = shared_point(scalar, other)
    proof = prove_dleq(scalar, other, shared, b"ctx", DeterministicRandomSource(scalar % 1000))
    assert verify_dleq(scalar_base_point(scalar), other, shared, proof, b"ctx") is True
    assert verify_dleq(scalar_base_point(scalar), other, shared, proof, b"ctx2") is False


def test_dleq_fails_for_wrong_context(dleq_case: tuple[bytes, bytes, bytes, bytes]) -> None:
    public, other, shared, proof = dleq_case
    assert verify_dleq(public, other, shared, proof, CONTEXT + b"x") is False
    assert verify_dleq(public, other, shared, proof, b"") is False


def test_dleq_fails_for_wrong_points(dleq_case: tuple[bytes, bytes, bytes, bytes]) -> None:
    public, other, shared, proof = dleq_case
    wrong_shared = shared_point(0x1111_2222_3334, other)
    assert verify_dleq(public, other, wrong_shared, proof, CONTEXT) is False
    assert verify_dleq(scalar_base_point(7), other, shared, proof, CONTEXT) is False
    assert verify_dleq(public, scalar_base_point(7), shared, proof, CONTEXT) is False
    assert verify_dleq(other, public, shared, proof, CONTEXT) is False


def test_dleq_prover_cannot_prove_a_false_statement() -> None:
    other = scalar_base_point(99)
    false_shared = shared_point(6, other)
    proof = prove_dleq(5, other, false_shared, b"ctx", DeterministicRandomSource(0))
    assert verify_dleq(scalar_base_point(5), other, false_shared, proof, b"ctx") is False


@pytest.mark.parametrize("index", [0, 1, 15, 31, 32, 33, 48, 63])
def test_dleq_fails_for_tampered_proof_bytes(
    dleq_case: tuple[bytes, bytes, bytes, bytes], index: int
) -> None:
    public, other, shared, proof = dleq_case
    assert verify_dleq(public, other, shared, _flip(proof, index), CONTEXT) is False
    assert verify_dleq(public, other, shared, _flip(proof, index, 0xFF), CONTEXT) is False


@pytest.mark.parametrize("length", [0, 1, 32, 63, 65, 128])
def test_dleq_fails_for_malformed_proof_lengths(
    dleq_case: tuple[bytes, bytes, bytes, bytes], length: int
) -> None:
    public, other, shared, proof = dleq_case
    malformed = (proof * 2)[:length]
    assert verify_dleq(public, other, shared, malformed, CONTEXT) is False


def test_dleq_fails_for_non_reduced_proof_scalars(
    dleq_case: tuple[bytes, bytes, bytes, bytes],
) -> None:
    public, other, shared, proof = dleq_case
    e, z = decode_scalar(proof[:32]), decode_scalar(proof[32:])
    if e + Q < 2**256:
        shifted = (e + Q).to_bytes(32, "big") + proof[32:]
        assert verify_dleq(public, other, shared, shifted, CONTEXT) is False
    if z + Q < 2**256:
        shifted = proof[:32] + (z + Q).to_bytes(32, "big")
        assert verify_dleq(public, other, shared, shifted, CONTEXT) is False
    assert verify_dleq(public, other, shared, b"\xff" * 64, CONTEXT) is False


@pytest.mark.parametrize(
    "bad_point",
    [b"", b"\x00", bytes(65), sec1(G_X, G_Y + 1), sec1(0, 0), scalar_base_point(5)[:-1]],
    ids=["empty", "infinity", "zeros", "off-curve", "zero-coords", "short"],
)
@pytest.mark.parametrize("position", [0, 1, 2])
def test_dleq_fails_for_malformed_points(
    dleq_case: tuple[bytes, bytes, bytes, bytes], bad_point: bytes, position: int
) -> None:
    points = list(dleq_case[:3])
    points[position] = bad_point
    assert verify_dleq(points[0], points[1], points[2], dleq_case[3], CONTEXT) is False


@EC_SETTINGS
@given(proof=st.binary(min_size=0, max_size=80), context=st.binary(max_size=16))
def test_dleq_verify_never_raises_on_random_proofs(
    dleq_case: tuple[bytes, bytes, bytes, bytes], proof: bytes, context: bytes
) -> None:
    public, other, shared, _ = dleq_case
    assert verify_dleq(public, other, shared, proof, context) is False


def test_interpolate_reuses_the_basis_of_the_same_points_for_other_values() -> None:
    # n = 50 peers reveal at the same x for every owner: the cached basis must give each
    # owner's own polynomial, whatever the order in which the shares were pooled.
    xs = [7, 3, 50, 12, *range(20, 50)]  # T = 34 points, unsorted
    for seed in range(3):
        coefficients = [(seed + 1) * 0x9E3779B97F4A7C15 * (k + 1) % Q for k in range(len(xs))]
        points = {x: evaluate(coefficients, x) for x in xs}
        assert interpolate(points) == coefficients
        assert interpolate(dict(reversed(points.items()))) == coefficients
    with pytest.raises(ValueError, match="duplicate"):
        interpolate({1: 2, 1 + Q: 3})
    assert interpolate({}) == []
