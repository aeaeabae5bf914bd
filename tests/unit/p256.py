"""P-256 constants and hand-built encodings shared by the point-parsing tests."""

from __future__ import annotations

P = 2**256 - 2**224 + 2**192 + 2**96 - 1
B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
G_X = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
G_Y = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5


def sec1(x: int, y: int) -> bytes:
    """SEC1 uncompressed encoding of raw coordinates (not reduced, not validated)."""
    return b"\x04" + x.to_bytes(32, "big") + y.to_bytes(32, "big")


def small_x_point() -> tuple[int, int]:
    """A curve point with a small x, so that x + p still fits in 32 bytes."""
    for x in range(1, 100):
        rhs = (x**3 - 3 * x + B) % P
        y = pow(rhs, (P + 1) // 4, P)  # p ≡ 3 (mod 4)
        if y * y % P == rhs:
            return x, y
    raise AssertionError("no small-x point found")


SMALL_X, SMALL_Y = small_x_point()
#: The same point as ``sec1(SMALL_X, SMALL_Y)`` with x written as x + p (non-canonical).
NON_CANONICAL_POINT = sec1(SMALL_X + P, SMALL_Y)
