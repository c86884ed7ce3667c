"""Image files are read with their header checked before decoding, every pixel mode converted exactly, and any
unreadable file one DataError line naming it (issue 13)."""

from __future__ import annotations

import struct
import time
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffusionlab.data import DataError, load_image_folder
from diffusionlab.data.folder import load_image_file
from diffusionlab.images import read_image_array
from diffusionlab.tasks import read_image

LEVELS16 = np.array([[0, 32768, 65535, 25700]], dtype=np.uint16)  # 25700 = 100 * 257


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand: ``rows`` (filter bytes included) or all-zero rows, compressed in blocks (fast)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    packer = zlib.compressobj(9)
    if rows is None:
        row = b"\x00" * (1 + width * {0: 1, 2: 3}[colour_type] * bit_depth // 8)
        block = row * 500
        body = b"".join(packer.compress(block) for _ in range(height // 500)) + packer.compress(row * (height % 500))
    else:
        body = packer.compress(rows)
    body += packer.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def save(image: Image.Image, path: Path, **kw: object) -> Path:
    image.save(path, **kw)
    return path


def mode_of(path: Path) -> str:
    with Image.open(path) as image:
        return image.mode


def expect_one_line(exc: pytest.ExceptionInfo[BaseException], *parts: str) -> None:
    text = str(exc.value)
    assert "\n" not in text, text
    for part in parts:
        assert part in text, text


# ---------------------------------------------------------------- pixel modes, exact


def test_a_16_bit_png_is_divided_by_65535(tmp_path: Path) -> None:
    path = save(Image.fromarray(LEVELS16), tmp_path / "deep.png")
    assert mode_of(path) == "I;16"
    want = (LEVELS16.astype(np.float64) / 65535).astype(np.float32)[:, :, None]
    got = read_image_array(path)
    assert got.dtype == np.float32 and got.shape == (1, 4, 1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[0, :3, 0], [0.0, 0.5000076, 1.0], rtol=0, atol=1e-6)
    assert torch.equal(read_image(path), torch.from_numpy(got).permute(2, 0, 1))
    assert torch.equal(read_image(path.read_bytes()), read_image(path))


def test_16_bit_big_endian_tiff_and_pgm_read_as_16_bit(tmp_path: Path) -> None:
    tiff = save(Image.frombytes("I;16B", (4, 1), LEVELS16.astype(">u2").tobytes()), tmp_path / "b.tiff")
    pgm = tmp_path / "g.pgm"
    pgm.write_bytes(b"P5 4 1 65535\n" + LEVELS16.astype(">u2").tobytes())
    assert mode_of(tiff) == "I;16B" and mode_of(pgm) == "I"
    want = LEVELS16[:, :, None].astype(np.float32) / np.float32(65535)
    np.testing.assert_array_equal(read_image_array(tiff), want)
    np.testing.assert_array_equal(read_image_array(pgm), want)


def test_32_bit_integer_pixels_must_hold_16_bit_values(tmp_path: Path) -> None:
    ok = save(Image.fromarray(LEVELS16.astype(np.int32)), tmp_path / "ok.tiff")
    np.testing.assert_array_equal(read_image_array(ok), LEVELS16[:, :, None].astype(np.float32) / np.float32(65535))
    bad = save(Image.fromarray(np.array([[0, 70000, -5]], np.int32)), tmp_path / "wide.tiff")
    with pytest.raises(DataError) as exc:
        read_image_array(bad)
    expect_one_line(exc, "wide.tiff", "from -5 to 70000", "0..65535")


def test_float_pixels_in_0_1_are_kept_and_others_refused(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.25, 1.0]], np.float32)
    ok = save(Image.fromarray(values), tmp_path / "f.tiff")
    np.testing.assert_array_equal(read_image_array(ok), values[:, :, None])
    high = save(Image.fromarray(np.array([[0.0, 2.5]], np.float32)), tmp_path / "high.tiff")
    with pytest.raises(DataError) as exc:
        read_image_array(high)
    expect_one_line(exc, "high.tiff", "from 0 to 2.5", "[0, 1]")
    nan = save(Image.fromarray(np.array([[0.0, np.nan]], np.float32)), tmp_path / "nan.tiff")
    with pytest.raises(DataError) as exc:
        read_image_array(nan)
    expect_one_line(exc, "nan.tiff", "non-finite")


def test_palette_images_read_as_their_rgb_colours(tmp_path: Path) -> None:
    palette = [255, 0, 0, 0, 255, 0, 10, 20, 30] + [0] * 759
    image = Image.new("P", (3, 1))
    image.putpalette(palette)
    for x, index in enumerate([0, 1, 2]):
        image.putpixel((x, 0), index)
    want = np.array([[[255, 0, 0], [0, 255, 0], [10, 20, 30]]], np.float32) / np.float32(255)
    plain = save(image, tmp_path / "p.png")
    one = save(image, tmp_path / "t1.png", transparency=0)  # one transparent index
    many = save(image, tmp_path / "tb.png", transparency=bytes([0, 128, 255]))  # alpha per index
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's "Palette images with Transparency" warning would fail here
        for path in (plain, one, many):
            assert mode_of(path) == "P"
            np.testing.assert_array_equal(read_image_array(path), want)


def test_alpha_is_dropped_and_other_modes_convert_exactly(tmp_path: Path) -> None:
    la = np.array([[[0, 255], [128, 0], [255, 9]]], np.uint8)
    got = read_image_array(save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    np.testing.assert_array_equal(got, la[:, :, :1].astype(np.float32) / np.float32(255))
    rgba = np.array([[[1, 2, 3, 0], [250, 128, 7, 255]]], np.uint8)
    got = read_image_array(save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(got, rgba[:, :, :3].astype(np.float32) / np.float32(255))
    bits = np.array([[True, False, True]])
    got = read_image_array(save(Image.fromarray(bits), tmp_path / "bits.png"))
    np.testing.assert_array_equal(got, bits[:, :, None].astype(np.float32))
    cmyk = save(Image.new("CMYK", (2, 1), (255, 0, 0, 0)), tmp_path / "cmyk.tiff")  # full cyan
    np.testing.assert_array_equal(read_image_array(cmyk), np.array([[[0, 1, 1], [0, 1, 1]]], np.float32))
    ycc = Image.merge(
        "YCbCr", [Image.fromarray(np.array([[0, 100, 255]], np.uint8))] + [Image.new("L", (3, 1), 128)] * 2
    )
    got = read_image_array(save(ycc, tmp_path / "ycc.tiff"))  # no chroma: gray Y
    np.testing.assert_array_equal(got, np.repeat(np.array([[0, 100, 255]], np.float32)[:, :, None], 3, 2) / 255)


def test_a_16_bit_rgb_png_reads_its_high_bytes(tmp_path: Path) -> None:
    values = np.array([[[0, 32768, 65535], [25700, 256, 511]]], dtype=">u2")
    path = tmp_path / "rgb16.png"
    path.write_bytes(raw_png(2, 1, 16, 2, b"\x00" + values.tobytes()))
    np.testing.assert_array_equal(read_image_array(path), (values >> 8).astype(np.float32) / np.float32(255))


def test_8_bit_files_read_exactly_as_bytes_over_255(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray, rgb = rng.integers(0, 256, (5, 7), np.uint8), rng.integers(0, 256, (5, 7, 3), np.uint8)
    g = read_image(save(Image.fromarray(gray), tmp_path / "g.png"))
    c = read_image(save(Image.fromarray(rgb), tmp_path / "c.png"))
    assert torch.equal(g, torch.from_numpy(gray)[None].float() / 255.0)
    assert torch.equal(c, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0)
    assert c.stride() == (1, 21, 3)  # as before: a channels-last view of the decoded pixels


def test_the_image_folder_reads_16_bit_files_rounded_to_8_bits(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    square = LEVELS16.reshape(2, 2)
    save(Image.fromarray(square), folder / "a.png")
    data = load_image_folder(folder, image_size=2, channels=1)
    want = torch.tensor([[0, 128], [255, 100]], dtype=torch.float32) / 127.5 - 1  # round(v / 257)
    assert torch.equal(data.images[0, 0], want)
    np.testing.assert_array_equal(load_image_file(folder / "a.png", 2, channels=3)[:, :, 1], [[0, 128], [255, 100]])


def test_the_image_folder_reads_8_bit_files_as_pillow_resizes_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (12, 9, 4), np.uint8)
    path = save(Image.fromarray(pixels, "RGBA"), tmp_path / "a.png")
    want = np.asarray(Image.fromarray(pixels, "RGBA").convert("L").resize((6, 8), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(load_image_file(path, 6, channels=1)[:, :, 0], want[1:7])


def test_the_image_folder_applies_the_exif_orientation_and_read_image_does_not(tmp_path: Path) -> None:
    columns = np.zeros((4, 2), np.uint8)
    columns[:, 1] = 255  # 2 wide, 4 tall: black left column, white right one
    image = Image.fromarray(columns)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(image, tmp_path / "turned.png", exif=exif)
    np.testing.assert_array_equal(load_image_file(path, 2, channels=1)[:, :, 0], [[0, 0], [255, 255]])
    assert read_image(path).shape == (1, 4, 2)  # the file's own pixels, as before


# ---------------------------------------------------------------- unreadable files


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("empty.png", b"", "is empty"),
        ("notes.png", b"just some text", "is not an image file"),
        ("garbage.png", b"\x89PNG\r\n\x1a\n garbage", "garbage.png"),
        ("truncated.png", None, "cannot read"),
    ],
)
def test_unreadable_files_are_one_line_naming_the_file(tmp_path: Path, name: str, content: bytes, says: str) -> None:
    path = tmp_path / name
    if content is None:
        whole = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64), np.uint8)).tobytes()
        full = raw_png(64, 64, 8, 0, b"".join(b"\x00" + whole[i * 64 : (i + 1) * 64] for i in range(64)))
        content = full[: len(full) // 2]
    path.write_bytes(content)
    for read in (read_image_array, read_image, lambda p: load_image_file(p, 8)):
        with pytest.raises(DataError) as exc:
            read(path)
        expect_one_line(exc, f"'{path}'", says)


def test_folders_missing_files_and_bad_bytes_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        read_image(tmp_path)
    expect_one_line(exc, f"image file '{tmp_path}' is a folder")
    with pytest.raises(DataError) as exc:
        read_image(tmp_path / "nowhere.png")
    expect_one_line(exc, "nowhere.png' does not exist")
    with pytest.raises(DataError) as exc:
        read_image(b"")
    expect_one_line(exc, "the uploaded image is empty")
    with pytest.raises(DataError) as exc:
        read_image(b"GIF89a\x01")
    expect_one_line(exc, "the uploaded image")


def test_an_unsupported_pixel_mode_is_refused_from_the_header(tmp_path: Path) -> None:
    path = save(Image.new("LAB", (2, 2)), tmp_path / "lab.tiff")
    with pytest.raises(DataError) as exc:
        read_image_array(path)
    expect_one_line(exc, "lab.tiff", "pixel mode 'LAB'")


# ---------------------------------------------------------------- size, from the header


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 12000 x 12000 gray PNG of ~140 KB: 144 million pixels, 576 MB as float32 if decoded."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    path.write_bytes(raw_png(12000, 12000, 8, 0))
    return path


def test_a_huge_image_is_refused_from_its_header_without_decoding(huge_png: Path) -> None:
    assert huge_png.stat().st_size < 500_000
    message = (
        f"image file '{huge_png}' is 12000x12000 (144,000,000 pixels); the limit is 67,108,864 pixels; "
        "set DIFFUSIONLAB_MAX_IMAGE_PIXELS to raise it."
    )
    for read in (read_image_array, read_image, lambda p: load_image_file(p, 8)):
        tracemalloc.start()
        start = time.perf_counter()
        with pytest.raises(DataError) as exc:
            read(huge_png)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert str(exc.value) == message
        assert seconds < 1.0 and peak < 10 * 2**20, (seconds, peak)  # decoding: ~30 s and 4.6 GB before


def test_the_pixel_limit_is_the_environments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(Image.new("L", (4, 4), 7), tmp_path / "small.png")
    monkeypatch.setenv("DIFFUSIONLAB_MAX_IMAGE_PIXELS", "15")
    with pytest.raises(DataError) as exc:
        read_image(path)
    expect_one_line(exc, "is 4x4 (16 pixels); the limit is 15 pixels")
    monkeypatch.setenv("DIFFUSIONLAB_MAX_IMAGE_PIXELS", "16")
    assert torch.equal(read_image(path), torch.full((1, 4, 4), 7 / 255))


def test_pillows_bomb_warning_and_error_become_our_limit_and_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow warns above 10 pixels, refuses above 20
    warned = save(Image.new("L", (4, 4), 3), tmp_path / "warned.png")
    bomb = save(Image.new("L", (5, 5), 3), tmp_path / "bomb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image_array(warned).shape == (4, 4, 1)  # within our limit: read, no Pillow warning
        with pytest.raises(DataError) as exc:
            read_image_array(bomb)
    expect_one_line(exc, "image file", "bomb.png", "decompression bomb", "25 pixels")
    assert Image.MAX_IMAGE_PIXELS == 10  # Pillow's own setting left alone
