"""Tests for diffusionlab.data: every loader round-trips real files written here, bit for bit."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffusionlab.data import (
    TOY_DATASETS,
    DataError,
    ImageDataset,
    PointDataset,
    eight_gaussians_params,
    load_cifar10,
    load_dataset,
    load_digits_dataset,
    load_image_folder,
    load_mnist,
    load_toy_dataset,
    stratified_split,
)
from diffusionlab.data.digits import load_digits_raw


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Invert the [-1, 1] mapping of 8-bit data exactly."""
    return torch.round((images + 1.0) * 127.5).to(torch.uint8).numpy()


# ---------------------------------------------------------------- digits


def test_embedded_digits_equal_sklearn_exactly():
    from sklearn.datasets import load_digits

    ref = load_digits()
    images, labels = load_digits_raw()
    assert images.dtype == np.uint8 and labels.dtype == np.uint8
    assert images.shape == (1797, 8, 8) and labels.shape == (1797,)
    np.testing.assert_array_equal(images, ref.images.astype(np.uint8))
    np.testing.assert_array_equal(images.astype(np.float64), ref.images)
    np.testing.assert_array_equal(labels, ref.target)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_digits_shapes_range_labels(size):
    ds = load_digits_dataset(image_size=size)
    assert isinstance(ds, ImageDataset)
    assert ds.images.shape == (1797, 1, size, size) and ds.images.dtype == torch.float32
    assert ds.channels == 1 and ds.image_size == size and ds.num_classes == 10
    assert ds.class_names == [str(d) for d in range(10)]
    assert ds.images.min().item() == -1.0 and ds.images.max().item() == 1.0
    assert set(ds.labels.tolist()) == set(range(10)) and ds.labels.dtype == torch.long


def test_digits_value_mapping_and_bilinear_upsampling():
    raw, _ = load_digits_raw()
    at8 = load_digits_dataset(8).images
    expected = torch.from_numpy(raw.astype(np.float32)).unsqueeze(1) / 8.0 - 1.0  # 0 -> -1, 16 -> +1
    assert torch.equal(at8, expected)
    at16 = load_digits_dataset(16).images
    ref = F.interpolate(expected, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(at16, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [0, 4, 12, 20, -8])
def test_digits_bad_image_size(bad):
    with pytest.raises(DataError, match=f"got {bad}") as info:
        load_digits_dataset(image_size=bad)
    assert "multiple of 8" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_digits_split_is_stratified_disjoint_and_deterministic():
    full = load_digits_dataset(8)
    train = load_digits_dataset(8, split="train")
    test = load_digits_dataset(8, split="test")
    assert len(train) + len(test) == 1797
    train_idx, test_idx = stratified_split(full.labels, 0.2, seed=0)
    assert set(train_idx.tolist()).isdisjoint(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(1797))
    assert torch.equal(test.images, full.images[test_idx]) and torch.equal(test.labels, full.labels[test_idx])
    assert torch.equal(train.images, full.images[train_idx])
    # each class contributes round(0.2 * its count) test digits
    class_counts = torch.bincount(full.labels, minlength=10)
    test_counts = torch.bincount(test.labels, minlength=10)
    assert torch.equal(test_counts, torch.round(0.2 * class_counts.double()).long())
    # same seed, same indices; another seed, other indices
    again = stratified_split(full.labels, 0.2, seed=0)
    assert torch.equal(again[1], test_idx) and torch.equal(again[0], train_idx)
    assert not torch.equal(stratified_split(full.labels, 0.2, seed=1)[1], test_idx)
    assert torch.equal(load_digits_dataset(8, split="test").images, test.images)


def test_digits_bad_split_and_fraction():
    with pytest.raises(DataError, match="'val'"):
        load_digits_dataset(split="val")
    with pytest.raises(DataError, match="1.5"):
        load_digits_dataset(split="test", test_fraction=1.5)


def test_image_dataset_items_and_tensors():
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    labelled = ImageDataset(images, torch.tensor([0, 1, 2, 1]), class_names=["a", "b", "c"])
    item = labelled[2]
    assert set(item) == {"image", "label"} and item["label"].dtype == torch.long and int(item["label"]) == 2
    assert torch.equal(item["image"], images[2]) and labelled.num_classes == 3
    unlabelled = ImageDataset(images)
    assert set(unlabelled[0]) == {"image"} and unlabelled.num_classes is None
    x, y = unlabelled.tensors()
    assert x is unlabelled.images and y is None
    sub = labelled.subset([3, 0])
    assert torch.equal(sub.labels, torch.tensor([1, 0])) and sub.class_names == ["a", "b", "c"]
    with pytest.raises(DataError, match=r"\[-1, 1\]"):
        ImageDataset(images * 3)
    with pytest.raises(DataError, match="4 images but 3 labels"):
        ImageDataset(images, torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------- image folders


def test_folder_grayscale_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 8, 8), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p, mode="L").save(tmp_path / f"img{i}.png")
    ds = load_image_folder(tmp_path, image_size=8, channels=1)
    assert ds.images.shape == (3, 1, 8, 8) and ds.labels is None and ds.num_classes is None
    assert np.abs(to_uint8(ds.images)[:, 0].astype(int) - pixels.astype(int)).max() <= 1
    rgb = load_image_folder(tmp_path, image_size=8, channels=3)
    assert rgb.images.shape == (3, 3, 8, 8)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])


def test_folder_rgb_png_exact_and_other_formats(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels, mode="RGB").save(tmp_path / "a.PNG")  # upper-case extension
    Image.fromarray(pixels, mode="RGB").save(tmp_path / "b.jpg", quality=95)
    Image.fromarray(pixels, mode="RGB").save(tmp_path / "c.bmp")
    Image.fromarray(pixels, mode="RGB").convert("RGBA").save(tmp_path / "d.png")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = load_image_folder(tmp_path, image_size=8)
    assert ds.images.shape == (4, 3, 8, 8)
    exact = to_uint8(ds.images).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(exact[0], pixels)  # a.PNG
    np.testing.assert_array_equal(exact[2], pixels)  # c.bmp
    np.testing.assert_array_equal(exact[3], pixels)  # d.png (alpha dropped)


def test_folder_class_subfolders_give_sorted_labels(tmp_path):
    for name, count in [("zebra", 2), ("cat", 1), ("dog", 3)]:
        (tmp_path / name).mkdir()
        for i in range(count):
            Image.new("L", (8, 8), color=10 * i).save(tmp_path / name / f"{i}.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / ".hidden" / "x.png")
    ds = load_image_folder(tmp_path, image_size=4, channels=1)
    assert ds.class_names == ["cat", "dog", "zebra"] and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert ds.images.shape == (6, 1, 4, 4)


def test_folder_centre_crop_of_non_square_images(tmp_path):
    # 16 wide x 8 high: columns carry their index, so the crop position is visible.
    wide = np.tile((np.arange(16, dtype=np.uint8) * 10)[None, :], (8, 1))
    Image.fromarray(wide, mode="L").save(tmp_path / "wide.png")
    ds = load_image_folder(tmp_path, image_size=8, channels=1)
    np.testing.assert_array_equal(to_uint8(ds.images)[0, 0], wide[:, 4:12])
    # a tall 8 x 24 ramp (row r has value 10 r) becomes 4 x 12, rows 4..8 kept; Lanczos keeps a linear ramp,
    # so output row k (centre at source row 2 k + 0.5) is 10 * (2 k + 0.5).
    tall = np.tile((np.arange(24, dtype=np.uint8) * 10)[:, None], (1, 8))
    (tmp_path / "wide.png").unlink()
    Image.fromarray(tall, mode="L").save(tmp_path / "tall.png")
    ds = load_image_folder(tmp_path, image_size=4, channels=1)
    assert ds.images.shape == (1, 1, 4, 4)
    expected = np.tile((10 * (2 * np.arange(4, 8) + 0.5))[:, None], (1, 4))
    assert np.abs(to_uint8(ds.images)[0, 0] - expected).max() <= 1.0


def test_folder_errors_name_the_problem(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope") as info:
        load_image_folder(missing, image_size=8)
    assert "does not exist" in str(info.value)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty_dir") as info:
        load_image_folder(empty, image_size=8)
    assert ".png" in str(info.value) and ".jpg" in str(info.value)
    broken = tmp_path / "broken"
    broken.mkdir()
    Image.new("RGB", (8, 8)).save(broken / "good.png")
    (broken / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="bad.png"):
        load_image_folder(broken, image_size=8)
    with pytest.raises(DataError, match="got 2"):
        load_image_folder(broken, image_size=8, channels=2)
    mixed = tmp_path / "mixed"
    (mixed / "cls").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(mixed / "loose.png")
    Image.new("RGB", (8, 8)).save(mixed / "cls" / "x.png")
    with pytest.raises(DataError, match="loose.png"):
        load_image_folder(mixed, image_size=8)


# ---------------------------------------------------------------- MNIST idx files


def write_idx(path, array: np.ndarray, compress: bool = False, magic: int | None = None) -> None:
    magic = (0x08 << 8) | array.ndim if magic is None else magic
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(payload)
    else:
        path.write_bytes(payload)


def make_mnist(folder, n: int = 5, split: str = "train", compress: bool = False, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
    prefix = "train" if split == "train" else "t10k"
    write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_round_trip_bit_exact(tmp_path, compress):
    images, labels = make_mnist(tmp_path, n=6, compress=compress)
    test_images, test_labels = make_mnist(tmp_path, n=3, split="test", compress=compress, seed=1)
    ds = load_mnist(tmp_path, split="train")
    assert ds.images.shape == (6, 1, 28, 28) and ds.num_classes == 10
    np.testing.assert_array_equal(to_uint8(ds.images)[:, 0], images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    test = load_mnist(tmp_path, split="test")
    np.testing.assert_array_equal(to_uint8(test.images)[:, 0], test_images)
    np.testing.assert_array_equal(test.labels.numpy(), test_labels)
    small = load_mnist(tmp_path, split="train", image_size=14)
    assert small.images.shape == (6, 1, 14, 14) and small.images.abs().max() <= 1.0


def test_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    images, labels = make_mnist(tmp_path)
    image_file = tmp_path / "train-images-idx3-ubyte"
    write_idx(image_file, images, magic=0x00000801)  # a label magic on an image file
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as info:
        load_mnist(tmp_path)
    assert "magic" in str(info.value) and "0x00000801" in str(info.value)
    write_idx(image_file, images)
    image_file.write_bytes(image_file.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as info:
        load_mnist(tmp_path)
    assert "truncated" in str(info.value)
    write_idx(image_file, images[:4])
    with pytest.raises(DataError, match="4 images"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "absent")
    with pytest.raises(DataError, match="'valid'"):
        load_mnist(tmp_path, split="valid")


def test_mnist_truncated_gzip_names_the_file(tmp_path):
    make_mnist(tmp_path, compress=True)
    gz = tmp_path / "train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:12])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path)


# ---------------------------------------------------------------- CIFAR-10 pickles

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar(folder, per_batch: int = 2, protocol: int = 2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_batch).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data, b"filenames": [b"x.png"]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        batches[name] = (data, labels)
    meta = {b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_vis": 3072, b"num_cases_per_batch": 2}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return batches


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar_round_trip_bit_exact(tmp_path, protocol):
    batches = make_cifar(tmp_path / "cifar-10-batches-py", protocol=protocol)
    train = load_cifar10(tmp_path, split="train")  # the parent folder works
    assert train.images.shape == (10, 3, 32, 32) and train.class_names == CIFAR_NAMES
    data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    pixels = to_uint8(train.images)
    np.testing.assert_array_equal(pixels.reshape(10, 3072), data)
    assert pixels[3, 1, 5, 7] == data[3, 1 * 1024 + 5 * 32 + 7]  # channel-major, row-major
    assert train.labels.tolist() == labels
    test = load_cifar10(tmp_path / "cifar-10-batches-py", split="test")
    np.testing.assert_array_equal(to_uint8(test.images).reshape(2, 3072), batches["test_batch"][0])
    assert test.labels.tolist() == batches["test_batch"][1]


def test_cifar_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "absent")
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10(tmp_path, split="train")
    (folder / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(tmp_path, split="test")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cifar_pickle_that_runs_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    make_cifar(folder)
    marker = tmp_path / "pwned"
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(str(marker)), b"labels": []}))
    with pytest.raises(DataError, match="test_batch"):
        load_cifar10(folder, split="test")
    assert not marker.exists()


# ---------------------------------------------------------------- toys


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_toys_shape_unit_std_and_seeded(name):
    sampler = TOY_DATASETS[name]
    x = sampler(20000, torch.Generator().manual_seed(0))
    assert x.shape == (20000, 2) and x.dtype == torch.float32 and torch.isfinite(x).all()
    assert x.mean(0).abs().max() < 0.05
    assert (x.std(0) - 1.0).abs().max() < 0.05
    again = sampler(20000, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    assert not torch.equal(x, sampler(20000, torch.Generator().manual_seed(1)))
    # the same seed gives the same points whatever the count
    assert torch.equal(sampler(7, torch.Generator().manual_seed(0)), x[:7])
    ds = load_toy_dataset(name, n=100, seed=3)
    assert isinstance(ds, PointDataset) and len(ds) == 100 and ds[5]["point"].shape == (2,)
    assert torch.equal(ds.points, load_toy_dataset(name, n=100, seed=3).points)


def test_eight_gaussians_params_match_samples():
    params = eight_gaussians_params()
    assert params.means.shape == (8, 2) and torch.allclose(params.weights.sum(), torch.tensor(1.0))
    x = load_toy_dataset("eight_gaussians", n=40000, seed=0).points
    nearest = torch.cdist(x, params.means).argmin(dim=1)
    residual = x - params.means[nearest]
    assert abs(residual.std().item() - params.std) < 0.01
    counts = torch.bincount(nearest, minlength=8).float() / len(x)
    assert (counts - 0.125).abs().max() < 0.01
    # exact variance per coordinate: radius^2 / 2 + std^2 == 1
    radius = params.means.norm(dim=1)
    assert torch.allclose(radius**2 / 2 + params.std**2, torch.ones(8), atol=1e-6)


def test_checkerboard_lies_on_black_cells():
    x = load_toy_dataset("checkerboard", n=5000, seed=0).points / (3**0.5 / 2)
    cells = torch.floor(x + 2.0).long()
    assert cells.min() >= 0 and cells.max() <= 3
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()


def test_unknown_toy_lists_valid_names():
    with pytest.raises(DataError, match="'spiral'") as info:
        load_toy_dataset("spiral")
    for name in TOY_DATASETS:
        assert name in str(info.value)


# ---------------------------------------------------------------- dispatcher


def test_load_dataset_dispatches(tmp_path):
    digits = load_dataset("digits", image_size=16)
    assert len(digits) == len(load_digits_dataset(16, split="train")) and digits.channels == 1
    rgb_digits = load_dataset("digits", image_size=8, channels=3, split="test")
    assert rgb_digits.images.shape[1] == 3 and torch.equal(rgb_digits.images[:, 0], rgb_digits.images[:, 1])
    mnist_dir = tmp_path / "mnist"
    mnist_dir.mkdir()
    images, _ = make_mnist(mnist_dir, n=4)
    mnist = load_dataset(f"mnist:{mnist_dir}", image_size=28)
    np.testing.assert_array_equal(to_uint8(mnist.images)[:, 0], images)
    make_cifar(tmp_path / "c" / "cifar-10-batches-py")
    cifar = load_dataset(f"cifar10:{tmp_path / 'c'}", image_size=16, channels=1, split="test")
    assert cifar.images.shape == (2, 1, 16, 16) and cifar.class_names == CIFAR_NAMES
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (10, 12), color=(255, 0, 0)).save(folder / "red.png")
    imgs = load_dataset(str(folder), image_size=8)
    assert imgs.images.shape == (1, 3, 8, 8)
    assert torch.allclose(imgs.images[0, 0], torch.ones(8, 8))
    assert torch.allclose(imgs.images[0, 1], -torch.ones(8, 8))
    with pytest.raises(DataError, match="'imagenet'") as info:
        load_dataset("imagenet", image_size=8)
    assert "mnist:<folder>" in str(info.value) and "digits" in str(info.value)
    with pytest.raises(DataError, match="got 4"):
        load_dataset("digits", image_size=8, channels=4)
