"""Review: the reassembler's memory is bounded by the bytes received, not the bytes announced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpc_agg.envelope import EnvelopeContext, authenticate, parse_envelope, seal_envelope
from mpc_agg.errors import SignatureError
from peers.chunking import ChunkError, Reassembler, split
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


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads Linux's /proc")
def test_review_an_announced_size_is_not_held_in_memory_before_its_bytes_arrive() -> None:
    # A partial message's buffer is reserved at its first frame but committed only as its
    # bytes arrive: 64 first frames (~1 KB each) announcing 16 MB each must not make the
    # process resident for the 1 GB announced.
    big = bytes(16 << 20)
    firsts = [next(split(big, chunk_size=1024, message_id=os.urandom(16))) for _ in range(64)]
    del big
    reassembler = Reassembler(
        max_message_bytes=16 << 20, max_pending_per_source=64, max_pending_total=64
    )
    before = _resident_bytes()
    for k, frame in enumerate(firsts):
        assert reassembler.feed(f"fed/site-{k}", frame) is None
    grown = _resident_bytes() - before
    assert grown < 32 << 20, f"{grown} bytes resident for {64 * 1024} bytes received"
    assert reassembler.pending_bytes == 64 * 1024


def test_review_a_reassembled_message_is_one_writable_buffer_and_frames_are_not_kept() -> None:
    message = os.urandom(50_000)
    frames = list(split(message, chunk_size=4096, message_id=b"w" * 16))
    reassembler = Reassembler(max_message_bytes=1 << 20)
    outs = [reassembler.feed("fed/site-0", bytes(frame)) for frame in frames]
    whole = outs[-1]
    assert outs[:-1] == [None] * (len(frames) - 1)
    assert isinstance(whole, memoryview)
    assert not whole.readonly
    assert whole == message
    # one frame: plain bytes
    single = next(split(b"small", chunk_size=4096, message_id=b"s" * 16, pad=True))
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
