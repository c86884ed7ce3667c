"""Behaviour unchanged: the README's main job (200 steps) and the sampling and task outputs built on it give the
outputs recorded before the typed-core refactor (tests/golden/record.py wrote tests/golden/reference/), up to the
rounding of another CPU: weight fingerprints within 1e-3 relative, PNG text exact and pixel values within 2/255
with at most 1% of them changed (25% when sampled in bf16). golden/compare.py; tests/README.md has the measurements."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

sys.path.insert(0, str(Path(__file__).parent / "golden"))
from commands import GROUPS, run_group  # noqa: E402
from compare import fingerprint, load_weights_reference, png_differences, reference_png, weight_differences  # noqa: E402

WEIGHTS = load_weights_reference()


@pytest.fixture(scope="module")
def produced(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each group's work folder, its commands run (one thread each: the groups run side by side)."""
    root = tmp_path_factory.mktemp("golden")
    with ThreadPoolExecutor(len(GROUPS)) as pool:
        futures = [pool.submit(run_group, g, root / g) for g in GROUPS]
        for f in futures:
            f.result()
    return {g: root / g for g in GROUPS}


def _cases(kind: str) -> list[Any]:
    """(group, file) for the compared files ending in ``kind``, each with the id group/file."""
    return [
        pytest.param(g, f, id=f"{g}/{f}")
        for g, commands in GROUPS.items()
        for *_, files in commands
        for f in files
        if f.endswith(kind)
    ]


def test_every_output_has_a_reference() -> None:
    assert {c.id for c in _cases(".safetensors")} == set(WEIGHTS)
    assert all(reference_png(*c.values).is_file() for c in _cases(".png"))


def _differences(tmp_path: Path, file: str, share: float, levels: int = 1, **text: str) -> list[str]:
    """png_differences for a copy of digits/``file``'s reference with ``share`` of its values ``levels`` off."""
    ref = reference_png("digits", file)
    want = np.asarray(Image.open(ref))
    got = want.reshape(-1).astype(np.int16)
    picks = np.linspace(0, got.size - 1, round(got.size * share)).astype(int)
    got[picks] += np.where(got[picks] < 128, levels, -levels)
    info = PngImagePlugin.PngInfo()
    for key, value in {**Image.open(ref).text, **text}.items():
        info.add_text(key, value)
    Image.fromarray(got.astype(np.uint8).reshape(want.shape)).save(tmp_path / "got.png", pnginfo=info)
    return png_differences(tmp_path / "got.png", ref)


def test_the_image_comparison_allows_rounding_and_nothing_more(tmp_path: Path) -> None:
    assert _differences(tmp_path, "ddim.png", 0.0) == []
    assert _differences(tmp_path, "ddim.png", 0.0099, levels=2) == []
    assert _differences(tmp_path, "ddim.png", 0.011) != []
    assert _differences(tmp_path, "ddim.png", 0.0001, levels=3) != []  # one value three levels off
    assert _differences(tmp_path, "ddim.png", 0.0, guidance="2.02") != []
    assert _differences(tmp_path, "bf16.png", 0.24) == []  # sampled in bf16: a quarter may move a level
    assert _differences(tmp_path, "bf16.png", 0.26) != []


def test_the_weight_comparison_allows_rounding_and_nothing_more() -> None:
    want = WEIGHTS["digits/digits/model.safetensors"]
    name = "down.0.0.conv1.weight"

    def changed(**entry: Any) -> list[str]:
        return weight_differences({**want, name: {**want[name], **entry}}, want)

    assert weight_differences(want, want) == []
    assert changed(values=[v + 3e-6 for v in want[name]["values"]]) == []  # 2.8e-6: the most another CPU moved one
    assert changed(values=[v * 1.002 for v in want[name]["values"]]) != []
    assert changed(sum=want[name]["sum"] + 2e-3 * want[name]["abs_sum"]) != []
    assert changed(shape=want[name]["shape"][::-1]) != []
    assert weight_differences({k: v for k, v in want.items() if k != name}, want) == [f"{name}: missing"]


@pytest.mark.parametrize(("group", "file"), _cases(".safetensors"))
def test_same_weights_as_before_the_refactor(produced: dict[str, Path], group: str, file: str) -> None:
    changed = weight_differences(fingerprint(produced[group] / file), WEIGHTS[f"{group}/{file}"])
    assert not changed, f"{group}/{file}: {len(changed)} tensors changed:\n" + "\n".join(changed[:20])


@pytest.mark.parametrize(("group", "file"), _cases(".png"))
def test_same_image_as_before_the_refactor(produced: dict[str, Path], group: str, file: str) -> None:
    changed = png_differences(produced[group] / file, reference_png(group, file))
    assert not changed, f"{group}/{file}: " + "; ".join(changed)
