"""Hypothesis fuzzing of ``SecAggMachine.receive`` in every phase.

Three kinds of input: arbitrary bytes; real messages with bit flips, truncations and
extensions; and payloads re-signed with a roster member's key (random, mutated from real
payloads, or structurally valid with random contents), so they pass authentication and
reach the handlers. Properties:

* ``receive`` never raises (a remote peer's bad bytes are data, not a crash);
* it returns only protocol effects; anything attributable is ``MessageIgnored``,
  ``PeerExcluded`` or ``RoundAborted`` (progress effects appear only when the message
  legitimately completes a phase);
* after the honest rest of the round (and deadlines), the machine has finished and, if it
  produced a result, the result is the exact sum of the inputs it says it included.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.common import (
    AggregateReady,
    Broadcast,
    Effect,
    MessageIgnored,
    PeerExcluded,
    PhaseStarted,
    RoundAborted,
)
from protocols.harness import payload_of, resign
from protocols.secagg.messages import (
    BROADCAST_ROUND_KINDS,
    BROADCAST_ROUND_PHASES,
    SHARE_CIPHERTEXT_SIZE,
    ConsistencyCheck,
    MaskedInput,
    MessageKind,
    Phase,
    ResultDigest,
    ShareKeys,
    Unmask,
)
from tests.protocol.support import (
    Transcript,
    drive_to,
    finish,
    plaintext_sum,
    record_transcript,
    run_steps,
)

FUZZ = settings(
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
REMOTE_OUTCOMES = (MessageIgnored, PeerExcluded, RoundAborted)
PROGRESS = (PhaseStarted, Broadcast, AggregateReady)


@cache
def _transcript() -> Transcript:
    return record_transcript(seed=13, vector_length=8)


def _feed(phase: Phase, sender: int | None, data: bytes) -> None:
    transcript = _transcript()
    machine, remaining = drive_to(transcript, phase)
    before = machine.phase
    effects: list[Effect] = machine.receive(sender, data)
    for effect in effects:
        assert isinstance(effect, REMOTE_OUTCOMES + PROGRESS), effect
    if not any(isinstance(e, PROGRESS) for e in effects):
        # nothing progressed: the phase is unchanged unless the message ended the round
        assert machine.phase in (before, Phase.ABORTED)
    effects += run_steps(transcript, machine, remaining)
    effects += finish(machine)
    assert machine.finished
    results = [e for e in effects if isinstance(e, AggregateReady)]
    aborts = [e for e in effects if isinstance(e, RoundAborted)]
    assert len(results) + len(aborts) <= 1 or phase in (Phase.DONE, Phase.ABORTED)
    for result in results:
        assert set(result.included) <= {0, 1, 2}
        assert np.array_equal(result.total, plaintext_sum(transcript.inputs, result.included))


PHASES = st.sampled_from(list(BROADCAST_ROUND_PHASES))
KINDS = st.sampled_from(list(BROADCAST_ROUND_KINDS))


@st.composite
def _mutated(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "overwrite"]))
        if op == "flip" and data:
            position = draw(st.integers(0, len(data) - 1))
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=64))
        elif data:
            position = draw(st.integers(0, len(data) - 1))
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[position : position + len(chunk)] = chunk
    return bytes(data)


@given(phase=PHASES, sender=st.one_of(st.none(), st.integers(0, 6)), data=st.binary(max_size=600))
@FUZZ
def test_random_bytes(phase: Phase, sender: int | None, data: bytes) -> None:
    _feed(phase, sender, data)


@given(phase=PHASES, kind=KINDS, origin=st.sampled_from([1, 2]), data=st.data())
@FUZZ
def test_mutated_real_messages(
    phase: Phase, kind: MessageKind, origin: int, data: st.DataObject
) -> None:
    original = _transcript().messages[(origin, kind)]
    mutated = data.draw(_mutated(original))
    claimed = data.draw(st.sampled_from([origin, None, 3]))
    _feed(phase, claimed, mutated)


@st.composite
def _structured_payload(draw: st.DrawFn, kind: MessageKind) -> bytes:
    """A payload that decodes as ``kind`` but carries random (often wrong) contents."""
    transcript = _transcript()
    peers = st.lists(st.integers(0, 5), unique=True, max_size=5).map(sorted)
    real = payload_of(transcript.messages[(draw(st.sampled_from([1, 2])), kind)])
    if kind is MessageKind.SHARE_KEYS:
        message = ShareKeys.decode(real)
        cts = [
            (r, draw(st.binary(min_size=SHARE_CIPHERTEXT_SIZE, max_size=SHARE_CIPHERTEXT_SIZE)))
            for r in draw(peers)
        ]
        commitments = list(message.self_mask_commitments)
        return ShareKeys(
            mask_key_commitments=message.mask_key_commitments,
            self_mask_commitments=tuple(draw(st.permutations(commitments))),
            ciphertexts=tuple(cts) if draw(st.booleans()) else message.ciphertexts,
        ).encode()
    if kind is MessageKind.MASKED_INPUT:
        masked = np.array(
            draw(st.lists(st.integers(0, (1 << 64) - 1), min_size=8, max_size=8)),
            dtype=np.uint64,
        )
        return MaskedInput(mask_set=tuple(draw(peers)), complaints=(), masked=masked).encode()
    if kind is MessageKind.CONSISTENCY_CHECK:
        view = ConsistencyCheck.decode(real)
        digests = [d for _, d in (*view.advertised, *view.dealers, *view.inputs)]
        digest = st.one_of(st.sampled_from(digests), st.binary(min_size=32, max_size=32))
        return ConsistencyCheck(
            advertised=tuple((p, draw(digest)) for p in draw(peers)),
            dealers=tuple((p, draw(digest)) for p in draw(peers)),
            inputs=tuple((p, draw(digest)) for p in draw(peers)),
        ).encode()
    if kind is MessageKind.UNMASK:
        cts = [(r, draw(st.binary(max_size=120))) for r in draw(peers)]
        return Unmask(ciphertexts=tuple(cts)).encode()
    if kind is MessageKind.RESULT_DIGEST:
        return ResultDigest(digest=draw(st.binary(min_size=32, max_size=32))).encode()
    return draw(_mutated(real))


@given(phase=PHASES, kind=KINDS, signer=st.sampled_from([1, 2, 3]), data=st.data())
@FUZZ
def test_validly_signed_bad_payloads(
    phase: Phase, kind: MessageKind, signer: int, data: st.DataObject
) -> None:
    transcript = _transcript()
    how = data.draw(st.sampled_from(["random", "mutated", "structured"]))
    if how == "random":
        payload = data.draw(st.binary(max_size=400))
    elif how == "mutated":
        payload = data.draw(_mutated(payload_of(transcript.messages[(1, kind)])))
    else:
        payload = data.draw(_structured_payload(kind))
    envelope = resign(transcript.fresh(signer), kind, payload)
    _feed(phase, signer, envelope)
