"""Broker-side capture check: what a broker administrator sees of whole rounds.

A listener subscribed to ``#`` on the real Mosquitto records every frame of a round
(broadcasts, per-recipient messages, presence), reassembles the chunked messages and
looks for the secrets in them:

- **exact bytes**: windows of each site's update — as floats and as the fixed-point or
  field words the protocol works on — and every secret the sites drew from their
  randomness (seeds, keys, polynomial coefficients: each ≥ 16 bytes of
  ``random_bytes``) must not occur anywhere in the capture;
- **statistics** (``secagg``): the masked vectors on the wire are uniform (chi-square of
  their bytes) and independent of the inputs (correlation with the input, and the same
  distribution whether the inputs are zero or large).

The sites draw from seeded AES-CTR sources, so every run is the same run.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import aiomqtt
import numpy as np
import pytest
from numpy.typing import NDArray
from scipy import stats

from mpc_agg import field as gf
from mpc_agg.envelope import parse_envelope
from mpc_agg.randomness import DeterministicRandomSource
from peers.chunking import HEADER_SIZE, MAGIC, Reassembler
from peers.mqtt import MqttTransport
from peers.node import AggregateResult
from peers.transport import Transport, parse_topic, presence_topic
from protocols.robust.messages import Challenge
from protocols.robust.phases import MessageKind as RobustKind
from protocols.secagg.messages import MaskedInput, MessageKind
from tests.dp_support import dp_settings
from tests.runtime.nodes import FRAC_BITS, on_grid, run_round, running_nodes

HOST, PORT = "127.0.0.1", 1883


class RecordingSource(DeterministicRandomSource):
    """A seeded source that remembers every draw of 16 bytes or more (the secrets)."""

    __slots__ = ("draws",)

    def __init__(self, seed: str) -> None:
        super().__init__(seed)
        self.draws: list[bytes] = []

    def random_bytes(self, n: int) -> bytes:
        out = super().random_bytes(n)
        if n >= 16:
            self.draws.append(out)
        return out


@dataclass
class Capture:
    frames: list[tuple[str, bytes]] = field(default_factory=list)
    messages: list[bytes] = field(default_factory=list)

    def blobs(self) -> list[bytes]:
        return [payload for _, payload in self.frames] + self.messages

    def contains(self, needle: bytes) -> bool:
        return any(needle in blob for blob in self.blobs())


def _mqtt(federation: str, *, pad: bool = False) -> Callable[[int], Transport]:
    tag = os.urandom(4).hex()
    return lambda i: MqttTransport(
        host=HOST,
        port=PORT,
        client_id=f"{federation}-site-{i}-{tag}",
        presence_topic=presence_topic(federation, f"site-{i}"),
        chunk_size=16 * 1024 if pad else 64 * 1024,
        pad_frames=pad,
    )


async def _captured_round(
    updates: Sequence[NDArray[np.float64]],
    sources: Sequence[RecordingSource],
    *,
    pad: bool = False,
    **node_options: object,
) -> tuple[Capture, list[AggregateResult | BaseException]]:
    federation = f"fed-{os.urandom(4).hex()}"
    capture = Capture()
    async with aiomqtt.Client(HOST, PORT, identifier=f"admin-{federation}") as admin:
        await admin.subscribe("#")

        async def listen() -> None:
            async for message in admin.messages:
                topic = str(message.topic)
                parsed = parse_topic(topic)
                if parsed is not None and parsed.federation == federation and parsed.round_id:
                    assert isinstance(message.payload, bytes)
                    capture.frames.append((topic, message.payload))

        task = asyncio.create_task(listen())
        try:
            async with running_nodes(
                len(updates),
                _mqtt(federation, pad=pad),
                federation=federation,
                deadline=15.0,
                randomness=lambda i: sources[i],
                **node_options,  # type: ignore[arg-type]
            ) as nodes:
                results = await run_round(nodes, updates)
            await asyncio.sleep(0.5)  # the last frames reach the listener
        finally:
            task.cancel()
    reassembler = Reassembler(max_message_bytes=1 << 30, max_pending_total=1 << 12)
    for topic, payload in capture.frames:
        if payload.startswith(MAGIC):
            whole = reassembler.feed(topic, payload)
            if whole is not None:
                capture.messages.append(bytes(whole))
    return capture, results


def _windows(words: NDArray[np.generic], width: int = 4) -> list[bytes]:
    """Byte windows of ``width`` entries at the start, middle and end of ``words``."""
    raw = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape[0], -1)
    starts = (0, words.shape[0] // 2, words.shape[0] - width)
    return [raw[s : s + width].tobytes() for s in starts]


def _masked_vectors(capture: Capture, d: int, ring_bits: int) -> list[NDArray[np.generic]]:
    """The masked inputs on the wire, as the words that travelled (uint32 or uint64)."""
    vectors: list[NDArray[np.generic]] = []
    for message in capture.messages:
        envelope = parse_envelope(message, max_payload=1 << 30)
        if envelope.kind == MessageKind.MASKED_INPUT:
            decoded = MaskedInput.decode(envelope.payload, vector_length=d, ring_bits=ring_bits)
            vectors.append(decoded.masked)
    return vectors


def _robust_public_nonces(capture: Capture) -> set[bytes]:
    """The coin-flip nonces ``robust`` reveals by design (SPEC §5.5 and its leakage table)."""
    kinds = {
        RobustKind.WRAP_CHALLENGE,
        RobustKind.QUERY_CHALLENGE,
        RobustKind.OUTPUT_CHALLENGE,
    }
    nonces = set()
    for message in capture.messages:
        envelope = parse_envelope(message, max_payload=1 << 30)
        if envelope.kind in kinds:
            nonces.add(Challenge.decode(envelope.payload).nonce)
    return nonces


def _assert_nothing_in_clear(
    capture: Capture,
    updates: Sequence[NDArray[np.float64]],
    encodings: Sequence[NDArray[np.generic]],
    sources: Sequence[RecordingSource],
    *,
    public: Collection[bytes] = (),
) -> None:
    assert capture.frames, "the listener saw nothing: the check would prove nothing"
    for k, (update, encoded) in enumerate(zip(updates, encodings, strict=True)):
        for window in _windows(update) + _windows(encoded):
            assert not capture.contains(window), f"site-{k}'s update appears in clear"
    secrets = [draw for source in sources for draw in source.draws]
    assert len(secrets) >= 4 * len(sources)  # keys, seeds and coefficients were drawn
    leaked = [s.hex()[:16] for s in secrets if s not in public and capture.contains(s)]
    assert leaked == [], f"secret random draws appear in the capture: {leaked}"


@pytest.mark.asyncio
@pytest.mark.parametrize("private", [False, True], ids=["plain", "with-dp"])
async def test_secagg_round_shows_the_broker_no_update_share_or_seed(private: bool) -> None:
    n, d = 4, 20_000
    rng = np.random.default_rng(81)
    updates = [on_grid(rng, (d,)) for _ in range(n)]
    sources = [RecordingSource(f"capture-secagg-{private}-{i}") for i in range(n)]
    # With DP the noise stream's key is one of the recorded draws: it must not leak either.
    privacy = dp_settings(noise_multiplier=0.5, clip_norm=200.0) if private else None
    capture, results = await _captured_round(updates, sources, privacy=privacy)
    assert all(isinstance(r, AggregateResult) for r in results), results
    # Without DP the round sums in Z_2^32: the 32-bit words are looked for too.
    ring_bits = 64 if private else 32
    encodings = [np.round(u * 2**FRAC_BITS).astype(np.int64) for u in updates]
    encodings += [e.astype(np.int32) for e in encodings]
    _assert_nothing_in_clear(capture, updates * 2, encodings, sources)
    assert len(_masked_vectors(capture, d, ring_bits)) == n  # the masked inputs were captured


@pytest.mark.asyncio
async def test_reduce_scatter_round_shows_the_broker_no_update_or_seed() -> None:
    """SPEC §6.7 over the real broker: chunks to owners, chunk sums, checks — exact sums,
    and nothing of an update or a secret in the capture (chunks and sums are masked)."""
    n, d = 4, 20_001
    rng = np.random.default_rng(82)
    updates = [on_grid(rng, (d,)) for _ in range(n)]
    sources = [RecordingSource(f"capture-rs-{i}") for i in range(n)]
    capture, results = await _captured_round(updates, sources, reduce_scatter=True)
    assert all(isinstance(r, AggregateResult) for r in results), results
    expected = np.sum(updates, axis=0)
    for result in results:
        assert isinstance(result, AggregateResult)
        assert np.array_equal(result.total, expected)
    encodings = [np.round(u * 2**FRAC_BITS).astype(np.int64) for u in updates]
    encodings += [e.astype(np.int32) for e in encodings]
    _assert_nothing_in_clear(capture, updates * 2, encodings, sources)
    kinds = [parse_envelope(m, max_payload=1 << 30).kind for m in capture.messages]
    assert kinds.count(MessageKind.MASKED_CHUNK) == n * (n - 1)  # one per (sender, owner)
    assert kinds.count(MessageKind.CHUNK_SUM) == n
    assert kinds.count(MessageKind.MASKED_INPUT) == n  # headers: digests, no vector


@pytest.mark.asyncio
async def test_masked_vectors_are_uniform_and_independent_of_the_inputs() -> None:
    n, d = 3, 40_000
    ramp = np.linspace(-0.25, 0.25, d)
    regimes = {"zero": [np.zeros(d)] * n, "large": [ramp + 0.2 * i for i in range(n)]}
    tops: dict[str, NDArray[np.uint8]] = {}
    for name, updates in regimes.items():
        sources = [RecordingSource(f"capture-stats-{name}-{i}") for i in range(n)]
        capture, results = await _captured_round(updates, sources)
        assert all(isinstance(r, AggregateResult) for r in results), results
        vectors = _masked_vectors(capture, d, ring_bits=32)  # no DP: the round is in Z_2^32
        assert len(vectors) == n
        for vector in vectors:
            assert vector.dtype == np.uint32  # 4 bytes an entry on the wire
            as_bytes = vector.view(np.uint8).reshape(d, 4)
            for position in (0, 1, 3):  # low, middle and top byte of each word
                counts = np.bincount(as_bytes[:, position], minlength=256)
                assert stats.chisquare(counts).pvalue > 1e-4
            unit = vector.astype(np.float64) / 2.0**32
            if name == "large":
                for update in updates:
                    assert abs(np.corrcoef(unit, update)[0, 1]) < 5 / np.sqrt(d)
        tops[name] = np.concatenate([v.view(np.uint8).reshape(d, 4)[:, 3] for v in vectors])
    assert stats.ks_2samp(tops["zero"], tops["large"]).pvalue > 1e-3


@pytest.mark.asyncio
async def test_robust_round_shows_the_broker_no_update_share_or_seed() -> None:
    n, d = 3, 5_000
    rng = np.random.default_rng(82)
    updates = []
    for _ in range(n):
        values = rng.normal(0.0, 1.0, d)
        values *= 0.9 / np.linalg.norm(values)
        updates.append(np.trunc(values * 2**16) / 2**16)
    sources = [RecordingSource(f"capture-robust-{i}") for i in range(n)]
    capture, results = await _captured_round(updates, sources, protocol="robust", max_norm=1.0)
    assert all(isinstance(r, AggregateResult) for r in results), results
    # PeerNode may lower frac_bits to fit the norm bound: look for every candidate grid.
    encodings = [
        gf.from_signed(np.round(u * 2**bits).astype(np.int64))
        for bits in range(8, FRAC_BITS + 1)
        for u in updates
    ]
    public = _robust_public_nonces(capture)
    assert len(public) >= 2 * n  # each site revealed its challenge nonces, as designed
    _assert_nothing_in_clear(capture, updates * (FRAC_BITS - 7), encodings, sources, public=public)
    assert len(capture.messages) >= 10 * n  # the whole round went through the listener


@pytest.mark.asyncio
async def test_padded_frames_all_look_the_same_size_to_the_broker() -> None:
    """[hygiene] pad_frames: every frame of the round has one size; measured overhead."""
    n, d = 4, 20_000
    rng = np.random.default_rng(83)
    updates = [on_grid(rng, (d,)) for _ in range(n)]
    plain, _ = await _captured_round(updates, [RecordingSource(f"pad-off-{i}") for i in range(n)])
    padded, results = await _captured_round(
        updates, [RecordingSource(f"pad-on-{i}") for i in range(n)], pad=True
    )
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(updates))
    assert {len(payload) for _, payload in padded.frames} == {HEADER_SIZE + 16 * 1024}
    assert len({len(payload) for _, payload in plain.frames}) > 5  # sizes say a lot unpadded
    sent = sum(len(p) for _, p in padded.frames)
    unpadded = sum(len(p) for _, p in plain.frames)
    print(f"padding to 16 KiB frames: {sent} vs {unpadded} bytes ({sent / unpadded:.2f}x)")
    assert sent < 2 * unpadded  # the masked inputs dominate at this d
