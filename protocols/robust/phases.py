"""Phases and message kinds of ``robust/1`` (SPEC §4).

Kept apart from the messages so that the runtime (deadlines, configuration) can name the
phases without importing the wire formats.
"""

from __future__ import annotations

import enum


class Phase(enum.IntEnum):
    """Machine phases (SPEC §4.1). Phases 9–11 run only when the output needs a check."""

    IDLE = 0
    ADVERTISE = 1
    DEAL_INPUT = 2
    WRAP_CHALLENGE = 3
    DEAL_PROOF = 4
    QUERY_CHALLENGE = 5
    VERIFY = 6
    DISPUTE = 7
    OUTPUT = 8
    OUTPUT_CHALLENGE = 9
    OUTPUT_VERIFY = 10
    OUTPUT_DISPUTE = 11
    CONFIRM = 12
    DONE = 13
    ABORTED = 14


#: Phases that have a deadline (every phase a machine can wait in).
ACTIVE_PHASES = tuple(p for p in Phase if p not in (Phase.IDLE, Phase.DONE, Phase.ABORTED))


class MessageKind(enum.IntEnum):
    """Message kinds (SPEC §5). Private kinds are sent to one holder (``Send``)."""

    ADVERTISE = 1
    DEAL_INPUT = 2
    INPUT_SHARE = 3
    WRAP_CHALLENGE = 4
    DEAL_PROOF = 5
    PROOF_SHARE = 6
    QUERY_CHALLENGE = 7
    VERIFY = 8
    DISPUTE = 9
    OUTPUT = 10
    OUTPUT_CHALLENGE = 11
    OUTPUT_VERIFY = 12
    OUTPUT_DISPUTE = 13
    CONFIRM = 14

    @property
    def phase(self) -> Phase:
        """The phase in which this kind is sent (its envelope's ``phase`` field)."""
        return _PHASE_OF[self]

    @property
    def private(self) -> bool:
        """True for the kinds addressed to one holder (encrypted shares)."""
        return self in (MessageKind.INPUT_SHARE, MessageKind.PROOF_SHARE)


_PHASE_OF = {
    MessageKind.ADVERTISE: Phase.ADVERTISE,
    MessageKind.DEAL_INPUT: Phase.DEAL_INPUT,
    MessageKind.INPUT_SHARE: Phase.DEAL_INPUT,
    MessageKind.WRAP_CHALLENGE: Phase.WRAP_CHALLENGE,
    MessageKind.DEAL_PROOF: Phase.DEAL_PROOF,
    MessageKind.PROOF_SHARE: Phase.DEAL_PROOF,
    MessageKind.QUERY_CHALLENGE: Phase.QUERY_CHALLENGE,
    MessageKind.VERIFY: Phase.VERIFY,
    MessageKind.DISPUTE: Phase.DISPUTE,
    MessageKind.OUTPUT: Phase.OUTPUT,
    MessageKind.OUTPUT_CHALLENGE: Phase.OUTPUT_CHALLENGE,
    MessageKind.OUTPUT_VERIFY: Phase.OUTPUT_VERIFY,
    MessageKind.OUTPUT_DISPUTE: Phase.OUTPUT_DISPUTE,
    MessageKind.CONFIRM: Phase.CONFIRM,
}
