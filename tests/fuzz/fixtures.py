"""The fuzz cases' inputs: tiny trained model folders (made once per session) and files made corrupt in many ways.

Every maker writes into a case's own folder; nothing here touches the fixtures a case starts from.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["Fixtures", "build_fixtures", "TRAIN_FLAGS", "copy_model", "copy_run", "IMAGE_MAKERS", "make_image"]

# a run as small as the CLI makes one: 2 steps of the tiny UNet at 8x8 on the embedded digits
TRAIN_FLAGS = {
    "--steps": "2",
    "--image-size": "8",
    "--batch-size": "4",
    "--model-size": "tiny",
    "--sample-every": "0",
}
SWITCHES = ["--cpu", "--no-progress", "--no-final-eval"]
MODEL_FILES = ("config.json", "model.safetensors", "ema.safetensors")
SAMPLE_STEPS = 2  # the fixture models sample with this many steps by default (config.json sample.steps)


@dataclass(frozen=True)
class Fixtures:
    """The session's inputs: ``model`` a class-conditional 8x8 grayscale digits model (its folder is also a
    training run with checkpoints/step-000002), ``cond`` a super-resolution model (condition images 4x4),
    ``bomb`` a 12000x12000 1-bit PNG."""

    root: Path
    model: Path
    cond: Path
    bomb: Path


def train_args(out: str, **flags: str) -> list[str]:
    """``train --out OUT`` with the tiny-run flags, ``flags`` (``--name``: value) replacing or adding to them."""
    merged = {**TRAIN_FLAGS, **flags}
    return ["train", "--out", out, *[x for k, v in merged.items() for x in (k, v)], *SWITCHES]


def _set_sample_steps(model: Path, steps: int) -> None:
    config = json.loads((model / "config.json").read_text())
    config["sample"]["steps"] = steps
    (model / "config.json").write_text(json.dumps(config, indent=2))


def build_fixtures(root: Path, runner: Any) -> Fixtures:
    """Train the two tiny models with the CLI (``runner.warm``: later runs start with its imports) and write
    the bomb PNG; raises if a fixture cannot be made."""
    root.mkdir(parents=True, exist_ok=True)
    for name, extra in (("model", {}), ("cond", {"--image-condition": "superres", "--superres-factor": "2"})):
        if not (root / name / "model.safetensors").is_file():
            result = runner.warm(train_args(name, **extra), root)
            if result.rc != 0:
                raise RuntimeError(f"could not train the fuzz fixture {name}: {result.stderr[-2000:]}")
            _set_sample_steps(root / name, SAMPLE_STEPS)
    bomb = root / "bomb.png"
    if not bomb.is_file():
        image = Image.new("1", (12000, 12000))
        image.paste(1, (0, 0, 6000, 12000))
        image.save(bomb)
    fixtures = Fixtures(root, root / "model", root / "cond", bomb)
    folder = root / "warm"
    folder.mkdir(exist_ok=True)
    make_image(folder, "valid", 8, 8)
    make_image(folder, "mask", 8, 8)
    make_image(folder, "valid", 4, 4, "cond.png")
    for args in (
        ["sample", str(fixtures.model), "-n", "2", "--out", "s.png", "--no-progress"],
        ["sample", str(fixtures.cond), "-n", "2", "--cond-image", "cond.png", "--out", "c.png", "--no-progress"],
        ["img2img", str(fixtures.model), "--image", "valid.png", "--out", "i.png", "--no-progress"],
        ["inpaint", str(fixtures.model), "--image", "valid.png", "--mask", "mask.png", "--out", "p.png"]
        + ["--no-progress"],
    ):
        runner.warm(args, folder)
    return fixtures


def copy_model(src: Path, dst: Path) -> None:
    """The model files of folder ``src`` (no checkpoints, no logs) copied to ``dst``."""
    dst.mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(src / name, dst / name)


def copy_run(src: Path, dst: Path) -> None:
    """A training run (model files and checkpoints/) copied to ``dst``."""
    copy_model(src, dst)
    shutil.copytree(src / "checkpoints", dst / "checkpoints")


# ---------------------------------------------------------------- image files


def _gradient(width: int, height: int) -> np.ndarray:
    """A (height, width) ramp in [0, 1] with mean 0.5 and no black pixel."""
    x = (np.arange(width) + 0.5) / width
    y = (np.arange(height) + 0.5) / height
    return 0.15 + 0.7 * (x[None, :] + y[:, None]) / 2


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (8-bit grayscale) but whose data is one short row: tiny on disk."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x80" * 16)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _save(image: Image.Image, path: Path, **kw: Any) -> None:
    image.save(path, **kw)


def _valid(path: Path, w: int, h: int) -> float:
    _save(Image.fromarray((_gradient(w, h) * 255).round().astype(np.uint8), "L"), path)
    return float((_gradient(w, h) * 255).round().mean() / 255)


def _mask(path: Path, w: int, h: int) -> float:
    mask = np.zeros((h, w), np.uint8)
    mask[: h // 2] = 255
    _save(Image.fromarray(mask, "L"), path)
    return 0.5


def _rgb(path: Path, w: int, h: int) -> float:
    g = (_gradient(w, h) * 255).round().astype(np.uint8)
    _save(Image.fromarray(np.stack([g, g, g], -1), "RGB"), path)
    return float(g.mean() / 255)


def _sixteen(path: Path, w: int, h: int) -> float:
    values = (_gradient(w, h) * 65535).round().astype(np.uint16)
    _save(Image.fromarray(values), path)  # uint16 (H, W): mode I;16, a 16-bit grayscale PNG
    return float(values.mean() / 65535)


def _palette(path: Path, w: int, h: int) -> float:
    index = (_gradient(w, h) * 255).round().astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    _save(image, path)
    return float(index.mean() / 255)


def _gray_alpha(path: Path, w: int, h: int) -> float:
    g = (_gradient(w, h) * 255).round().astype(np.uint8)
    _save(Image.fromarray(np.stack([g, np.full_like(g, 255)], -1), "LA"), path)
    return float(g.mean() / 255)


def _jpeg(path: Path, w: int, h: int) -> float:
    _save(Image.fromarray((_gradient(w, h) * 255).round().astype(np.uint8), "L"), path, format="JPEG", quality=95)
    return 0.5


def valid_png_bytes(w: int, h: int) -> bytes:
    """A sound w x h grayscale PNG (the ramp), as bytes."""
    import io

    buffer = io.BytesIO()
    Image.fromarray((_gradient(w, h) * 255).round().astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def _write(data: bytes) -> Any:
    def make(path: Path, w: int, h: int) -> None:
        path.write_bytes(data)

    return make


def _truncated(path: Path, w: int, h: int) -> None:
    data = valid_png_bytes(w, h)
    path.write_bytes(data[: len(data) // 2])


def _wrong_magic(path: Path, w: int, h: int) -> None:
    path.write_bytes(b"GIF89a" + valid_png_bytes(w, h)[6:])


def _bad_crc(path: Path, w: int, h: int) -> None:
    data = bytearray(valid_png_bytes(w, h))
    data[20] ^= 0x40  # inside IHDR: width or height no longer matches its CRC
    path.write_bytes(bytes(data))


def _bomb(path: Path, w: int, h: int) -> None:
    raise AssertionError("the bomb is copied from the fixtures")  # make_image handles it


# name -> (maker(path, width, height) -> the mean the image has in [0, 1], or None; expectation)
IMAGE_MAKERS: dict[str, tuple[Any, str]] = {
    "valid": (_valid, "ok"),
    "mask": (_mask, "ok"),
    "rgb": (_rgb, "either"),
    "16-bit": (_sixteen, "ok"),
    "palette": (_palette, "either"),  # a palette is colour (RGB), even a grey one: a grayscale model may refuse it
    "gray+alpha": (_gray_alpha, "either"),
    "jpeg-named-png": (_jpeg, "either"),
    "wrong size": (lambda p, w, h: _valid(p, w + 1, h + 3), "bad"),
    "1x1": (lambda p, w, h: _valid(p, 1, 1), "bad"),
    "truncated": (_truncated, "bad"),
    "wrong magic": (_wrong_magic, "bad"),
    "bad crc": (_bad_crc, "bad"),
    "empty": (_write(b""), "bad"),
    "text": (_write("this is not an image ✓\n".encode()), "bad"),
    "header 100000x100000": (_write(header_bomb(100_000, 100_000)), "bad"),
    "header 2^31-1 x 1": (_write(header_bomb(2**31 - 1, 1)), "bad"),
    "bomb 12000x12000 1-bit": (_bomb, "bad"),
    "directory": (lambda p, w, h: p.mkdir(), "bad"),
    "missing": (lambda p, w, h: None, "bad"),
}


def make_image(folder: Path, kind: str, width: int, height: int, name: str | None = None, bomb: Path | None = None):  # type: ignore[no-untyped-def]
    """Write the image file ``kind`` (an IMAGE_MAKERS name) for a model of ``width`` x ``height`` into ``folder``;
    its file name, and the mean its pixels have in [0, 1] (None where it has no sound pixels)."""
    name = name or kind.replace(" ", "-").replace("^", "").replace("+", "-") + ".png"
    path = folder / name
    if kind.startswith("bomb"):
        shutil.copyfile(bomb, path)  # type: ignore[arg-type]
        return name, None
    maker, _ = IMAGE_MAKERS[kind]
    mean = maker(path, width, height)
    return name, mean


# ---------------------------------------------------------------- model folders


def edit_config(folder: Path, edit: Any) -> None:
    """config.json of a model folder, parsed, changed by ``edit(config)`` and written back."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config, indent=2))


def edit_weights(path: Path, edit: Any) -> None:
    """A safetensors file, loaded as numpy arrays, changed by ``edit(tensors)`` and written back."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path))


def biggest(tensors: dict[str, np.ndarray]) -> str:
    """The name of the largest weight tensor (the one a corruption changes)."""
    return max(sorted(tensors), key=lambda k: tensors[k].size)


def weight_names(path: Path) -> list[str]:
    """The tensor names of a safetensors file, from its header."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        return list(f.keys())


def flip_header_byte(path: Path) -> None:
    """Change one byte inside a safetensors file's JSON header (a brace or a quote turns into junk)."""
    data = bytearray(path.read_bytes())
    data[8 + 1] ^= 0x5A
    path.write_bytes(bytes(data))


def huge_header_length(path: Path) -> None:
    """Set a safetensors file's header length (its first 8 bytes) to 2^62."""
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 2**62)
    path.write_bytes(bytes(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its length."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def replace_with_dir(path: Path) -> None:
    """Replace a file by an empty folder of its name."""
    path.unlink()
    path.mkdir()


# ---------------------------------------------------------------- training states


class Payload:
    """A pickle that makes folder ``pwned`` when unpickled (a torch.load without weights_only runs it)."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return (os.mkdir, ("pwned",))


def edit_state(path: Path, edit: Any) -> None:
    """A training_state.pt, loaded (weights_only), changed by ``edit(state)`` and saved back."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, path)


def pickled_payload(path: Path) -> None:
    """A training_state.pt that is a pickle running code."""
    path.write_bytes(pickle.dumps({"step": 2, "payload": Payload()}))
