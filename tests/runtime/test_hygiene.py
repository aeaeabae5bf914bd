"""Side-channel hygiene (issue 8 §3): padded frames, publish jitter, shuffled processing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from peers.chunking import HEADER_SIZE, ChunkError, Reassembler, split
from peers.config import ConfigError, Hygiene, load_federation
from peers.init import init_federation
from peers.memory import MemoryBroker
from peers.node import AggregateResult
from tests.dp_support import memory
from tests.runtime.nodes import on_grid, run_round, running_nodes


@pytest.mark.parametrize("length", [0, 1, 999, 1000, 1001, 5000])
def test_padded_frames_all_have_the_chunk_size_and_reassemble_exactly(length: int) -> None:
    message = bytes(range(256)) * (length // 256) + bytes(length % 256)
    frames = list(split(message, chunk_size=1000, message_id=bytes(16), pad=True))
    assert {len(f) for f in frames} == {HEADER_SIZE + 1000}
    reassembler = Reassembler(max_message_bytes=1 << 20)
    outputs = [reassembler.feed("t", f) for f in frames]
    assert outputs[-1] == message
    assert all(o is None for o in outputs[:-1])


def test_padding_that_is_not_zero_is_refused() -> None:
    (frame,) = split(b"abc", chunk_size=16, message_id=bytes(16), pad=True)
    tampered = frame[:-1] + b"\x01"
    with pytest.raises(ChunkError, match="padding is not zero"):
        Reassembler(max_message_bytes=1 << 20).feed("t", tampered)


@pytest.mark.asyncio
async def test_jitter_and_shuffled_processing_keep_the_sum_exact() -> None:
    rng = np.random.default_rng(9)
    updates = [on_grid(rng, (500,)) for _ in range(4)]
    async with running_nodes(4, memory(MemoryBroker()), deadline=5.0) as nodes:
        for node in nodes:
            node.publish_jitter, node.shuffle = 0.03, True
        started = time.perf_counter()
        results = await run_round(nodes, updates)
        elapsed = time.perf_counter() - started
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(updates))
    assert elapsed < 5.0  # six publishes of ≤ 30 ms each, not a deadline


def test_hygiene_table_loads_and_rejects_bad_values(tmp_path: Path) -> None:
    path = init_federation(tmp_path, sites=3)
    assert load_federation(path).hygiene == Hygiene()
    text = path.read_text()
    path.write_text(
        text.replace(
            "[limits]",
            "[hygiene]\npad_frames = true\npublish_jitter = 0.05\nshuffle = true\n\n[limits]",
        )
    )
    assert load_federation(path).hygiene == Hygiene(
        pad_frames=True, publish_jitter=0.05, shuffle=True
    )
    path.write_text(path.read_text().replace("publish_jitter = 0.05", "publish_jitter = -1"))
    with pytest.raises(ConfigError, match=r"hygiene\.publish_jitter"):
        load_federation(path)
