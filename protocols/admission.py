"""What every protocol machine does with incoming bytes before its handlers see them.

Both machines (``secagg`` SPEC §4.3, ``robust`` SPEC §4.3) admit an envelope the same way —
strict parse, context, sender range, own echo, transport sender = signed sender, a known
kind with its phase and recipient, signature and payload digest, then duplicates and
equivocation — and route an admitted message by one transition table. A machine supplies
only what differs: its message kinds, the recipient a kind must carry, and what it does
about equivocation.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from mpc_agg.crypto import digests_equal
from mpc_agg.envelope import (
    Envelope,
    EnvelopeContext,
    authenticate,
    check_context,
    parse_envelope,
    wrong_round_only,
)
from mpc_agg.errors import DecodeError, SignatureError
from protocols.common import Effect, MessageIgnored, Roster


class Action(enum.Enum):
    """What a machine does with a message of a given kind in a given phase."""

    PROCESS = "process"
    BUFFER = "buffer"
    LATE = "late"
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Equivocated:
    """``sender`` signed two different messages of ``kind``: exclude it and abort."""

    sender: int
    kind: enum.IntEnum


def admit(
    data: bytes | memoryview,
    claimed: int | None,
    *,
    me: int,
    roster: Roster,
    context: EnvelopeContext,
    max_payload: int,
    kinds: Callable[[int], Any],
    recipient_of: Callable[[Any], int],
    seen: MutableMapping[tuple[Any, int], bytes],
    effects: list[Effect],
) -> Envelope | Equivocated | None:
    """Decode, bind and authenticate ``data``; detect duplicates and equivocation.

    ``claimed`` is the transport's (untrusted) sender. Returns the envelope to route,
    :class:`Equivocated` when the sender signed two different messages of one kind, or
    ``None`` when the message is dropped (the reason, if any, appended to ``effects``).
    ``kinds`` turns a kind number into the protocol's enum (``ValueError`` if unknown);
    ``recipient_of(kind)`` is the recipient a message of that kind must carry; ``seen``
    maps (kind, sender) to the digest of the message admitted before.
    """
    try:
        envelope = parse_envelope(data, max_payload=max_payload)
    except DecodeError as exc:
        effects.append(MessageIgnored(claimed, f"malformed message: {exc}"))
        return None
    mismatch = check_context(envelope, context)
    if mismatch is not None:
        scope = "round" if wrong_round_only(envelope, context) else "federation"
        effects.append(MessageIgnored(claimed, f"not for this {scope}: {mismatch}"))
        return None
    source = envelope.sender
    if source >= len(roster):
        effects.append(MessageIgnored(claimed, f"unknown sender id {source}"))
        return None
    if source == me:
        return None  # our own broadcast echoed back by the transport
    if claimed is not None and claimed != source:
        effects.append(
            MessageIgnored(claimed, f"transport says sender {claimed}, signature says {source}")
        )
        return None
    try:
        kind = kinds(envelope.kind)
    except ValueError:
        effects.append(MessageIgnored(source, f"unknown message kind {envelope.kind}"))
        return None
    if envelope.phase != kind.phase or envelope.recipient != recipient_of(kind):
        effects.append(MessageIgnored(source, f"{kind.name} with wrong phase or recipient"))
        return None
    try:
        authenticate(envelope, roster.verify_key(source))
    except SignatureError as exc:
        effects.append(MessageIgnored(source, f"forged or corrupted {kind.name}: {exc}"))
        return None
    digest = envelope.message_digest
    previous = seen.get((kind, source))
    if previous is not None:
        if digests_equal(previous, digest):
            effects.append(MessageIgnored(source, f"duplicate {kind.name}"))
            return None
        return Equivocated(source, kind)
    seen[(kind, source)] = digest
    return envelope


def not_routed(action: Action, kind: Any, source: int) -> MessageIgnored | None:
    """The ``MessageIgnored`` of a LATE or FINISHED message; ``None`` for the others."""
    if action is Action.FINISHED:
        return MessageIgnored(source, f"{kind.name} after the round ended")
    if action is Action.LATE:
        return MessageIgnored(source, f"late {kind.name}: phase {kind.phase.name} is closed")
    return None
