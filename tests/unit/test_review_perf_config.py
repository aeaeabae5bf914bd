"""Review: ``[encoding] ring_bits = 32`` where the runtime refuses it (DP, robust).

``PeerNode`` refuses Z_2^32 with ``[dp]`` (DP rounds must stay in Z_2^64) and with
``robust``, but the configuration loader accepts the combination: the error surfaces only
when a node is built, as a ``ProtocolMisuseError`` instead of a ``ConfigError`` naming the
key (what every other inconsistent federation file gets, e.g. ``[dp]`` with robust).

Fixed: ``load_federation`` refuses ``ring_bits = 32`` with ``[dp]`` or robust; a regression.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mpc_agg.errors import ProtocolMisuseError
from peers.config import ConfigError, load_federation, load_site
from peers.init import init_federation
from peers.node import PeerNode

_DP = (
    "[dp]\nnoise_multiplier = 1.1\nclip_norm = 0.5\ndelta = 1e-5\nepsilon = 8.0\n"
    'unit = "example"\nsampling_probability = 0.1\nnoise_sites = 2\n\n[limits]\n'
)


def test_review_perf_ring_bits_32_with_dp_is_a_config_error(tmp_path: Path) -> None:
    init_federation(tmp_path, sites=3, broker_port=1883, federation_id="ring32dp")
    toml = tmp_path / "federation.toml"
    text = toml.read_text().replace("[encoding]\n", "[encoding]\nring_bits = 32\n")
    toml.write_text(text.replace("[limits]\n", _DP, 1))
    try:
        load_federation(toml)
    except ConfigError as exc:
        error = str(exc)
    else:
        error = ""
    if error:
        assert "ring_bits" in error
        return
    with pytest.raises(ProtocolMisuseError):  # what happens instead, at node creation
        PeerNode.from_config(load_site(tmp_path / "sites" / "site-0.toml"))
    pytest.fail("load_federation accepted [encoding] ring_bits = 32 together with [dp]")
