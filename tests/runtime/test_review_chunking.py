"""Review: the reassembler's memory is bounded by the bytes received, not the bytes announced."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from mpc_agg.envelope import EnvelopeContext, authenticate, parse_envelope, seal_envelope
from mpc_agg.errors import SignatureError
from peers.chunking import (
    _HEADER,
    HEADER_SIZE,
    MAGIC,
    MIN_BUFFERED_CHUNK,
    REGION,
    VERSION,
    ChunkError,
    Reassembler,
    split,
)
from peers.config import (
    BrokerConfig,
    Deadlines,
    EncodingConfig,
    FederationConfig,
    Limits,
    SiteConfig,
)
from peers.node import PeerNode
from protocols.harness import make_roster


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _frame(message_id: bytes, index: int, count: int, chunk_size: int, total: int) -> bytes:
    """Frame ``index`` of a message that is never sent whole: ``chunk_size`` bytes of 1s."""
    data = b"\x01" * min(chunk_size, total - index * chunk_size)
    return (
        _HEADER.pack(MAGIC, VERSION, message_id, index, count, chunk_size, total, bytes(32)) + data
    )


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
@pytest.mark.parametrize("chunk_size", [1, 1024, MIN_BUFFERED_CHUNK])
@pytest.mark.parametrize("stride", [0, REGION])
def test_review_a_partial_message_holds_about_the_bytes_received_not_the_bytes_announced(
    chunk_size: int, stride: int
) -> None:
    # Four sources × four partial messages announcing 256 MB each (4 GB in all), fed either
    # their first frames only (stride 0) or one frame every 2 MiB of the announced size. A
    # frame commits at most a huge page of a reassembly buffer, and a message whose frames
    # are scattered is dropped: what is resident stays about the bytes received.
    total = 256 << 20
    count = -(-total // chunk_size)
    step = max(1, stride // chunk_size)
    indices = [0] if stride == 0 else list(range(0, count, step))
    reassembler = Reassembler(max_message_bytes=total, verify_digest=False)
    before = _resident_bytes()
    received = refused = 0
    reasons: set[str] = set()
    for source in range(4):
        for message in range(4):
            message_id = bytes([source, message]) * 8
            for index in indices:
                frame = _frame(message_id, index, count, chunk_size, total)
                try:
                    out = reassembler.feed(f"fed/site-{source}", frame)
                except ChunkError as exc:
                    reasons.add(str(exc).split(" over ")[0].split()[-1])
                    refused += 1
                    continue
                assert out is None
                received += len(frame) - HEADER_SIZE
    grown = _resident_bytes() - before
    buffered = chunk_size >= MIN_BUFFERED_CHUNK
    assert (refused > 0) == (buffered and stride > 0)
    assert reasons <= {"scattered"}  # "frames of a …-byte message scattered over it: …"
    assert reassembler.pending_bytes <= received
    # per live partial: twice its bytes and two huge pages; small frames: their bytes and
    # bookkeeping; plus slack for the interpreter
    allowance = 2 * received + 16 * 2 * REGION + 200 * len(indices) * 16 + (8 << 20)
    assert grown < allowance, f"{grown} bytes resident for {received} bytes received"
    assert grown < 128 << 20  # not the 4 GB announced


def test_review_a_buffer_that_cannot_be_reserved_drops_the_frame_not_the_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(*args: object, **kwargs: object) -> NDArray[np.uint8]:
        raise MemoryError("Unable to allocate 40.0 GiB for an array")  # as numpy says it

    reassembler = Reassembler(max_message_bytes=1 << 40)
    monkeypatch.setattr(np, "empty", refuse)
    frame = _frame(b"h" * 16, 0, 1 << 20, MIN_BUFFERED_CHUNK, MIN_BUFFERED_CHUNK << 20)
    with pytest.raises(ChunkError, match="cannot reserve"):
        reassembler.feed("fed/site-0", frame)
    assert reassembler.pending_bytes == 0
    monkeypatch.undo()
    # the reassembler goes on: a small message still comes through
    single = next(split(b"small", chunk_size=4096, message_id=b"s" * 16))
    assert reassembler.feed("fed/site-0", single) == b"small"


@pytest.mark.parametrize("chunk_size", [MIN_BUFFERED_CHUNK, MIN_BUFFERED_CHUNK - 1])
def test_review_large_frames_reassemble_in_one_writable_buffer_small_ones_as_bytes(
    chunk_size: int,
) -> None:
    message = os.urandom(3 * chunk_size + 5)
    frames = list(split(message, chunk_size=chunk_size, message_id=b"w" * 16))
    reassembler = Reassembler(max_message_bytes=1 << 20)
    outs = [reassembler.feed("fed/site-0", bytes(frame)) for frame in frames[::-1]]
    whole = outs[-1]
    assert outs[:-1] == [None] * (len(frames) - 1)
    assert whole == message
    if chunk_size >= MIN_BUFFERED_CHUNK:
        assert isinstance(whole, memoryview)
        assert not whole.readonly
    else:
        assert type(whole) is bytes
    # one frame: plain bytes
    single = next(split(b"small", chunk_size=chunk_size, message_id=b"s" * 16, pad=True))
    assert reassembler.feed("fed/site-0", single) == b"small"


def test_review_reassembly_out_of_order_with_redelivery_and_a_bad_digest() -> None:
    message = os.urandom(10_000)
    frames = list(split(message, chunk_size=999, message_id=b"m" * 16))
    reassembler = Reassembler(max_message_bytes=1 << 20)
    out = None
    for frame in [*frames[::-1][:-1], frames[3], frames[0]]:
        out = reassembler.feed("fed/site-0", frame)
    assert out == message
    assert reassembler.pending_bytes == 0
    tampered = [bytearray(f) for f in split(message, chunk_size=4096, message_id=b"n" * 16)]
    tampered[1][-1] ^= 1
    assert reassembler.feed("fed/site-0", bytes(tampered[0])) is None
    assert reassembler.feed("fed/site-0", bytes(tampered[1])) is None
    with pytest.raises(ChunkError, match="digest"):
        reassembler.feed("fed/site-0", bytes(tampered[2]))


def test_review_a_large_federation_reassembles_every_peers_interleaved_message(
    tmp_path: Path,
) -> None:
    n = 100  # every peer's masked input arrives as chunks interleaved with the others'
    roster, keys = make_roster(n)
    broker = BrokerConfig(host="127.0.0.1", port=1883, tls=False, ca_file=None)
    federation = FederationConfig(
        id="fed-big",
        protocol="secagg",
        threshold=67,
        broker=broker,
        deadlines=Deadlines(),
        encoding=EncodingConfig(),
        limits=Limits(chunk_size=1000),
        roster=roster,
        path=tmp_path / "federation.toml",
    )
    site = SiteConfig(
        federation=federation,
        name="site-0",
        index=0,
        signing_key=keys[0],
        broker=broker,
        audit_log=tmp_path / "site-0.audit.jsonl",
        path=tmp_path / "site-0.toml",
    )
    site.audit_log.touch()  # as init creates it
    node = PeerNode.from_config(site)
    reassembler = node._transport._reassembler  # type: ignore[attr-defined]
    assert isinstance(reassembler, Reassembler)
    messages = {k: os.urandom(2500) for k in range(1, n)}
    frames = {
        k: list(split(m, chunk_size=1000, message_id=os.urandom(16))) for k, m in messages.items()
    }
    done = {}
    for index in range(3):
        for k in range(1, n):
            whole = reassembler.feed(f"fed-big/site-{k}", frames[k][index])
            if whole is not None:
                done[k] = whole
    assert done == messages


def test_without_the_digest_pass_a_tampered_envelope_is_still_refused_by_its_signature() -> None:
    """A node's transport skips reassembly's SHA-256 (peers/chunking.py).

    The envelope's signature, which covers the payload's digest, refuses what the digest
    would have.
    """
    roster, keys = make_roster(2)
    context = EnvelopeContext(
        protocol="secagg/1", federation="fed", roster_digest=roster.digest, round_id=1
    )
    sealed = seal_envelope(
        context,
        phase=3,
        kind=3,
        sender=0,
        recipient=0xFFFF,
        payload=os.urandom(9_000),
        signing_key=keys[0],
    )
    frames = [bytearray(f) for f in split(sealed, chunk_size=4096, message_id=b"t" * 16)]
    frames[1][-1] ^= 1  # one bit of the payload, in flight
    reassembler = Reassembler(max_message_bytes=1 << 20, verify_digest=False)
    out = None
    for frame in frames:
        out = reassembler.feed("fed/site-0", bytes(frame))
    assert out is not None
    assert out != sealed
    envelope = parse_envelope(out, max_payload=1 << 20)
    with pytest.raises(SignatureError):
        authenticate(envelope, roster.verify_key(0))
