"""The README's Python samples run as written (keeps the README true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
SAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_python_samples() -> None:
    assert len(SAMPLES) >= 2


@pytest.mark.parametrize("source", SAMPLES, ids=[f"sample{i}" for i in range(len(SAMPLES))])
def test_readme_sample_runs(source: str) -> None:
    exec(compile(source, str(README), "exec"), {"__name__": "readme"})
