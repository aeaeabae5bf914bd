"""The ``Transport`` protocol every runtime transport implements, and the topic scheme.

A transport is an async context manager that publishes and receives whole messages
(bytes) on topics. Chunking, reconnection and presence are the transport's business; the
node above it sees complete messages only. Identity never comes from a topic: the protocol
machine verifies the signature inside every message (DESIGN §3).

Topic scheme (one function builds each name, one parses them)::

    mpcagg/v1/{federation}/{round}/{site}              a round's broadcasts, by sender
    mpcagg/v1/{federation}/{round}/{site}/{recipient}  private messages, to one recipient
    mpcagg/v1/{federation}/presence/{site}             retained "online|offline <session>"

A site subscribes to two filters: :func:`federation_filter` (``…/{federation}/+/+``:
broadcasts and presence, five levels; MQTT's ``+`` is exactly one level, so it never matches
a six-level private topic) and :func:`inbox_filter` (``…/{federation}/+/+/{site}``: the
private messages addressed to it). The broker's ACL lets a site read nothing else
(:mod:`peers.init`), so a private message travels to its recipient only; its content is
end-to-end encrypted anyway.

Presence payloads are a status word, optionally followed by a space and the announcing
process's session id (random, fresh per process), so a peer can tell a live session from a
retained announcement left by a dead one (see :class:`peers.mqtt.MqttTransport`).

Topics, site names, error messages and protocol reasons may carry text chosen by another
party; :func:`printable` makes such text safe for a log line or a dictionary key.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, Self

from mpc_agg.errors import MpcAggError

PREFIX = "mpcagg/v1"
PRESENCE = "presence"
ONLINE = b"online"
OFFLINE = b"offline"
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,64}")  # used with fullmatch: "$" allows a "\n"
_ROUND = re.compile(r"[0-9]{1,20}")  # ASCII only: str.isdigit() accepts "²", int() refuses it


def printable(value: object, limit: int = 200) -> str:
    r"""``str(value)`` made fit for one log line or dictionary key.

    Control and other unprintable characters are escaped (a newline becomes the two
    characters ``\n``) and at most ``limit`` characters are kept (then ``…``), so text
    chosen by another party can neither forge log lines nor grow without bound.
    """
    text = str(value)
    if len(text) <= limit and text.isprintable():
        return text
    escaped = "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode() for c in text[:limit]
    )
    return escaped[:limit] + "…" if len(text) > limit or len(escaped) > limit else escaped


def split_presence(payload: bytes) -> tuple[bytes, bytes]:
    """``(status, session)`` of a presence payload; ``session`` is empty when absent."""
    status, _, session = payload.partition(b" ")
    return status, session


class TransportError(MpcAggError):
    """The transport cannot deliver (broker unreachable, refused, gone for too long)."""


class BrokerRefusedError(TransportError):
    """The broker refused this site's login for good, so it is raised at once.

    Credentials, a revoked account, a banned client or an unsupported protocol version:
    retrying the same login cannot help.
    """


@dataclass(frozen=True, slots=True)
class Delivery:
    """One complete incoming message.

    ``retained`` is true when the broker replayed a retained message on subscribing (it
    may have been published long ago, by a process that is gone), false when the message
    was published while we were subscribed.
    """

    topic: str
    #: a message of several frames arrives as a writable view of its reassembly buffer
    payload: bytes | memoryview = field(repr=False)
    retained: bool = False


class Transport(Protocol):
    """Publish and receive whole messages on topics."""

    async def __aenter__(self) -> Self:
        """Connect."""
        ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect."""
        ...

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish one message (QoS 1: at least once)."""
        ...

    async def subscribe(self, topic_filter: str, *more: str) -> None:
        """Receive messages on ``topic_filter`` and ``more`` (MQTT wildcards ``+``, ``#``).

        A transport that announces presence does so once every filter of the call is in
        place, so a peer that sees the announcement may send to any of them.
        """
        ...

    def messages(self) -> AsyncIterator[Delivery]:
        """Complete messages, in arrival order, for every subscription."""
        ...


def check_segment(value: str, what: str) -> str:
    """Validate a topic segment (federation id or site name)."""
    if not _SEGMENT.fullmatch(value):
        raise ValueError(f"{what} {value!r} must match [A-Za-z0-9._-]{{1,64}}")
    return value


def message_topic(
    federation: str, round_id: int, site: str, *, recipient: str | None = None
) -> str:
    """Topic on which ``site`` publishes its messages of ``round_id``.

    Without ``recipient``: the round's broadcast topic of ``site`` (every peer reads it).
    With ``recipient``: the topic of a private message from ``site`` to ``recipient``,
    which only ``recipient`` may read.
    """
    check_segment(federation, "federation id")
    check_segment(site, "site name")
    topic = f"{PREFIX}/{federation}/{round_id}/{site}"
    if recipient is None:
        return topic
    return f"{topic}/{check_segment(recipient, 'recipient site name')}"


def presence_topic(federation: str, site: str) -> str:
    """Retained presence topic of ``site``."""
    return f"{PREFIX}/{check_segment(federation, 'federation id')}/{PRESENCE}/{site}"


def federation_filter(federation: str) -> str:
    """Subscription covering every round's broadcasts and the presence of a federation.

    Five levels exactly: it matches no private (six-level) topic, not even one addressed
    to the subscriber (that is :func:`inbox_filter`'s job).
    """
    return f"{PREFIX}/{check_segment(federation, 'federation id')}/+/+"


def inbox_filter(federation: str, site: str) -> str:
    """Subscription covering the private messages addressed to ``site``, every round."""
    check_segment(federation, "federation id")
    return f"{PREFIX}/{federation}/+/+/{check_segment(site, 'site name')}"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    """A topic of our scheme.

    ``round_id`` is None for presence topics; ``site`` is the sender (or the announcing
    site); ``recipient`` is the addressee of a private message, None for a broadcast or
    presence.
    """

    federation: str
    round_id: int | None
    site: str
    recipient: str | None = None


def parse_topic(topic: str) -> ParsedTopic | None:
    """Parse a topic of our scheme; None for anything else (never raises)."""
    parts = topic.split("/")
    if len(parts) not in (5, 6) or f"{parts[0]}/{parts[1]}" != PREFIX:
        return None
    federation, middle, site = parts[2], parts[3], parts[4]
    recipient = parts[5] if len(parts) == 6 else None
    if not (_SEGMENT.fullmatch(federation) and _SEGMENT.fullmatch(site)):
        return None
    if recipient is not None and not _SEGMENT.fullmatch(recipient):
        return None
    if middle == PRESENCE:
        # presence is broadcast only: a six-level topic under it is not ours
        return ParsedTopic(federation, None, site) if recipient is None else None
    if not _ROUND.fullmatch(middle):
        return None
    return ParsedTopic(federation, int(middle), site, recipient)


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (``+`` one level, ``#`` the rest)."""
    filter_parts = topic_filter.split("/")
    topic_parts = topic.split("/")
    for i, part in enumerate(filter_parts):
        if part == "#":
            return True
        if i >= len(topic_parts):
            return False
        if part not in ("+", topic_parts[i]):
            return False
    return len(filter_parts) == len(topic_parts)
