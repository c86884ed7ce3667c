"""Behaviour unchanged, bit for bit: the README's main job (200 steps) and the sampling and task outputs built on
it give the bytes recorded before the typed-core refactor (tests/golden/record.py wrote hashes.json)."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from commands import GROUPS, run_group  # noqa: E402

RECORDED = json.loads((Path(__file__).parent / "golden" / "hashes.json").read_text())


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("golden")
    with ThreadPoolExecutor(len(GROUPS)) as pool:  # one thread each: the groups run side by side
        futures = {g: pool.submit(run_group, g, root / g) for g in GROUPS}
        return {g: f.result() for g, f in futures.items()}


@pytest.mark.parametrize("group", sorted(RECORDED))
def test_same_bytes_as_before_the_refactor(produced: dict[str, dict[str, str]], group: str) -> None:
    want, got = RECORDED[group], produced[group]
    assert sorted(got) == sorted(want)
    changed = [name for name in want if got[name] != want[name]]
    assert not changed, f"these outputs changed: {changed}"
