"""Local API misuse raises (DESIGN §3): ProtocolMisuseError, or EncodingError for bad updates."""

from __future__ import annotations

import numpy as np
import pytest

from mpc_agg.crypto import SigningKey
from mpc_agg.errors import EncodingError, ProtocolMisuseError
from mpc_agg.randomness import DeterministicRandomSource
from protocols.common import PhaseStarted
from protocols.harness import make_roster
from protocols.secagg.machine import SecAggMachine, SecAggParams
from protocols.secagg.messages import Phase

LENGTH = 16


def _params(n: int = 3) -> tuple[SecAggParams, list[SigningKey]]:
    roster, keys = make_roster(n, seed="misuse")
    params = SecAggParams(
        federation="misuse", round_id=1, roster=roster, threshold=2, vector_length=LENGTH
    )
    return params, keys


def _machine(me: int = 0) -> SecAggMachine:
    params, keys = _params()
    return SecAggMachine(
        params, me=me, signing_key=keys[me], randomness=DeterministicRandomSource("misuse")
    )


def test_begin_twice_raises() -> None:
    machine = _machine()
    machine.begin(np.zeros(LENGTH, dtype=np.uint64))
    assert machine.phase is Phase.ADVERTISE_KEYS
    with pytest.raises(ProtocolMisuseError, match="begin\\(\\) called in phase ADVERTISE_KEYS"):
        machine.begin(np.zeros(LENGTH, dtype=np.uint64))
    assert machine.phase is Phase.ADVERTISE_KEYS


def test_begin_after_the_round_ended_raises() -> None:
    machine = _machine()
    machine.begin(np.zeros(LENGTH, dtype=np.uint64))
    machine.deadline(Phase.ADVERTISE_KEYS)  # nobody else advertised: aborts
    assert machine.phase is Phase.ABORTED
    with pytest.raises(ProtocolMisuseError, match="ABORTED"):
        machine.begin(np.zeros(LENGTH, dtype=np.uint64))


def test_signing_key_of_another_site_raises() -> None:
    params, keys = _params()
    with pytest.raises(ProtocolMisuseError, match="signing key does not match"):
        SecAggMachine(params, me=0, signing_key=keys[1], randomness=DeterministicRandomSource("x"))
    stranger = SigningKey.generate(DeterministicRandomSource("stranger"))
    with pytest.raises(ProtocolMisuseError, match="signing key does not match"):
        SecAggMachine(params, me=2, signing_key=stranger, randomness=DeterministicRandomSource("x"))


@pytest.mark.parametrize("me", [-1, 3, 1024])
def test_peer_index_out_of_range_raises(me: int) -> None:
    params, keys = _params()
    with pytest.raises(ProtocolMisuseError, match=f"peer index {me} is not in the roster"):
        SecAggMachine(params, me=me, signing_key=keys[0], randomness=DeterministicRandomSource("x"))


@pytest.mark.parametrize(
    ("update", "match"),
    [
        (np.zeros(LENGTH, dtype=np.float64), "dtype uint64"),
        (np.zeros(LENGTH, dtype=np.int64), "dtype uint64"),
        (np.zeros(LENGTH, dtype=np.uint32), "dtype uint64"),
        (np.zeros(LENGTH - 1, dtype=np.uint64), f"{LENGTH - 1} entries, expected {LENGTH}"),
        (np.zeros(LENGTH + 1, dtype=np.uint64), f"{LENGTH + 1} entries, expected {LENGTH}"),
        (np.zeros((2, LENGTH // 2), dtype=np.uint64), "1-D"),
        ([0] * LENGTH, "numpy array"),
    ],
    ids=["float64", "int64", "uint32", "short", "long", "2-D", "list"],
)
def test_begin_with_a_bad_update_raises_encoding_error(update: object, match: str) -> None:
    machine = _machine()
    with pytest.raises(EncodingError, match=match):
        machine.begin(update)  # type: ignore[arg-type]
    # nothing happened: the machine can still start properly
    assert machine.phase is Phase.IDLE
    effects = machine.begin(np.zeros(LENGTH, dtype=np.uint64))
    assert effects[0] == PhaseStarted(Phase.ADVERTISE_KEYS)


def test_begin_copies_the_update() -> None:
    machine = _machine()
    update = np.arange(LENGTH, dtype=np.uint64)
    machine.begin(update)
    update[:] = 0  # the caller reusing its buffer must not change what is aggregated
    assert machine._input is not None
    assert machine._input.tolist() == list(range(LENGTH))
