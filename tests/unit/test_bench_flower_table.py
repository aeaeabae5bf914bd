"""benchmarks/flower_compare.py prints the README's table from its results."""

from __future__ import annotations

from typing import Any

from benchmarks.flower_compare import _power_of_ten, readme_table


def _row(n: int, d: int, ours: float, flower: dict[str, float]) -> dict[str, Any]:
    floor = ours / 2
    return {
        "n": n,
        "d": d,
        "ours": {"cpu_all_peers_s": ours, "cpu_all_peers_with_encode_decode_s": ours + 0.1},
        "ours_reduce_scatter": {"cpu_all_peers_s": ours * 1.25},
        "floor": {"cpu_all_peers_s": floor},
        "flower": {t: {"cpu_total_s": total} for t, total in flower.items()},
        "ratio": {
            t: {
                "flower_total_over_ours_total": total / ours,
                "flower_secagg_only_over_ours_with_encode_decode": total / (ours + 0.1),
                "flower_total_over_ours_reduce_scatter_total": total / (ours * 1.25),
                "flower_total_over_floor": total / floor,
            }
            for t, total in flower.items()
        },
    }


def test_table_has_one_cell_per_header_and_the_ratios_as_pairs() -> None:
    rows = [_row(10, 1_000_000, 0.5, {"proto": 1.5, "objects": 2.0})]
    header, rule, line = readme_table(rows)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == header.count("|") - 1 == rule.count("|") - 1
    assert cells[:6] == ["10", "10⁶", "0.50 s (0.60 s)", "0.62 s", "1.50 s", "2.00 s"]
    # broadcast, float in and out, reduce-scatter, floor, Flower / floor
    assert cells[6:] == ["3.0× / 4.0×", "2.5× / 3.3×", "2.4× / 3.2×", "0.25 s", "6.0× / 8.0×"]


def test_one_transport_gives_single_ratios_and_small_times_keep_three_decimals() -> None:
    (_, _, line) = readme_table([_row(5, 100_000, 0.05, {"proto": 0.12})])
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2] == "0.050 s (0.15 s)"
    assert cells[5] == "2.4×"
    assert len(cells) == 10


def test_sizes_are_written_as_the_readme_writes_them() -> None:
    assert _power_of_ten(100_000) == "10⁵"
    assert _power_of_ten(10**12) == "10¹²"
    assert _power_of_ten(250_000) == "250,000"
    assert _power_of_ten(1) == "1"
