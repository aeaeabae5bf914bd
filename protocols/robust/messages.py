"""Wire messages of ``robust/3`` (SPEC §5): frozen, slotted, keyword-only, validated when built.

Each message is the payload of a signed envelope whose ``kind`` is its
:class:`~protocols.robust.phases.MessageKind`. Encodings are canonical
(:mod:`mpc_agg.codec`): lists are strictly increasing by peer id, every length is bounded,
field vectors are 8-byte-aligned little-endian words that must be < p, and ``decode``
rejects trailing bytes, so one message has exactly one encoding.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mpc_agg import field as gf
from mpc_agg.codec import InvalidValueError, Reader, Writer
from mpc_agg.crypto import DIGEST_SIZE, P256_POINT_SIZE
from protocols.common import MAX_PEERS

FieldVector = NDArray[np.uint64]

#: Secrets drawn per message slot: salts, seeds, nonces, output-key parts.
SECRET_SIZE = 32
#: Nonces committed at Advertise and revealed at the three challenge phases.
NONCES = 3
#: Longest field vector in any message (a share: 2^31 coordinates and one mask).
MAX_VECTOR = (1 << 31) + 1


class ShareStatus(enum.IntEnum):
    """What a holder found when it opened a dealer's shares (SPEC §6.5)."""

    OK = 0
    BAD = 1
    MISSING = 2


class ShareForm(enum.IntEnum):
    """A share travels as its vector or as the seed it is expanded from (SPEC §6.1)."""

    SEED = 0
    VECTOR = 1


def _check_ids(values: Sequence[int], what: str) -> None:
    if any(not 0 <= v < MAX_PEERS for v in values):
        raise InvalidValueError(f"{what}: peer id out of range")
    if any(a >= b for a, b in itertools.pairwise(values)):
        raise InvalidValueError(f"{what}: must be strictly increasing")


def _check_digest(value: bytes, what: str) -> None:
    if len(value) != DIGEST_SIZE:
        raise InvalidValueError(f"{what} must be {DIGEST_SIZE} bytes")


def write_field_vector(writer: Writer, vector: FieldVector) -> None:
    """Append a field vector (u64 count, padding to 8 bytes, little-endian words)."""
    writer.ring_vector(vector, MAX_VECTOR)


def read_field_vector(reader: Reader, length: int | None = None) -> FieldVector:
    """Read a field vector; every entry must be < p and, if given, the length must match."""
    vector = reader.ring_vector(MAX_VECTOR)
    if length is not None and vector.shape[0] != length:
        raise InvalidValueError(f"field vector has {vector.shape[0]} entries, expected {length}")
    if vector.size and int(vector.max()) >= gf.P:
        raise InvalidValueError("a field element is not reduced modulo p = 2^61 − 1")
    return vector


# --------------------------------------------------------------------------- §5.1


@dataclass(frozen=True, slots=True, kw_only=True)
class Advertise:
    """§5.1 — the per-round encryption key and commitments to three challenge nonces."""

    encryption_key: bytes
    nonce_commitments: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.encryption_key) != P256_POINT_SIZE:
            raise InvalidValueError("the encryption key must be a 65-byte SEC1 point")
        if len(self.nonce_commitments) != NONCES:
            raise InvalidValueError(f"Advertise carries exactly {NONCES} nonce commitments")
        for c in self.nonce_commitments:
            _check_digest(c, "a nonce commitment")

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer().fixed(self.encryption_key, P256_POINT_SIZE)
        for c in self.nonce_commitments:
            w.fixed(c, DIGEST_SIZE)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Advertise:
        """Strict decoding."""
        r = Reader(data)
        key = r.fixed(P256_POINT_SIZE)
        commitments = tuple(r.fixed(DIGEST_SIZE) for _ in range(NONCES))
        r.finish()
        return cls(encryption_key=key, nonce_commitments=commitments)


# --------------------------------------------------------------------------- §5.2 / §5.4


def _write_commitments(w: Writer, commitments: Sequence[tuple[int, bytes]]) -> None:
    w.seq(commitments, MAX_PEERS, lambda w, hc: w.u16(hc[0]).fixed(hc[1], DIGEST_SIZE))


def _read_commitments(r: Reader) -> tuple[tuple[int, bytes], ...]:
    return tuple(r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(DIGEST_SIZE))))


def _check_commitments(commitments: Sequence[tuple[int, bytes]]) -> None:
    _check_ids([h for h, _ in commitments], "share commitments")
    for _, c in commitments:
        _check_digest(c, "a share commitment")


@dataclass(frozen=True, slots=True, kw_only=True)
class DealInput:
    """§5.2 — commitments to the input share of every holder, and to the output-key part."""

    view: bytes
    commitments: tuple[tuple[int, bytes], ...]
    output_key_commitment: bytes

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")
        _check_commitments(self.commitments)
        _check_digest(self.output_key_commitment, "the output-key commitment")

    def commitment_for(self, holder: int) -> bytes | None:
        """The commitment to ``holder``'s share, if any."""
        return dict(self.commitments).get(holder)

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer().fixed(self.view, DIGEST_SIZE)
        _write_commitments(w, self.commitments)
        return w.fixed(self.output_key_commitment, DIGEST_SIZE).getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> DealInput:
        """Strict decoding."""
        r = Reader(data)
        view = r.fixed(DIGEST_SIZE)
        commitments = _read_commitments(r)
        key_commitment = r.fixed(DIGEST_SIZE)
        r.finish()
        return cls(view=view, commitments=commitments, output_key_commitment=key_commitment)


@dataclass(frozen=True, slots=True, kw_only=True)
class DealProof:
    """§5.4 — commitments to every holder's proof share, or a withdrawal of the input."""

    view: bytes
    withdrawn: bool
    commitments: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")
        _check_commitments(self.commitments)
        if self.withdrawn and self.commitments:
            raise InvalidValueError("a withdrawn dealer commits to no proof shares")

    def commitment_for(self, holder: int) -> bytes | None:
        """The commitment to ``holder``'s proof share, if any."""
        return dict(self.commitments).get(holder)

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer().fixed(self.view, DIGEST_SIZE).u8(int(self.withdrawn))
        _write_commitments(w, self.commitments)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> DealProof:
        """Strict decoding."""
        r = Reader(data)
        view = r.fixed(DIGEST_SIZE)
        flag = r.u8()
        if flag > 1:
            raise InvalidValueError("withdrawn must be 0 or 1")
        commitments = _read_commitments(r)
        r.finish()
        return cls(view=view, withdrawn=bool(flag), commitments=commitments)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class SharePayload:
    """§5.3 — plaintext of a private share: salt, the share (seed or vector), extra secret.

    ``extra`` is the dealer's output-key part in an input share and empty in a proof share.
    """

    salt: bytes = field(repr=False)
    form: ShareForm
    seed: bytes = field(repr=False, default=b"")
    vector: FieldVector | None = field(repr=False, default=None)
    extra: bytes = field(repr=False, default=b"")

    def __post_init__(self) -> None:
        if len(self.salt) != SECRET_SIZE:
            raise InvalidValueError("the share salt must be 32 bytes")
        if self.form is ShareForm.SEED and (
            len(self.seed) != SECRET_SIZE or self.vector is not None
        ):
            raise InvalidValueError("a seed share carries exactly a 32-byte seed")
        if self.form is ShareForm.VECTOR and (self.vector is None or self.seed):
            raise InvalidValueError("a vector share carries exactly a vector")
        if len(self.extra) not in (0, SECRET_SIZE):
            raise InvalidValueError("the extra secret must be empty or 32 bytes")

    def encode(self) -> bytes:
        """Canonical encoding (the commitment hashes exactly these bytes)."""
        w = Writer().fixed(self.salt, SECRET_SIZE).u8(self.form)
        if self.form is ShareForm.SEED:
            w.fixed(self.seed, SECRET_SIZE)
        else:
            assert self.vector is not None
            write_field_vector(w, self.vector)
        return w.u8(len(self.extra)).raw(self.extra).getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview, *, length: int) -> SharePayload:
        """Strict decoding; a vector share must have ``length`` entries."""
        r = Reader(data)
        salt = r.fixed(SECRET_SIZE)
        form_value = r.u8()
        try:
            form = ShareForm(form_value)
        except ValueError:
            raise InvalidValueError(f"unknown share form {form_value}") from None
        seed, vector = b"", None
        if form is ShareForm.SEED:
            seed = r.fixed(SECRET_SIZE)
        else:
            vector = read_field_vector(r, length)
        extra_len = r.u8()
        if extra_len not in (0, SECRET_SIZE):
            raise InvalidValueError("the extra secret must be empty or 32 bytes")
        extra = r.fixed(extra_len)
        r.finish()
        return cls(salt=salt, form=form, seed=seed, vector=vector, extra=extra)


# --------------------------------------------------------------------------- §5.5 challenges


@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """§5.5 — the sender's view of the previous phase and one revealed nonce."""

    view: bytes
    nonce: bytes = field(repr=False)

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")
        if len(self.nonce) != SECRET_SIZE:
            raise InvalidValueError("a nonce is 32 bytes")

    def encode(self) -> bytes:
        """Canonical encoding."""
        return self.view + self.nonce

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Challenge:
        """Strict decoding."""
        r = Reader(data)
        message = cls(view=r.fixed(DIGEST_SIZE), nonce=r.fixed(SECRET_SIZE))
        r.finish()
        return message


# --------------------------------------------------------------------------- §5.6 Verify


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class VerifyEntry:
    """One dealer as seen by the sending holder: its verifier share, or why there is none."""

    dealer: int
    status: ShareStatus
    values: FieldVector | None = field(repr=False, default=None)

    def __post_init__(self) -> None:
        if (self.status is ShareStatus.OK) != (self.values is not None):
            raise InvalidValueError("verifier values come exactly with status OK")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class Verify:
    """§5.6 — verifier shares for every dealer, and the sender's own reference (t+1 rows)."""

    view: bytes
    entries: tuple[VerifyEntry, ...]
    reference: NDArray[np.uint64] | None = field(repr=False, default=None)

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")
        _check_ids([e.dealer for e in self.entries], "verify entries")

    def entry_for(self, dealer: int) -> VerifyEntry | None:
        """The entry about ``dealer``, if any."""
        for entry in self.entries:
            if entry.dealer == dealer:
                return entry
        return None

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer().fixed(self.view, DIGEST_SIZE)

        def _entry(w: Writer, e: VerifyEntry) -> None:
            w.u16(e.dealer).u8(e.status)
            if e.values is not None:
                write_field_vector(w, e.values)

        w.seq(self.entries, MAX_PEERS, _entry)
        if self.reference is None:
            w.u8(0)
        else:
            w.u8(1).u16(self.reference.shape[0])
            write_field_vector(w, self.reference.reshape(-1))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview, *, verifier_length: int, rows: int) -> Verify:
        """Strict decoding: values have ``verifier_length`` entries, the reference ``rows``."""
        r = Reader(data)
        view = r.fixed(DIGEST_SIZE)

        def _entry(r: Reader) -> VerifyEntry:
            dealer = r.u16()
            status_value = r.u8()
            try:
                status = ShareStatus(status_value)
            except ValueError:
                raise InvalidValueError(f"unknown share status {status_value}") from None
            values = read_field_vector(r, verifier_length) if status is ShareStatus.OK else None
            return VerifyEntry(dealer=dealer, status=status, values=values)

        entries = tuple(r.seq(MAX_PEERS, _entry))
        reference = None
        flag = r.u8()
        if flag > 1:
            raise InvalidValueError("reference flag must be 0 or 1")
        if flag:
            count = r.u16()
            if count != rows:
                raise InvalidValueError(f"the reference has {count} rows, expected {rows}")
            reference = read_field_vector(r, rows * verifier_length).reshape(rows, verifier_length)
        r.finish()
        return cls(view=view, entries=entries, reference=reference)


# --------------------------------------------------------------------------- §5.7 Dispute


@dataclass(frozen=True, slots=True, kw_only=True)
class Reveal:
    """A dealer publishing one holder's share payloads (input, and proof unless empty)."""

    holder: int
    input_payload: bytes = field(repr=False)
    proof_payload: bytes = field(repr=False, default=b"")


@dataclass(frozen=True, slots=True, kw_only=True)
class Dispute:
    """§5.7 / §5.10 — the dealer's answers to disputes: the disputed holders' payloads."""

    view: bytes
    reveals: tuple[Reveal, ...]

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")
        _check_ids([rv.holder for rv in self.reveals], "reveals")

    def reveal_for(self, holder: int) -> Reveal | None:
        """The reveal of ``holder``'s payloads, if any."""
        for reveal in self.reveals:
            if reveal.holder == holder:
                return reveal
        return None

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer().fixed(self.view, DIGEST_SIZE)
        w.seq(
            self.reveals,
            MAX_PEERS,
            lambda w, rv: (
                w.u16(rv.holder)
                .var_bytes(rv.input_payload, _MAX_PAYLOAD)
                .var_bytes(rv.proof_payload, _MAX_PAYLOAD)
            ),
        )
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Dispute:
        """Strict decoding."""
        r = Reader(data)
        view = r.fixed(DIGEST_SIZE)
        reveals = r.seq(
            MAX_PEERS,
            lambda r: Reveal(
                holder=r.u16(),
                input_payload=r.var_bytes(_MAX_PAYLOAD),
                proof_payload=r.var_bytes(_MAX_PAYLOAD),
            ),
        )
        r.finish()
        return cls(view=view, reveals=tuple(reveals))


_MAX_PAYLOAD = 8 * MAX_VECTOR + 1024


# --------------------------------------------------------------------------- §5.8 Output


@dataclass(frozen=True, slots=True, kw_only=True)
class Output:
    """§5.8 — the sender's encrypted aggregate share (empty: it cannot compute one)."""

    view: bytes
    #: A read-only view into the decoded envelope when decoded (no copy of d·8 bytes).
    ciphertext: bytes | memoryview = field(repr=False, hash=False)

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")

    def encode(self) -> bytes:
        """Canonical encoding."""
        return (
            Writer()
            .fixed(self.view, DIGEST_SIZE)
            .var_bytes(bytes(self.ciphertext), _MAX_PAYLOAD)
            .getvalue()
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Output:
        """Strict decoding."""
        r = Reader(data)
        message = cls(view=r.fixed(DIGEST_SIZE), ciphertext=r.var_view(_MAX_PAYLOAD))
        r.finish()
        return message


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputVerify:
    """§5.9 — the sender's masked projections per accepted dealer, and its own reference."""

    view: bytes
    projections: tuple[tuple[int, int], ...]
    reference: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")
        _check_ids([d for d, _ in self.projections], "output projections")
        if any(not 0 <= v < gf.P for _, v in self.projections):
            raise InvalidValueError("a projection is not a reduced field element")
        if any(not 0 <= v < gf.P for v in self.reference):
            raise InvalidValueError("a reference value is not a reduced field element")

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer().fixed(self.view, DIGEST_SIZE)
        w.seq(self.projections, MAX_PEERS, lambda w, dv: w.u16(dv[0]).u64(dv[1]))
        w.seq(self.reference, MAX_PEERS, Writer.u64)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> OutputVerify:
        """Strict decoding."""
        r = Reader(data)
        view = r.fixed(DIGEST_SIZE)
        projections = tuple(r.seq(MAX_PEERS, lambda r: (r.u16(), r.u64())))
        reference = tuple(r.seq(MAX_PEERS, Reader.u64))
        r.finish()
        return cls(view=view, projections=projections, reference=reference)


@dataclass(frozen=True, slots=True, kw_only=True)
class Agree:
    """§5.12 — an agreement gate: the sender's view of the phase just decided (§4.5)."""

    view: bytes

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")

    def encode(self) -> bytes:
        """Canonical encoding."""
        return self.view

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Agree:
        """Strict decoding."""
        r = Reader(data)
        message = cls(view=r.fixed(DIGEST_SIZE))
        r.finish()
        return message


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirm:
    """§5.11 — the sender's keyed digest of (included dealers, aggregate)."""

    view: bytes
    digest: bytes

    def __post_init__(self) -> None:
        _check_digest(self.view, "the view")
        _check_digest(self.digest, "the result digest")

    def encode(self) -> bytes:
        """Canonical encoding."""
        return self.view + self.digest

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Confirm:
        """Strict decoding."""
        r = Reader(data)
        message = cls(view=r.fixed(DIGEST_SIZE), digest=r.fixed(DIGEST_SIZE))
        r.finish()
        return message
