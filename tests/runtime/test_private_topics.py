"""Private-message topics (peers/transport.py) and their routing by the in-memory broker."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peers.memory import MemoryBroker, MemoryTransport
from peers.transport import (
    ParsedTopic,
    federation_filter,
    inbox_filter,
    message_topic,
    parse_topic,
    presence_topic,
    topic_matches,
)


def test_private_topic_has_six_levels_and_round_trips() -> None:
    topic = message_topic("fed-x", 7, "site-0", recipient="site-2")
    assert topic == "mpcagg/v1/fed-x/7/site-0/site-2"
    assert parse_topic(topic) == ParsedTopic("fed-x", 7, "site-0", "site-2")


def test_broadcast_and_presence_topics_are_unchanged_and_have_no_recipient() -> None:
    assert message_topic("fed-x", 7, "site-0") == "mpcagg/v1/fed-x/7/site-0"
    assert parse_topic("mpcagg/v1/fed-x/7/site-0") == ParsedTopic("fed-x", 7, "site-0", None)
    assert parse_topic(presence_topic("fed-x", "site-0")) == ParsedTopic("fed-x", None, "site-0")


@pytest.mark.parametrize("recipient", ["", "a/b", "+", "#", "site 1", "x" * 65, "site-1\n"])
def test_private_topic_refuses_a_recipient_that_is_not_one_segment(recipient: str) -> None:
    with pytest.raises(ValueError, match="recipient site name"):
        message_topic("fed-x", 7, "site-0", recipient=recipient)


@pytest.mark.parametrize(
    "topic",
    [
        "mpcagg/v1/fed-x/7/site-0/site-2/extra",  # seven levels
        "mpcagg/v1/fed-x/presence/site-0/site-2",  # presence is never private
        "mpcagg/v1/fed-x/7/site-0/",  # empty recipient
        "mpcagg/v1/fed-x/7/site-0/+",
        "mpcagg/v1/fed-x/7/site-0/site 2",
        "mpcagg/v1/fed-x/7/site-0/site-2\n",
        "mpcagg/v1/fed-x/²/site-0/site-2",
        "mpcagg/v1/fed-x/round/site-0/site-2",
        "mpcagg/v2/fed-x/7/site-0/site-2",
        "mpcagg/v1/fed x/7/site-0/site-2",
        "mpcagg/v1/fed-x/7//site-2",
    ],
)
def test_parse_topic_refuses_what_is_not_a_private_topic(topic: str) -> None:
    assert parse_topic(topic) is None


@given(st.lists(st.text(max_size=8), min_size=0, max_size=8))
def test_parse_topic_never_raises(parts: list[str]) -> None:
    for topic in ("/".join(parts), "/".join(["mpcagg", "v1", *parts])):
        parsed = parse_topic(topic)
        if parsed is not None:
            rebuilt = (
                presence_topic(parsed.federation, parsed.site)
                if parsed.round_id is None
                else message_topic(
                    parsed.federation, parsed.round_id, parsed.site, recipient=parsed.recipient
                )
            )
            assert parse_topic(rebuilt) == parsed


def test_federation_filter_matches_no_private_topic_not_even_ones_own() -> None:
    subscription = federation_filter("fed-x")
    assert topic_matches(subscription, message_topic("fed-x", 7, "site-0"))
    assert topic_matches(subscription, presence_topic("fed-x", "site-0"))
    for sender, recipient in (("site-0", "site-2"), ("site-2", "site-1"), ("site-1", "site-1")):
        private = message_topic("fed-x", 7, sender, recipient=recipient)
        assert not topic_matches(subscription, private)


def test_inbox_filter_matches_only_the_sites_own_private_messages() -> None:
    inbox = inbox_filter("fed-x", "site-1")
    assert inbox == "mpcagg/v1/fed-x/+/+/site-1"
    assert topic_matches(inbox, message_topic("fed-x", 7, "site-0", recipient="site-1"))
    assert topic_matches(inbox, message_topic("fed-x", 8, "site-2", recipient="site-1"))
    assert not topic_matches(inbox, message_topic("fed-x", 7, "site-0", recipient="site-2"))
    assert not topic_matches(inbox, message_topic("fed-y", 7, "site-0", recipient="site-1"))
    assert not topic_matches(inbox, message_topic("fed-x", 7, "site-1"))
    assert not topic_matches(inbox, presence_topic("fed-x", "site-1"))
    with pytest.raises(ValueError, match="site name"):
        inbox_filter("fed-x", "+")


@pytest.mark.asyncio
async def test_memory_broker_delivers_a_private_message_to_its_recipient_only() -> None:
    broker = MemoryBroker()
    sites = [MemoryTransport(broker, name=f"site-{k}") for k in range(3)]
    for k, site in enumerate(sites):
        await site.__aenter__()
        await site.subscribe(federation_filter("fed-x"), inbox_filter("fed-x", f"site-{k}"))
    private = message_topic("fed-x", 7, "site-0", recipient="site-2")
    broadcast = message_topic("fed-x", 7, "site-0")
    await sites[0].publish(private, b"share for site-2")
    await sites[0].publish(broadcast, b"commitments")
    for site in sites:
        await site.__aexit__(None, None, None)

    async def received(site: MemoryTransport) -> list[tuple[str, bytes]]:
        return [(d.topic, bytes(d.payload)) async for d in site.messages()]

    got = await asyncio.gather(*(received(site) for site in sites))
    assert got[2] == [(private, b"share for site-2"), (broadcast, b"commitments")]
    assert got[1] == [(broadcast, b"commitments")]
    assert sites[0].bytes_out == len(b"share for site-2") + len(b"commitments")
