"""Crypto wrappers: Ed25519, P-256 ECDH and points, AES-GCM, HKDF, SHA-256, redaction."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mpc_agg.crypto import (
    AEAD_TAG_SIZE,
    P256_ORDER,
    P256_POINT_SIZE,
    AgreementKey,
    SigningKey,
    VerifyKey,
    aead_decrypt,
    aead_encrypt,
    derive_key,
    digests_equal,
    parse_point,
    scalar_base_point,
    sha256,
)
from mpc_agg.errors import DecodeError, SignatureError, VerificationError
from mpc_agg.randomness import DeterministicRandomSource
from tests.unit.p256 import G_X, G_Y, NON_CANONICAL_POINT, SMALL_X, SMALL_Y
from tests.unit.p256 import P as P256_P
from tests.unit.p256 import sec1 as _sec1


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


# --------------------------------------------------------------------------- Ed25519

# RFC 8032 §7.1, TEST 1 (empty message).
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_ed25519_rfc8032_vector() -> None:
    key = SigningKey(RFC8032_SECRET)
    assert key.public_bytes() == RFC8032_PUBLIC
    assert key.private_bytes() == RFC8032_SECRET
    assert key.sign(b"") == RFC8032_SIGNATURE
    VerifyKey(RFC8032_PUBLIC).verify(RFC8032_SIGNATURE, b"")


def test_sign_and_verify_round_trip() -> None:
    key = SigningKey.generate(DeterministicRandomSource("alice"))
    message = b"round 3: masked input"
    signature = key.sign(message)
    assert len(signature) == 64
    verify_key = VerifyKey(key.public_bytes())
    assert verify_key.raw == key.public_bytes()
    verify_key.verify(signature, message)


def test_generate_is_reproducible_from_the_source() -> None:
    a = SigningKey.generate(DeterministicRandomSource(1))
    b = SigningKey.generate(DeterministicRandomSource(1))
    c = SigningKey.generate(DeterministicRandomSource(2))
    assert a.private_bytes() == b.private_bytes()
    assert a.private_bytes() != c.private_bytes()


@pytest.mark.parametrize("index", [0, 5, 12])
def test_verify_rejects_a_tampered_message(index: int) -> None:
    key = SigningKey(bytes(range(32)))
    message = b"the aggregate is 42"
    signature = key.sign(message)
    with pytest.raises(SignatureError):
        VerifyKey(key.public_bytes()).verify(signature, _flip(message, index))
    with pytest.raises(SignatureError):
        VerifyKey(key.public_bytes()).verify(signature, message + b"\x00")


@pytest.mark.parametrize("index", [0, 31, 32, 63])
@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_verify_rejects_a_tampered_signature(index: int, mask: int) -> None:
    key = SigningKey(bytes(range(32)))
    signature = key.sign(b"message")
    with pytest.raises(SignatureError):
        VerifyKey(key.public_bytes()).verify(_flip(signature, index, mask), b"message")


@pytest.mark.parametrize("length", [0, 63, 65])
def test_verify_rejects_wrong_length_signatures(length: int) -> None:
    key = SigningKey(bytes(range(32)))
    with pytest.raises(SignatureError):
        VerifyKey(key.public_bytes()).verify(bytes(length), b"message")


def test_verify_rejects_another_signers_signature() -> None:
    alice = SigningKey(bytes(32))
    bob = SigningKey(bytes([1]) * 32)
    with pytest.raises(SignatureError):
        VerifyKey(bob.public_bytes()).verify(alice.sign(b"hello"), b"hello")


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_verify_key_rejects_wrong_lengths(length: int) -> None:
    with pytest.raises(DecodeError, match=str(length)):
        VerifyKey(bytes(length))


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_signing_key_rejects_wrong_lengths(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        SigningKey(bytes(length))


def test_signing_key_repr_hides_the_private_key() -> None:
    key = SigningKey(RFC8032_SECRET)
    text = repr(key)
    assert RFC8032_SECRET.hex() not in text
    assert RFC8032_SECRET.hex()[:8] not in text
    assert RFC8032_PUBLIC.hex()[:16] in text


# --------------------------------------------------------------------------- P-256


def test_scalar_base_point_of_zero_is_infinity() -> None:
    assert scalar_base_point(0) == b"\x00"
    assert scalar_base_point(P256_ORDER) == b"\x00"


def test_scalar_base_point_known_values() -> None:
    assert scalar_base_point(1) == _sec1(G_X, G_Y)
    assert scalar_base_point(P256_ORDER + 1) == _sec1(G_X, G_Y)
    assert scalar_base_point(P256_ORDER - 1) == _sec1(G_X, P256_P - G_Y)  # −G
    assert scalar_base_point(-1) == scalar_base_point(P256_ORDER - 1)
    assert len(scalar_base_point(12345)) == P256_POINT_SIZE


def test_parse_point_accepts_valid_points() -> None:
    for scalar in (1, 2, P256_ORDER - 1):
        encoded = scalar_base_point(scalar)
        point = parse_point(encoded)
        assert point.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint) == encoded
    parse_point(_sec1(SMALL_X, SMALL_Y))


@pytest.mark.parametrize("length", [0, 1, 33, 64, 66])
def test_parse_point_rejects_wrong_length(length: int) -> None:
    with pytest.raises(DecodeError):
        parse_point(b"\x04" + bytes(max(length - 1, 0)) if length else b"")


@pytest.mark.parametrize("prefix", [0x00, 0x02, 0x03, 0x05, 0x06, 0x07])
def test_parse_point_rejects_wrong_prefix(prefix: int) -> None:
    encoded = bytes([prefix]) + scalar_base_point(5)[1:]
    with pytest.raises(DecodeError):
        parse_point(encoded)


def test_parse_point_rejects_compressed_encoding() -> None:
    compressed = bytes([2 + (G_Y & 1)]) + G_X.to_bytes(32, "big")
    with pytest.raises(DecodeError):
        parse_point(compressed)


@pytest.mark.parametrize(
    "encoded",
    [
        _sec1(G_X, G_Y + 1),
        _sec1(G_X + 1, G_Y),
        _sec1(0, 0),
        NON_CANONICAL_POINT,
        _sec1(2**256 - 1, 2**256 - 1),
    ],
    ids=["y+1", "x+1", "zero", "non-canonical", "all-ones"],
)
def test_parse_point_rejects_points_off_the_curve(encoded: bytes) -> None:
    with pytest.raises(DecodeError):
        parse_point(encoded)


def test_ecdh_is_symmetric_and_matches_the_group_law() -> None:
    source = DeterministicRandomSource("ecdh")
    alice, bob = AgreementKey.generate(source), AgreementKey.generate(source)
    assert alice.scalar != bob.scalar
    shared = alice.exchange(bob.public)
    assert shared == bob.exchange(alice.public)
    assert len(shared) == 32
    # x-coordinate of (a·b)·G
    assert shared == scalar_base_point(alice.scalar * bob.scalar % P256_ORDER)[1:33]
    assert alice.exchange(parse_point(bob.public)) == shared
    carol = AgreementKey(3)
    assert alice.exchange(carol.public) != shared


def test_agreement_key_public_is_scalar_times_g() -> None:
    assert AgreementKey(1).public == _sec1(G_X, G_Y)
    assert AgreementKey(P256_ORDER - 1).public == scalar_base_point(P256_ORDER - 1)


@pytest.mark.parametrize("scalar", [0, -1, P256_ORDER, P256_ORDER + 1])
def test_agreement_key_rejects_out_of_range_scalars(scalar: int) -> None:
    with pytest.raises(ValueError, match="out of range"):
        AgreementKey(scalar)


def test_exchange_rejects_invalid_peer_points() -> None:
    key = AgreementKey(7)
    with pytest.raises(DecodeError):
        key.exchange(_sec1(G_X, G_Y + 1))
    with pytest.raises(DecodeError):
        key.exchange(b"\x00")


def test_agreement_key_repr_hides_the_scalar() -> None:
    scalar = 0x1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF
    key = AgreementKey(scalar)
    text = repr(key)
    assert f"{scalar:064x}" not in text.lower()
    assert f"{scalar:064x}"[:12] not in text.lower()
    assert str(scalar) not in text
    assert str(scalar)[:12] not in text


# --------------------------------------------------------------------------- AEAD

AEAD_KEY = bytes(range(32))


def test_aead_round_trip() -> None:
    ciphertext = aead_encrypt(AEAD_KEY, b"share for peer 3", b"header")
    assert len(ciphertext) == len(b"share for peer 3") + AEAD_TAG_SIZE
    assert b"share for peer 3" not in ciphertext
    assert aead_decrypt(AEAD_KEY, ciphertext, b"header") == b"share for peer 3"
    assert aead_decrypt(AEAD_KEY, aead_encrypt(AEAD_KEY, b"", b""), b"") == b""


@pytest.mark.parametrize("index", [0, 7, 15, 16, 31])
def test_aead_rejects_tampered_ciphertext_or_tag(index: int) -> None:
    ciphertext = aead_encrypt(AEAD_KEY, b"sixteen byte msg", b"ad")
    assert len(ciphertext) == 32
    with pytest.raises(VerificationError):
        aead_decrypt(AEAD_KEY, _flip(ciphertext, index), b"ad")


def test_aead_rejects_tampered_associated_data_wrong_key_and_truncation() -> None:
    ciphertext = aead_encrypt(AEAD_KEY, b"payload", b"round 1")
    with pytest.raises(VerificationError):
        aead_decrypt(AEAD_KEY, ciphertext, b"round 2")
    with pytest.raises(VerificationError):
        aead_decrypt(AEAD_KEY, ciphertext, b"")
    with pytest.raises(VerificationError):
        aead_decrypt(bytes(32), ciphertext, b"round 1")
    with pytest.raises(VerificationError):
        aead_decrypt(AEAD_KEY, ciphertext[:-1], b"round 1")
    with pytest.raises(VerificationError):
        aead_decrypt(AEAD_KEY, ciphertext + b"\x00", b"round 1")
    with pytest.raises(VerificationError):
        aead_decrypt(AEAD_KEY, ciphertext[: AEAD_TAG_SIZE - 1], b"round 1")


# --------------------------------------------------------------------------- hashing, KDF


def test_sha256_hashes_the_concatenation() -> None:
    assert sha256(b"ab", memoryview(b"c"), b"") == hashlib.sha256(b"abc").digest()
    assert sha256() == hashlib.sha256(b"").digest()


def test_digests_equal() -> None:
    assert digests_equal(b"\x01" * 32, b"\x01" * 32)
    assert not digests_equal(b"\x01" * 32, b"\x01" * 31 + b"\x02")
    assert not digests_equal(b"\x01" * 32, b"\x01" * 31)


def test_derive_key_rfc5869_test_case_3() -> None:
    # RFC 5869 A.3: SHA-256, empty salt, empty info.
    okm = derive_key(bytes([0x0B]) * 22, info=b"", length=42)
    assert okm == bytes.fromhex(
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


def test_derive_key_separates_by_info() -> None:
    secret = bytes(range(32))
    assert derive_key(secret, info=b"a") != derive_key(secret, info=b"b")
    assert len(derive_key(secret, info=b"a")) == 32
