"""Verifiable Shamir secret sharing over the P-256 scalar field (Feldman commitments).

A dealer shares a secret ``s ∈ Z_q`` (q = order of P-256) with a random polynomial
``f(X) = s + a_1·X + … + a_{T−1}·X^{T−1}`` and publishes the commitments
``C_k = a_k·G`` (``C_0 = s·G``). Anyone can check a share ``(x, y)`` against them:
``y·G == Σ_k x^k·C_k``. Shares are evaluated at x = roster index + 1.

Hiding: Feldman commitments reveal ``s·G``; the secrets shared here are uniformly random
256-bit scalars (ECDH private keys and self-mask seeds), so this leaks nothing under the
discrete-log assumption — and for a key-agreement secret ``C_0`` is exactly the public
key the dealer already advertised, which binds the sharing to that key.

Performance (measured, see ``benchmarks/``): pycryptodome's general scalar multiplication
costs ~330 µs whatever the scalar's size, but in-place point doubling and addition cost
~1.6 µs. Share verification therefore evaluates ``Σ x^k·C_k`` by Horner's rule with a
double-and-add for the *small* multiplier x (≤ roster size). Recovery checks the
interpolated polynomial's coefficients against the commitments with OpenSSL's fixed-base
multiplication (~50 µs each) instead of verifying every share separately.

Also here: a Chaum–Pedersen proof of discrete-log equality, used to make a complaint
about an invalid share publicly verifiable (``secagg`` SPEC §6.3).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from Crypto.PublicKey._point import EccPoint

from mpc_agg.crypto import (
    P256_ORDER,
    P256_POINT_SIZE,
    digests_equal,
    scalar_base_point,
    sha256,
)
from mpc_agg.errors import DecodeError, VerificationError
from mpc_agg.randomness import RandomSource, random_below

Q = P256_ORDER
SCALAR_SIZE = 32
_P = 2**256 - 2**224 + 2**192 + 2**96 - 1  # P-256 field prime
_CURVE = "P-256"
_G = EccPoint(
    0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    curve=_CURVE,
)


# --------------------------------------------------------------------------- points


def decode_point(encoded: bytes) -> EccPoint:
    """SEC1 uncompressed bytes → pycryptodome point (validated on the curve, finite)."""
    if len(encoded) != P256_POINT_SIZE or encoded[0] != 4:
        raise DecodeError("P-256 point must be 65 bytes of SEC1 uncompressed encoding")
    x = int.from_bytes(encoded[1:33], "big")
    y = int.from_bytes(encoded[33:], "big")
    # pycryptodome reduces coordinates mod p and reads (0, 0) as infinity: reject both
    # (checked on the integers: is_point_at_infinity() builds a second point to compare)
    if x >= _P or y >= _P:
        raise DecodeError("P-256 point coordinates must be reduced modulo p")
    if x == 0 and y == 0:
        raise DecodeError("bytes do not encode a point on P-256")
    try:
        return EccPoint(x, y, curve=_CURVE)
    except ValueError:
        raise DecodeError("bytes do not encode a point on P-256") from None


def encode_point(point: EccPoint) -> bytes:
    """Pycryptodome point → SEC1 uncompressed bytes (one zero byte for the point at infinity)."""
    if point.is_point_at_infinity():
        return b"\x00"
    x, y = point.xy
    return b"\x04" + int(x).to_bytes(32, "big") + int(y).to_bytes(32, "big")


def _small_multiple_into(acc: EccPoint, base: EccPoint, k: int) -> EccPoint:
    """Return ``k·base`` for a small k ≥ 1 using in-place double-and-add (``acc`` is reused)."""
    acc.set(base)
    for bit in bin(k)[3:]:
        acc.double()
        if bit == "1":
            acc += base
    return acc


def encode_scalar(value: int) -> bytes:
    """Scalar → 32 bytes big-endian (must be reduced)."""
    if not 0 <= value < Q:
        raise ValueError("scalar out of range")
    return value.to_bytes(SCALAR_SIZE, "big")


def decode_scalar(data: bytes) -> int:
    """32 bytes big-endian → scalar; rejects non-reduced encodings."""
    if len(data) != SCALAR_SIZE:
        raise DecodeError(f"scalar must be {SCALAR_SIZE} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= Q:
        raise DecodeError("scalar is not reduced modulo the group order")
    return value


# --------------------------------------------------------------------------- sharing


@dataclass(frozen=True, slots=True)
class Commitments:
    """Feldman commitments ``C_0 … C_{T−1}`` (SEC1 bytes); ``threshold`` = T."""

    points: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.points:
            raise ValueError("at least one commitment is required")

    @property
    def threshold(self) -> int:
        """Number of shares needed to reconstruct (polynomial degree + 1)."""
        return len(self.points)

    @property
    def secret_commitment(self) -> bytes:
        """``C_0 = s·G``."""
        return self.points[0]

    def decoded(self) -> list[EccPoint]:
        """Validate and decode every commitment (raises :class:`DecodeError`)."""
        return [decode_point(p) for p in self.points]


def share_secret(
    secret: int, threshold: int, xs: Sequence[int], source: RandomSource
) -> tuple[dict[int, int], Commitments]:
    """Shamir-share ``secret`` with threshold T at the points ``xs`` (distinct, 1 ≤ x < q).

    Coefficients are non-zero so that every commitment is a finite point.
    """
    if not 0 < secret < Q:
        raise ValueError("secret must be a non-zero scalar")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}]")
    if len(set(xs)) != len(xs) or any(not 0 < x < Q for x in xs):
        raise ValueError("evaluation points must be distinct and non-zero")
    coefficients = [secret] + [1 + random_below(source, Q - 1) for _ in range(threshold - 1)]
    shares = {x: evaluate(coefficients, x) for x in xs}
    commitments = Commitments(tuple(scalar_base_point(a) for a in coefficients))
    return shares, commitments


def evaluate(coefficients: Sequence[int], x: int) -> int:
    """``f(x) mod q`` by Horner's rule."""
    acc = 0
    for a in reversed(coefficients):
        acc = (acc * x + a) % Q
    return acc


def commitment_at(decoded: Sequence[EccPoint], x: int) -> EccPoint:
    """``Σ_k x^k·C_k`` by Horner's rule with small-multiplier double-and-add (x ≥ 1 small)."""
    acc = decoded[-1].copy()
    scratch = decoded[-1].copy()
    for point in reversed(decoded[:-1]):
        _small_multiple_into(scratch, acc, x)
        acc.set(scratch)
        acc += point
    return acc


def verify_share(decoded: Sequence[EccPoint], x: int, share: int) -> bool:
    """Check ``share·G == Σ_k x^k·C_k`` (``decoded`` from :meth:`Commitments.decoded`)."""
    if not (0 < x < Q and 0 <= share < Q):  # x = 0 is the secret, never a share
        return False
    expected = encode_point(commitment_at(decoded, x))
    return digests_equal(scalar_base_point(share), expected)


def interpolate(points: Mapping[int, int]) -> list[int]:
    """Coefficients of the unique polynomial of degree < len(points) through ``points``.

    ``Σ_i y_i·ℓ_i(X)`` with the Lagrange basis of the points' x (public), computed once per
    set of x and cached (:func:`_lagrange_basis`): a reconstruction then costs T² products
    instead of rebuilding the basis in O(T³) (secagg SPEC §6.5, the fast path).
    """
    xs = tuple(points)
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate x")
    if not xs:
        return []
    basis = _lagrange_basis(tuple(x % Q for x in xs))
    ys = [points[x] for x in xs]
    return [sum(y * row[k] for y, row in zip(ys, basis, strict=True)) % Q for k in range(len(xs))]


@functools.lru_cache(maxsize=8)  # T² ints each: ≈ 18 MB at T = 512
def _lagrange_basis(xs: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Coefficients (ascending) of each Lagrange basis polynomial ℓ_i for the points ``xs``.

    ``P(X) = Π_j (X − x_j)``; ``ℓ_i = (P(X) / (X − x_i)) / Π_{j≠i} (x_i − x_j)``, each
    quotient by synthetic division: O(T²) in all. Only public evaluation points are cached.
    """
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate x")
    master = [1]  # ascending coefficients of Π (X − x_j)
    for xj in xs:
        shifted = [0, *master]
        master = [
            (shifted[k] - xj * (master[k] if k < len(master) else 0)) % Q
            for k in range(len(shifted))
        ]
    rows = []
    for xi in xs:
        quotient = [0] * len(xs)  # P(X) / (X − x_i), degree T − 1
        carry = master[-1]
        for k in range(len(xs) - 1, -1, -1):
            quotient[k] = carry
            carry = (master[k] + xi * carry) % Q
        denominator = 1
        for xj in xs:
            if xj != xi:
                denominator = denominator * (xi - xj) % Q
        scale = pow(denominator, -1, Q)
        rows.append(tuple(c * scale % Q for c in quotient))
    return tuple(rows)


def lagrange_at_zero(points: Mapping[int, int]) -> int:
    """``f(0)`` for the polynomial through ``points``."""
    total = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * xj % Q
                den = den * (xj - xi) % Q
        total = (total + yi * num * pow(den, -1, Q)) % Q
    return total


class InsufficientSharesError(VerificationError):
    """Fewer than T valid shares; ``invalid_xs`` still names every invalid one (for blame)."""

    def __init__(self, message: str, *, invalid_xs: tuple[int, ...]) -> None:
        super().__init__(message)
        self.invalid_xs = invalid_xs


@dataclass(frozen=True, slots=True)
class Recovery:
    """Outcome of :func:`recover`: the secret and the x of every share that was invalid."""

    secret: int
    invalid_xs: tuple[int, ...]

    def __repr__(self) -> str:  # never print the secret
        return f"Recovery(secret=<redacted>, invalid_xs={self.invalid_xs})"


def recover(shares: Mapping[int, int], commitments: Commitments) -> Recovery:
    """Reconstruct the committed secret from shares, identifying every invalid share.

    Fast path: interpolate the first T shares, check that every other share lies on that
    polynomial and that each coefficient matches its commitment (``a_k·G == C_k``): then
    every share is on the committed polynomial. Otherwise each share is verified alone
    and the valid ones are used. Raises :class:`VerificationError` with fewer than T
    valid shares.
    """
    threshold = commitments.threshold
    xs = sorted(shares)
    in_range = all(0 < x < Q and 0 <= y < Q for x, y in shares.items())
    if in_range and len(xs) >= threshold:
        base = {x: shares[x] for x in xs[:threshold]}
        coefficients = interpolate(base)
        consistent = all(evaluate(coefficients, x) == shares[x] for x in xs[threshold:])
        if consistent and all(
            digests_equal(scalar_base_point(a), c)
            for a, c in zip(coefficients, commitments.points, strict=True)
        ):
            return Recovery(coefficients[0], ())
    decoded = commitments.decoded()
    valid = {x: y for x, y in shares.items() if verify_share(decoded, x, y)}
    invalid = tuple(sorted(set(shares) - set(valid)))
    if len(valid) < threshold:
        raise InsufficientSharesError(
            f"only {len(valid)} valid shares of {len(shares)} received; {threshold} needed",
            invalid_xs=invalid,
        )
    secret = lagrange_at_zero({x: valid[x] for x in sorted(valid)[:threshold]})
    if not digests_equal(scalar_base_point(secret), commitments.secret_commitment):
        raise VerificationError("reconstructed secret does not match its commitment")
    return Recovery(secret, invalid)


# --------------------------------------------------------------------------- DLEQ


PROOF_SIZE = 2 * SCALAR_SIZE


def _challenge(context: bytes, *points: bytes) -> int:
    return int.from_bytes(sha256(b"mpc-agg/dleq/v1", context, *points), "big") % Q


def shared_point(scalar: int, other: bytes) -> bytes:
    """``scalar · other`` (SEC1), the full ECDH point whose x-coordinate is the ECDH output."""
    return encode_point(decode_point(other) * scalar)


def prove_dleq(
    scalar: int, other: bytes, shared: bytes, context: bytes, source: RandomSource
) -> bytes:
    """Chaum–Pedersen proof that log_G(scalar·G) = log_other(shared), bound to ``context``."""
    public = scalar_base_point(scalar)
    nonce = 1 + random_below(source, Q - 1)
    t1 = scalar_base_point(nonce)
    t2 = encode_point(decode_point(other) * nonce)
    e = _challenge(context, public, other, shared, t1, t2)
    z = (nonce + e * scalar) % Q
    return encode_scalar(e) + encode_scalar(z)


def verify_dleq(public: bytes, other: bytes, shared: bytes, proof: bytes, context: bytes) -> bool:
    """Check a :func:`prove_dleq` proof; False on any malformed input."""
    if len(proof) != PROOF_SIZE:
        return False
    try:
        e = decode_scalar(proof[:SCALAR_SIZE])
        z = decode_scalar(proof[SCALAR_SIZE:])
        a_point = decode_point(public)
        b_point = decode_point(other)
        k_point = decode_point(shared)
    except DecodeError:
        return False
    minus_e = (-e) % Q
    t1 = _G * z + a_point * minus_e
    t2 = b_point * z + k_point * minus_e
    expected = _challenge(context, public, other, shared, encode_point(t1), encode_point(t2))
    return digests_equal(encode_scalar(expected), encode_scalar(e))
