"""The floor benchmark (benchmarks/floor.py) runs and adds up what it reports."""

from __future__ import annotations

import math

from benchmarks.floor import secagg_floor


def test_floor_reports_every_part_and_their_sum() -> None:
    floor = secagg_floor(n=3, d=1000, repeat=1)
    parts = floor["per_peer"]
    assert set(parts) == {
        "mask_s",
        "sum_and_unmask_s",
        "payload_digests_s",
        "signatures_s",
        "key_agreement_s",
        "vss_s",
    }
    assert all(seconds > 0 for seconds in parts.values())
    assert math.isclose(floor["cpu_per_peer_s"], sum(parts.values()))
    assert math.isclose(floor["cpu_all_peers_s"], 3 * floor["cpu_per_peer_s"])
    assert floor["threshold"] == 3
