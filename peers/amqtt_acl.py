"""The ACL plugin of the demo's fallback broker (amqtt): every delivery is checked too.

amqtt's ``TopicAccessControlListPlugin`` checks a subscription by comparing its levels
with the allowed filters, so ``…/+/#`` passes ``…/+/+`` and would then receive six-level
topics: other sites' private messages. The plugin also checks every delivery against a
``receive_acl`` (as Mosquitto checks its ``read`` rules), but the configuration class of
amqtt 0.12 does not accept that key; this subclass adds it. amqtt imports this module by
its dotted path (:func:`peers.embedded_broker.broker_config`); nothing else does, so the
rest of ``peers`` never needs the optional ``amqtt`` package.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from amqtt.plugins.topic_checking import TopicAccessControlListPlugin


class FederationAclPlugin(TopicAccessControlListPlugin):  # type: ignore[misc]
    """amqtt's topic ACL with per-user publish, subscribe and receive (delivery) lists."""

    @dataclass
    class Config:
        """Username → allowed topic filters, for each action amqtt checks."""

        publish_acl: dict[str, list[str]] = field(default_factory=dict)
        subscribe_acl: dict[str, list[str]] = field(default_factory=dict)
        receive_acl: dict[str, list[str]] = field(default_factory=dict)
