"""Files on disk: every file written 0666 less the umask, and a full disk (a real tmpfs where the tests may mount
one, else a file-size limit) is one `error:` line naming the path, with nothing written before lost or changed and
no temporary file left behind."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from cli_helpers import TINY, assert_clear_error, run
from PIL import Image

from diffusionlab.config import MODEL_SIZES, DataConfig, ModelConfig, NetworkConfig, SampleConfig, TrainConfig
from diffusionlab.images import save_png
from diffusionlab.io import atomic_path, save_json, save_tensors, torch_save_state
from diffusionlab.training import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

BIG = {"w": torch.zeros(300_000)}  # 1.2 MB of safetensors


@contextmanager
def umask(mask: int) -> Iterator[None]:
    before = os.umask(mask)
    try:
        yield
    finally:
        os.umask(before)


def modes(folder: Path) -> dict[str, int]:
    """The permission bits of every file and folder under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for a folder)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


def tiny_config(steps: int) -> ModelConfig:
    return ModelConfig(
        network=NetworkConfig(**MODEL_SIZES["tiny"], num_classes=0),
        data=DataConfig(dataset="digits", image_size=8),
        train=TrainConfig(
            steps=steps, batch_size=4, sample_every=0, final_eval=False, checkpoint_every=1, keep_checkpoints=2
        ),
        sample=SampleConfig(steps=2),
    )


# ---------------------------------------------------------------------------------------------- file modes
def write_each_kind(folder: Path) -> None:
    """One file of every kind the library writes through io.py."""
    save_tensors(BIG, folder / "w.safetensors")
    save_json({"a": 1}, folder / "c.json")
    torch_save_state({"step": 1}, folder / "s.pt")
    save_png(Image.new("L", (4, 4)), folder / "p.png")


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_file_io_writes_has_the_umasks_mode(tmp_path: Path, mask: int, expected: int) -> None:
    with umask(mask):
        write_each_kind(tmp_path)
        save_tensors(BIG, tmp_path / "w.safetensors")  # replacing a file gives it the mode anew
    assert modes(tmp_path) == dict.fromkeys(["w.safetensors", "c.json", "s.pt", "p.png"], expected)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_a_training_run_writes_files_and_folders_with_the_umasks_modes(
    tmp_path: Path, mask: int, file_mode: int, dir_mode: int
) -> None:
    with umask(mask):
        Trainer(tiny_config(steps=3), tmp_path / "run", progress=False, track=False).train()
    found = modes(tmp_path / "run")
    assert "checkpoints/step-000003/model.safetensors" in found and "model.safetensors" in found
    expected = {p: dir_mode if (tmp_path / "run" / p).is_dir() else file_mode for p in found}
    assert found == expected


# ---------------------------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a 12 MB tmpfs of its own (mounted for the test; skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def fill(disk: Path, leave: int) -> None:
    """Fill the file system of ``disk`` up to ``leave`` free bytes."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """No file of this process may grow past ``nbytes`` (writes fail with EFBIG; SIGXFSZ ignored)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_a_write_onto_a_full_disk_names_the_file_and_leaves_the_old_one_and_no_temporary(small_disk: Path) -> None:
    target = small_disk / "w.safetensors"
    save_tensors({"w": torch.ones(10)}, target)
    before = snapshot(small_disk)
    fill(small_disk, leave=64 * 1024)
    for write in (lambda: save_tensors(BIG, target), lambda: torch_save_state(BIG, target)):
        with pytest.raises(OSError) as caught:
            write()
        assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(target))
        assert {k: v for k, v in snapshot(small_disk).items() if k != "filler"} == before


def test_atomic_path_removes_its_temporary_file_when_the_write_fails(small_disk: Path) -> None:
    fill(small_disk, leave=64 * 1024)
    with pytest.raises(OSError) as caught, atomic_path(small_disk / "out.bin") as tmp:
        tmp.write_bytes(b"\1" * 1_000_000)
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(small_disk / "out.bin"))
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler"]


def test_a_write_past_the_file_size_limit_names_the_file_and_leaves_the_old_one(tmp_path: Path) -> None:
    target = tmp_path / "w.safetensors"
    save_tensors({"w": torch.ones(10)}, target)
    before = snapshot(tmp_path)
    with file_size_limit(100_000):
        for write in (lambda: save_tensors(BIG, target), lambda: torch_save_state(BIG, target)):
            with pytest.raises(OSError) as caught:
                write()
            assert (caught.value.errno, caught.value.filename) == (errno.EFBIG, str(target))
    assert snapshot(tmp_path) == before


def train_twice_on_a_full_disk(folder: Path, full: object, reason: str) -> None:
    """Train a run into ``folder``; then, with the disk full (``full``: a context), resume it for more steps and
    start a second run beside it: each is one `error:` line naming the checkpoint it was writing, exit status 2;
    the first run's files are byte for byte what they were, and no temporary file is left."""
    first = folder / "run"
    result = run("train", *TINY, "--steps", "2", "--checkpoint-every", "1", "--out", first)
    assert result.exit_code == 0, result.output
    before = snapshot(first)
    with full:  # type: ignore[attr-defined]
        resumed = run("train", *TINY, "--steps", "4", "--checkpoint-every", "1", "--resume", "--out", first)
        fresh = run("train", *TINY, "--steps", "2", "--out", folder / "second")
    assert_clear_error(resumed, f"{first}/checkpoints/step-000003: {reason}", progress_on_stderr=True)
    assert_clear_error(fresh, f"{folder / 'second'}/checkpoints/step-000002: {reason}", progress_on_stderr=True)
    assert snapshot(first) == before
    assert [p.name for p in folder.rglob(".*")] == []  # no temporary file or folder left behind


def test_training_onto_a_full_disk_is_one_line_and_keeps_the_earlier_run(small_disk: Path) -> None:
    class Full:
        def __enter__(self) -> None:
            fill(small_disk, leave=64 * 1024)

        def __exit__(self, *exc: object) -> None:
            (small_disk / "filler").unlink()

    train_twice_on_a_full_disk(small_disk, Full(), "No space left on device")


def test_training_past_the_file_size_limit_is_one_line_and_keeps_the_earlier_run(tmp_path: Path) -> None:
    train_twice_on_a_full_disk(tmp_path, file_size_limit(100_000), "File too large")
