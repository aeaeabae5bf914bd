r"""Signed envelopes: every protocol message is bound to its full context and signed.

Wire layout (all integers big-endian)::

    header  = "MPCA" | wire_version:u8 | protocol:text | federation:text
              | roster_digest:32 | round:u64 | phase:u8 | kind:u8
              | sender:u16 | recipient:u16 | payload_len:u64 | payload_blake3:32
              | zero padding to a multiple of 8 bytes
    message = header | payload | ed25519_signature(64)

The signature covers ``"mpc-agg/envelope/v1\\0" | header``; the header commits to the
payload through its BLAKE3-256 (:func:`~mpc_agg.crypto.payload_digest`; wire version 2 —
version 1 used SHA-256, at a fifth of the speed), so a receiver hashes the payload once
and verifies one short signature. Identity comes from this signature, never from a topic
name. ``recipient`` is :data:`BROADCAST` for messages to every peer.

:func:`parse_envelope` only decodes (typed :class:`~mpc_agg.errors.DecodeError` on any
malformation, including an unknown wire version, oversize fields and trailing bytes);
:func:`open_envelope` also authenticates it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mpc_agg.codec import (
    InvalidValueError,
    OversizeError,
    Reader,
    TrailingBytesError,
    TruncatedError,
    UnknownVersionError,
    Writer,
)
from mpc_agg.crypto import (
    DIGEST_SIZE,
    SIGNATURE_SIZE,
    SigningKey,
    VerifyKey,
    digests_equal,
    payload_digest,
    sha256,
)
from mpc_agg.errors import SignatureError

MAGIC = b"MPCA"
WIRE_VERSION = 2
BROADCAST = 0xFFFF
MAX_PROTOCOL_LEN = 64
MAX_FEDERATION_LEN = 128
_SIGNING_DOMAIN = b"mpc-agg/envelope/v1\x00"


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvelopeContext:
    """What a message must be bound to: set by the receiving machine, checked on open."""

    protocol: str
    federation: str
    roster_digest: bytes
    round_id: int

    def __post_init__(self) -> None:
        if len(self.protocol.encode()) > MAX_PROTOCOL_LEN:
            raise ValueError("protocol name too long")
        if len(self.federation.encode()) > MAX_FEDERATION_LEN:
            raise ValueError("federation id too long")
        if len(self.roster_digest) != DIGEST_SIZE:
            raise ValueError("roster digest must be 32 bytes")
        if not 0 <= self.round_id < 1 << 64:
            raise ValueError("round id must fit in 64 bits")


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """A parsed (not necessarily authenticated) message."""

    protocol: str
    federation: str
    roster_digest: bytes
    round_id: int
    phase: int
    kind: int
    sender: int
    recipient: int
    payload: bytes | memoryview = field(repr=False)
    payload_digest: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    header: bytes = field(repr=False)

    @property
    def message_digest(self) -> bytes:
        """SHA-256 of the signed header: identifies this exact message (payload included)."""
        return sha256(self.header)


def seal_envelope(
    context: EnvelopeContext,
    *,
    phase: int,
    kind: int,
    sender: int,
    recipient: int,
    payload: bytes | Sequence[bytes | memoryview],
    signing_key: SigningKey,
) -> bytes:
    """Build, sign and serialise a message.

    ``payload`` may be given in pieces (byte-format buffers, e.g. a vector's view): they are
    hashed in place and copied once, into the message.
    """
    pieces: Sequence[bytes | bytearray | memoryview] = (
        (payload,) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    )
    # as bytes: the length, the digest and the join see the same bytes (TypeError if a
    # piece is not contiguous)
    parts = [memoryview(piece).cast("B") for piece in pieces]
    length = sum(part.nbytes for part in parts)
    header = _header(context, phase, kind, sender, recipient, length, payload_digest(*parts))
    signature = signing_key.sign(_SIGNING_DOMAIN + header)
    return b"".join((header, *parts, signature))


def _header(
    context: EnvelopeContext,
    phase: int,
    kind: int,
    sender: int,
    recipient: int,
    payload_len: int,
    payload_digest: bytes,
) -> bytes:
    header = (
        Writer()
        .raw(MAGIC)
        .u8(WIRE_VERSION)
        .text(context.protocol, MAX_PROTOCOL_LEN)
        .text(context.federation, MAX_FEDERATION_LEN)
        .fixed(context.roster_digest, DIGEST_SIZE)
        .u64(context.round_id)
        .u8(phase)
        .u8(kind)
        .u16(sender)
        .u16(recipient)
        .u64(payload_len)
        .fixed(payload_digest, DIGEST_SIZE)
        .getvalue()
    )
    return header + bytes(-len(header) % 8)  # payload starts 8-byte aligned


def parse_envelope(data: bytes | memoryview, *, max_payload: int) -> Envelope:
    """Decode a message without authenticating it."""
    if isinstance(data, memoryview) and not (data.format == "B" and data.c_contiguous):
        data = data.cast("B") if data.c_contiguous else data.tobytes()  # lengths in bytes
    reader = Reader(data)
    if reader.fixed(len(MAGIC)) != MAGIC:
        raise InvalidValueError("not an mpc-agg message (bad magic)")
    version = reader.u8()
    if version != WIRE_VERSION:
        raise UnknownVersionError(f"wire version {version} is not supported")
    protocol = reader.text(MAX_PROTOCOL_LEN)
    federation = reader.text(MAX_FEDERATION_LEN)
    roster_digest = reader.fixed(DIGEST_SIZE)
    round_id = reader.u64()
    phase = reader.u8()
    kind = reader.u8()
    sender = reader.u16()
    recipient = reader.u16()
    payload_len = reader.u64()
    payload_digest = reader.fixed(DIGEST_SIZE)
    if any(reader.fixed(-(len(data) - reader.remaining) % 8)):
        raise InvalidValueError("header padding must be zero")
    header_len = len(data) - reader.remaining
    if payload_len > max_payload:
        raise OversizeError(f"payload of {payload_len} bytes exceeds maximum {max_payload}")
    expected = header_len + payload_len + SIGNATURE_SIZE
    if len(data) < expected:
        raise TruncatedError(f"message is {len(data)} bytes, header announces {expected}")
    if len(data) > expected:
        raise TrailingBytesError(f"{len(data) - expected} trailing bytes after the signature")
    view = memoryview(data)
    return Envelope(
        protocol=protocol,
        federation=federation,
        roster_digest=roster_digest,
        round_id=round_id,
        phase=phase,
        kind=kind,
        sender=sender,
        recipient=recipient,
        payload=view[header_len : header_len + payload_len],
        payload_digest=payload_digest,
        signature=bytes(view[header_len + payload_len :]),
        header=bytes(view[:header_len]),
    )


def authenticate(envelope: Envelope, verify_key: VerifyKey) -> None:
    """Check the signature and the payload digest; raise SignatureError / DecodeError."""
    verify_key.verify(envelope.signature, _SIGNING_DOMAIN + envelope.header)
    if not digests_equal(payload_digest(envelope.payload), envelope.payload_digest):
        raise SignatureError("payload does not match the signed digest")


def check_context(envelope: Envelope, context: EnvelopeContext) -> str | None:
    """``None`` if the envelope is bound to ``context``, else the reason it is not.

    The reason starts with ``message is for round`` exactly when only the round differs
    (see :func:`wrong_round_only`).
    """
    if envelope.protocol != context.protocol:
        return f"protocol {envelope.protocol!r} is not {context.protocol!r}"
    if envelope.federation != context.federation:
        return f"federation {envelope.federation!r} is not {context.federation!r}"
    if not digests_equal(envelope.roster_digest, context.roster_digest):
        return "roster digest does not match this federation's roster"
    if envelope.round_id != context.round_id:
        return f"message is for round {envelope.round_id}, this is round {context.round_id}"
    return None


def wrong_round_only(envelope: Envelope, context: EnvelopeContext) -> bool:
    """True when only the round of ``envelope`` differs from ``context``.

    A replay from another round of this federation and roster, as opposed to one from
    another federation (or roster) or protocol.
    """
    return (
        envelope.protocol == context.protocol
        and envelope.federation == context.federation
        and digests_equal(envelope.roster_digest, context.roster_digest)
        and envelope.round_id != context.round_id
    )
