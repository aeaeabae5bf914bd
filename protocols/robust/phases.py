"""Phases and message kinds of ``robust/3`` (SPEC §4).

Kept apart from the messages so that the runtime (deadlines, configuration) can name the
phases without importing the wire formats.
"""

from __future__ import annotations

import enum


class Phase(enum.IntEnum):
    """Machine phases (SPEC §4.1). Phases 11–14 run only when the output needs a check.

    The ``*_AGREE`` phases are agreement gates (§4.5): nothing that depends on the
    previous decisions is released before a quorum confirmed the same view of them.
    """

    IDLE = 0
    ADVERTISE = 1
    DEAL_INPUT = 2
    WRAP_CHALLENGE = 3
    DEAL_PROOF = 4
    QUERY_CHALLENGE = 5
    QUERY_AGREE = 6
    VERIFY = 7
    DISPUTE = 8
    OUTPUT_AGREE = 9
    OUTPUT = 10
    OUTPUT_CHALLENGE = 11
    CHECK_AGREE = 12
    OUTPUT_VERIFY = 13
    OUTPUT_DISPUTE = 14
    CONFIRM = 15
    DONE = 16
    ABORTED = 17


#: Phases that have a deadline (every phase a machine can wait in).
ACTIVE_PHASES = tuple(p for p in Phase if p not in (Phase.IDLE, Phase.DONE, Phase.ABORTED))
#: The agreement gates (§4.5).
AGREEMENT_PHASES = (Phase.QUERY_AGREE, Phase.OUTPUT_AGREE, Phase.CHECK_AGREE)


class MessageKind(enum.IntEnum):
    """Message kinds (SPEC §5). Private kinds are sent to one holder (``Send``)."""

    ADVERTISE = 1
    DEAL_INPUT = 2
    INPUT_SHARE = 3
    WRAP_CHALLENGE = 4
    DEAL_PROOF = 5
    PROOF_SHARE = 6
    QUERY_CHALLENGE = 7
    QUERY_AGREE = 8
    VERIFY = 9
    DISPUTE = 10
    OUTPUT_AGREE = 11
    OUTPUT = 12
    OUTPUT_CHALLENGE = 13
    CHECK_AGREE = 14
    OUTPUT_VERIFY = 15
    OUTPUT_DISPUTE = 16
    CONFIRM = 17

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
    MessageKind.QUERY_AGREE: Phase.QUERY_AGREE,
    MessageKind.VERIFY: Phase.VERIFY,
    MessageKind.DISPUTE: Phase.DISPUTE,
    MessageKind.OUTPUT_AGREE: Phase.OUTPUT_AGREE,
    MessageKind.OUTPUT: Phase.OUTPUT,
    MessageKind.OUTPUT_CHALLENGE: Phase.OUTPUT_CHALLENGE,
    MessageKind.CHECK_AGREE: Phase.CHECK_AGREE,
    MessageKind.OUTPUT_VERIFY: Phase.OUTPUT_VERIFY,
    MessageKind.OUTPUT_DISPUTE: Phase.OUTPUT_DISPUTE,
    MessageKind.CONFIRM: Phase.CONFIRM,
}
