"""A pure-Python fallback broker (amqtt) for the demo on machines without Mosquitto.

``python -m peers.embedded_broker FEDERATION_DIR`` serves the federation that
``mpc-agg init`` wrote, with the same guarantees the generated Mosquitto setup gives
(DESIGN §6): a TLS listener with the federation's server certificate, one password per
site (argon2 hashes, written next to the Mosquitto files at start), an ACL that lets a
site publish only under its own sender id and receive only the federation's broadcasts,
presence and its own inbox of private messages (checked at every delivery, as Mosquitto
does: :mod:`peers.amqtt_acl`), and no anonymous clients. amqtt speaks
MQTT 3.1.1 only, so the federation must say ``mqtt_version = "3.1.1"`` in ``[broker]``
(``mpc-agg demo`` does this when it falls back). For production use Mosquitto.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peers.config import load_federation
from peers.transport import PREFIX, PRESENCE


def amqtt_available() -> bool:
    """True when the optional ``amqtt`` package can be imported."""
    try:
        import amqtt.broker  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def broker_config(directory: Path) -> dict[str, Any]:
    """The amqtt configuration for the federation in ``directory`` (writes the password file)."""
    from pwdlib import PasswordHash  # noqa: PLC0415 - optional dependency of amqtt
    from pwdlib.hashers.argon2 import Argon2Hasher  # noqa: PLC0415

    directory = Path(directory).absolute()
    federation = load_federation(directory / "federation.toml")
    broker_dir, site_dir = directory / "broker", directory / "sites"
    hasher = PasswordHash((Argon2Hasher(),))
    root = f"{PREFIX}/{federation.id}"
    lines, publish, subscribe, receive = [], {}, {}, {}
    for entry in federation.roster.entries:
        name = entry.name
        password = (site_dir / f"{name}.password").read_text(encoding="ascii").strip()
        lines.append(f"{name}:{hasher.hash(password)}")
        publish[name] = [f"{root}/+/{name}", f"{root}/{PRESENCE}/{name}", f"{root}/+/{name}/+"]
        subscribe[name] = [f"{root}/#"]
        # checked for each delivery: five-level topics and the site's own inbox only
        receive[name] = [f"{root}/+/+", f"{root}/+/+/{name}"]
    password_file = broker_dir / "amqtt.passwd"
    password_file.touch(mode=0o600, exist_ok=True)
    password_file.write_text("\n".join(lines) + "\n", encoding="ascii")
    host, port = federation.broker.host, federation.broker.port
    return {
        "listeners": {
            "default": {
                "type": "tcp",
                "bind": f"{host}:{port}",
                "ssl": federation.broker.tls,
                "certfile": str(broker_dir / "server.crt") if federation.broker.tls else None,
                "keyfile": str(broker_dir / "server.key") if federation.broker.tls else None,
            }
        },
        "plugins": {
            "amqtt.plugins.authentication.FileAuthPlugin": {"password_file": str(password_file)},
            "peers.amqtt_acl.FederationAclPlugin": {
                "publish_acl": publish,
                "subscribe_acl": subscribe,
                "receive_acl": receive,
            },
        },
    }


async def serve(directory: Path, *, ready: asyncio.Event | None = None) -> None:
    """Run the broker until cancelled (or SIGTERM/SIGINT when run as a program)."""
    from amqtt.broker import Broker  # noqa: PLC0415 - optional dependency

    broker = Broker(broker_config(directory))
    await broker.start()
    if ready is not None:
        ready.set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await broker.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``python -m peers.embedded_broker FEDERATION_DIR``."""
    parser = argparse.ArgumentParser(prog="python -m peers.embedded_broker")
    parser.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if not amqtt_available():
        print("embedded broker: the amqtt package is not installed", file=sys.stderr)
        return 2
    asyncio.run(serve(args.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
