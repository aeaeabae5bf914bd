"""Signed envelopes: layout, strict parsing, authentication, context binding, bit flips."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc_agg.codec import InvalidValueError, OversizeError, TruncatedError, UnknownVersionError
from mpc_agg.crypto import SigningKey, VerifyKey, blake3_mac, payload_digest, sha256
from mpc_agg.envelope import (
    BROADCAST,
    MAGIC,
    WIRE_VERSION,
    Envelope,
    EnvelopeContext,
    authenticate,
    check_context,
    parse_envelope,
    seal_envelope,
)
from mpc_agg.errors import DecodeError, SignatureError

SENDER_KEY = SigningKey(bytes(range(32)))
SENDER_VERIFY = VerifyKey(SENDER_KEY.public_bytes())
OTHER_VERIFY = VerifyKey(SigningKey(bytes(range(1, 33))).public_bytes())
CONTEXT = EnvelopeContext(
    protocol="secagg/1",
    federation="hospitals-éu/1",
    roster_digest=sha256(b"roster"),
    round_id=17,
)
PAYLOAD = b"masked input: " + bytes(range(40))
MAX_PAYLOAD = 1 << 16
#: Offset of the roster digest: magic, version, two length-prefixed texts.
DIGEST_OFFSET = 4 + 1 + 4 + len(CONTEXT.protocol.encode()) + 4 + len(CONTEXT.federation.encode())
PAYLOAD_LEN_OFFSET = DIGEST_OFFSET + 32 + 8 + 1 + 1 + 2 + 2
PAYLOAD_DIGEST_OFFSET = PAYLOAD_LEN_OFFSET + 8
UNPADDED_HEADER_LEN = PAYLOAD_DIGEST_OFFSET + 32


def _seal(
    payload: bytes = PAYLOAD,
    context: EnvelopeContext = CONTEXT,
    *,
    phase: int = 2,
    kind: int = 3,
    sender: int = 4,
    recipient: int = BROADCAST,
) -> bytes:
    return seal_envelope(
        context,
        phase=phase,
        kind=kind,
        sender=sender,
        recipient=recipient,
        payload=payload,
        signing_key=SENDER_KEY,
    )


def _open(data: bytes, verify_key: VerifyKey = SENDER_VERIFY) -> Envelope:
    envelope = parse_envelope(data, max_payload=MAX_PAYLOAD)
    authenticate(envelope, verify_key)
    return envelope


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    changed = bytearray(data)
    changed[index] ^= mask
    return bytes(changed)


SEALED = _seal()
HEADER_LEN = len(parse_envelope(SEALED, max_payload=MAX_PAYLOAD).header)


# --------------------------------------------------------------------------- round trip


def test_seal_parse_authenticate_round_trip() -> None:
    envelope = _open(SEALED)
    assert envelope.protocol == CONTEXT.protocol
    assert envelope.federation == CONTEXT.federation
    assert envelope.roster_digest == CONTEXT.roster_digest
    assert envelope.round_id == 17
    assert (envelope.phase, envelope.kind, envelope.sender, envelope.recipient) == (
        2,
        3,
        4,
        BROADCAST,
    )
    assert bytes(envelope.payload) == PAYLOAD
    assert envelope.payload_digest == payload_digest(PAYLOAD)
    assert len(envelope.signature) == 64
    assert check_context(envelope, CONTEXT) is None


@pytest.mark.parametrize("view", ["bytes", "writable", "words", "strided"])
def test_parse_reads_any_buffer_in_bytes(view: str) -> None:
    """A reassembled message arrives as a (writable) memoryview; any view parses as its bytes."""
    payload = b"abcd" * 5  # header, payload and signature all whole 4-byte words
    sealed = _seal(payload)
    assert len(sealed) % 4 == 0
    data: bytes | memoryview
    if view == "bytes":
        data = sealed
    elif view == "writable":
        data = memoryview(bytearray(sealed))
    elif view == "words":
        data = memoryview(bytearray(sealed)).cast("I")  # len() counts words, not bytes
    else:
        doubled = bytearray(len(sealed) * 2)
        doubled[::2] = sealed
        data = memoryview(doubled)[::2]  # not contiguous
    envelope = parse_envelope(data, max_payload=MAX_PAYLOAD)
    authenticate(envelope, SENDER_VERIFY)
    assert bytes(envelope.payload) == payload


def test_layout_magic_version_alignment_and_signature() -> None:
    assert SEALED.startswith(MAGIC + bytes([WIRE_VERSION]))
    assert SEALED[PAYLOAD_LEN_OFFSET:PAYLOAD_DIGEST_OFFSET] == len(PAYLOAD).to_bytes(8, "big")
    assert SEALED[PAYLOAD_DIGEST_OFFSET:UNPADDED_HEADER_LEN] == payload_digest(PAYLOAD)
    assert HEADER_LEN == UNPADDED_HEADER_LEN + (-UNPADDED_HEADER_LEN % 8)
    assert HEADER_LEN % 8 == 0
    assert len(SEALED) == HEADER_LEN + len(PAYLOAD) + 64
    assert SEALED[HEADER_LEN : HEADER_LEN + len(PAYLOAD)] == PAYLOAD
    header = SEALED[:HEADER_LEN]
    SENDER_VERIFY.verify(SEALED[-64:], b"mpc-agg/envelope/v1\x00" + header)


@pytest.mark.parametrize("payload_len", [0, 1, 7, 8, 9, 1000])
@pytest.mark.parametrize("federation", ["f", "fed-xyz", "x" * 128])
def test_round_trip_for_various_lengths(payload_len: int, federation: str) -> None:
    context = dataclasses.replace(CONTEXT, federation=federation, round_id=2**64 - 1)
    payload = bytes(i % 251 for i in range(payload_len))
    data = _seal(payload, context, phase=0, kind=255, sender=0, recipient=0xFFFE)
    envelope = _open(data)
    assert bytes(envelope.payload) == payload
    assert envelope.round_id == 2**64 - 1
    assert (envelope.phase, envelope.kind, envelope.sender, envelope.recipient) == (
        0,
        255,
        0,
        0xFFFE,
    )
    assert len(envelope.header) % 8 == 0
    assert check_context(envelope, context) is None


def test_envelope_repr_hides_payload_and_signature() -> None:
    text = repr(_open(_seal(b"SECRET-PAYLOAD")))
    assert "SECRET-PAYLOAD" not in text
    assert "signature" not in text
    assert "sender=4" in text


# --------------------------------------------------------------------------- parse errors


@pytest.mark.parametrize("magic", [b"MPCB", b"mpca", b"\x00\x00\x00\x00"])
def test_parse_rejects_bad_magic(magic: bytes) -> None:
    with pytest.raises(InvalidValueError, match="magic"):
        parse_envelope(magic + SEALED[4:], max_payload=MAX_PAYLOAD)


@pytest.mark.parametrize("version", [0, 1, 3, 255])  # 1: SHA-256 payload digests
def test_parse_rejects_unknown_wire_version(version: int) -> None:
    data = SEALED[:4] + bytes([version]) + SEALED[5:]
    with pytest.raises(UnknownVersionError, match=str(version)):
        parse_envelope(data, max_payload=MAX_PAYLOAD)


def test_parse_rejects_oversize_payload() -> None:
    assert bytes(parse_envelope(SEALED, max_payload=len(PAYLOAD)).payload) == PAYLOAD
    with pytest.raises(OversizeError, match=f"{len(PAYLOAD)} bytes exceeds maximum"):
        parse_envelope(SEALED, max_payload=len(PAYLOAD) - 1)


def test_parse_rejects_a_huge_announced_payload_as_oversize() -> None:
    offset = PAYLOAD_LEN_OFFSET
    envelope = parse_envelope(SEALED, max_payload=MAX_PAYLOAD)
    assert int.from_bytes(envelope.header[offset : offset + 8], "big") == len(PAYLOAD)
    data = SEALED[:offset] + b"\xff" * 8 + SEALED[offset + 8 :]
    with pytest.raises(OversizeError):
        parse_envelope(data, max_payload=MAX_PAYLOAD)


@pytest.mark.parametrize("cut", [0, 3, 4, 5, 20, HEADER_LEN - 1, HEADER_LEN, -64, -1])
def test_parse_rejects_truncated_messages(cut: int) -> None:
    with pytest.raises(TruncatedError):
        parse_envelope(SEALED[:cut], max_payload=MAX_PAYLOAD)


def test_every_strict_prefix_is_truncated() -> None:
    for cut in range(len(SEALED)):
        with pytest.raises(TruncatedError):
            parse_envelope(SEALED[:cut], max_payload=MAX_PAYLOAD)


@pytest.mark.parametrize("extra", [b"\x00", b"\x00" * 64, SEALED])
def test_parse_rejects_trailing_bytes(extra: bytes) -> None:
    with pytest.raises(DecodeError, match="trailing") as info:
        parse_envelope(SEALED + extra, max_payload=MAX_PAYLOAD)
    assert not isinstance(info.value, TruncatedError)


def test_parse_rejects_nonzero_header_padding() -> None:
    assert UNPADDED_HEADER_LEN < HEADER_LEN, "the test context must need padding"
    assert SEALED[UNPADDED_HEADER_LEN:HEADER_LEN] == bytes(HEADER_LEN - UNPADDED_HEADER_LEN)
    with pytest.raises(InvalidValueError, match="padding"):
        parse_envelope(_flip(SEALED, HEADER_LEN - 1), max_payload=MAX_PAYLOAD)


def test_parse_rejects_invalid_utf8_in_header_text() -> None:
    data = _flip(SEALED, 4 + 1 + 4, 0x80)  # first byte of the protocol name
    with pytest.raises(InvalidValueError, match="UTF-8"):
        parse_envelope(data, max_payload=MAX_PAYLOAD)


# --------------------------------------------------------------------------- authentication


def test_authenticate_rejects_the_wrong_key() -> None:
    envelope = parse_envelope(SEALED, max_payload=MAX_PAYLOAD)
    with pytest.raises(SignatureError):
        authenticate(envelope, OTHER_VERIFY)


@pytest.mark.parametrize("delta", [0, 1, len(PAYLOAD) - 1])
def test_authenticate_rejects_a_flipped_payload_byte(delta: int) -> None:
    envelope = parse_envelope(_flip(SEALED, HEADER_LEN + delta), max_payload=MAX_PAYLOAD)
    with pytest.raises(SignatureError, match="payload"):
        authenticate(envelope, SENDER_VERIFY)


@pytest.mark.parametrize(
    "offset",
    [DIGEST_OFFSET, DIGEST_OFFSET + 31, DIGEST_OFFSET + 32 + 7, DIGEST_OFFSET + 40],
    ids=["roster-first", "roster-last", "round-low", "phase"],
)
def test_authenticate_rejects_a_flipped_header_byte(offset: int) -> None:
    envelope = parse_envelope(_flip(SEALED, offset), max_payload=MAX_PAYLOAD)
    with pytest.raises(SignatureError, match="signature"):
        authenticate(envelope, SENDER_VERIFY)


@pytest.mark.parametrize("delta", [0, 31])
def test_authenticate_rejects_a_flipped_payload_digest_byte(delta: int) -> None:
    envelope = parse_envelope(_flip(SEALED, PAYLOAD_DIGEST_OFFSET + delta), max_payload=MAX_PAYLOAD)
    assert envelope.payload_digest != payload_digest(PAYLOAD)
    with pytest.raises(SignatureError):
        authenticate(envelope, SENDER_VERIFY)


@pytest.mark.parametrize("delta", [0, 31, 32, 63])
@pytest.mark.parametrize("mask", [0x01, 0x80])
def test_authenticate_rejects_a_flipped_signature_byte(delta: int, mask: int) -> None:
    data = _flip(SEALED, len(SEALED) - 64 + delta, mask)
    envelope = parse_envelope(data, max_payload=MAX_PAYLOAD)
    with pytest.raises(SignatureError):
        authenticate(envelope, SENDER_VERIFY)


def test_every_single_byte_flip_is_rejected() -> None:
    for index in range(len(SEALED)):
        for mask in (0x01, 0x80, 0xFF):
            _assert_rejected(_flip(SEALED, index, mask))


def _assert_rejected(data: bytes) -> None:
    try:
        _open(data)
    except (DecodeError, SignatureError):
        return
    pytest.fail("a modified message was accepted")


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_flipping_any_byte_makes_parse_or_authenticate_fail(data: st.DataObject) -> None:
    payload = data.draw(st.binary(max_size=40), label="payload")
    sealed = _seal(payload)
    index = data.draw(st.integers(0, len(sealed) - 1), label="index")
    mask = data.draw(st.integers(1, 255), label="mask")
    _assert_rejected(_flip(sealed, index, mask))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    _assert_rejected(data)


@settings(max_examples=100, deadline=None)
@given(prefix_len=st.integers(0, 200), data=st.binary(max_size=120))
def test_valid_prefix_with_random_tail_only_raises_decode_errors(
    prefix_len: int, data: bytes
) -> None:
    _assert_rejected(SEALED[:prefix_len] + data)


# --------------------------------------------------------------------------- context


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"protocol": "secagg/2"}, "protocol"),
        ({"federation": "hospitals-us"}, "federation"),
        ({"roster_digest": sha256(b"other roster")}, "roster"),
        ({"round_id": 18}, "round"),
        ({"round_id": 17 + (1 << 32)}, "round"),
    ],
)
def test_check_context_names_each_mismatch(changes: dict[str, object], word: str) -> None:
    envelope = _open(SEALED)
    other = dataclasses.replace(CONTEXT, **changes)  # type: ignore[arg-type]
    reason = check_context(envelope, other)
    assert isinstance(reason, str)
    assert word in reason
    assert check_context(envelope, CONTEXT) is None
    # The sealed context itself binds: a message sealed for `other` fails against CONTEXT.
    assert check_context(_open(_seal(context=other)), CONTEXT) is not None


@pytest.mark.parametrize(
    "changes",
    [
        {"protocol": "p" * 65},
        {"federation": "f" * 129},
        {"federation": "é" * 65},
        {"roster_digest": bytes(31)},
        {"roster_digest": bytes(33)},
        {"round_id": -1},
        {"round_id": 1 << 64},
    ],
    ids=repr,
)
def test_envelope_context_validates(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(CONTEXT, **changes)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- digests


def test_message_digest_is_the_header_hash_and_covers_the_payload() -> None:
    envelope = _open(SEALED)
    assert envelope.message_digest == sha256(envelope.header)
    assert _open(_seal()).message_digest == envelope.message_digest
    assert _open(_seal(PAYLOAD + b"!")).message_digest != envelope.message_digest
    assert _open(_seal(_flip(PAYLOAD, 0))).message_digest != envelope.message_digest
    assert _open(_seal(recipient=5)).message_digest != envelope.message_digest
    other_round = dataclasses.replace(CONTEXT, round_id=18)
    assert _open(_seal(context=other_round)).message_digest != envelope.message_digest


def test_payload_digest_is_blake3_256() -> None:
    # BLAKE3 test vectors (the reference implementation's test_vectors.json: input of
    # length n is bytes(i % 251 for i in range(n))), hash output truncated to 32 bytes
    assert payload_digest(b"").hex() == (
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    )
    assert payload_digest(bytes([0])).hex() == (
        "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"
    )
    assert payload_digest(memoryview(bytes(i % 251 for i in range(1024)))).hex() == (
        "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7"
    )


def test_blake3_mac_is_blake3_keyed_hash() -> None:
    # BLAKE3 test vectors, keyed_hash with the key "whats the Elvish word for friend"
    key = b"whats the Elvish word for friend"
    assert blake3_mac(key).hex() == (
        "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"
    )
    assert blake3_mac(key, bytes([0])).hex() == (
        "6d7878dfff2f485635d39013278ae14f1454b8c0a3a2d34bc1ab38228a80c95b"
    )
    data = bytes(i % 251 for i in range(3000))
    assert blake3_mac(key, data[:7], memoryview(data)[7:]) == blake3_mac(key, data)
    assert blake3_mac(key, data) != blake3_mac(bytes(32), data)
    with pytest.raises(ValueError, match="32 bytes"):
        blake3_mac(key[:16], data)


def test_a_payload_in_pieces_seals_to_the_same_bytes() -> None:
    import numpy as np  # noqa: PLC0415 - only here

    words = np.arange(7, dtype=np.uint32)
    pieces: list[bytes | memoryview] = [
        PAYLOAD[:5],
        memoryview(PAYLOAD[5:9]),
        words.view(np.uint8).data,
        b"",
    ]
    whole = PAYLOAD[:9] + words.tobytes()
    sealed = seal_envelope(
        CONTEXT,
        phase=2,
        kind=3,
        sender=4,
        recipient=BROADCAST,
        payload=pieces,
        signing_key=SENDER_KEY,
    )
    assert sealed == _seal(whole)
    assert bytes(_open(sealed).payload) == whole
    assert payload_digest(*pieces) == payload_digest(whole)
