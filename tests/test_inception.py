"""The FID Inception: the published parameter names and shapes, loading from files, clear errors, and its
preprocessing and forward pass against an independent float64 implementation (tests/fixtures/inception/)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffusionlab.evaluation import FIDInceptionV3, InceptionFeatures, load_inception
from diffusionlab.evaluation.inception import _avg_pool_tf, inception_input
from diffusionlab.io import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).parent / "fixtures" / "inception"

# Shapes in pytorch-fid's pt_inception-2015-12-05 weights (torchvision Inception3 names, 1008 classes, no AuxLogits)
PUBLISHED = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_4a_3x3.bn.running_var": (192,),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.bn.bias": (384,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def network() -> FIDInceptionV3:
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so a wrong load would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


def test_published_names_and_shapes(network: FIDInceptionV3) -> None:
    state = {k: tuple(v.shape) for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}
    for key, shape in PUBLISHED.items():
        assert state[key] == shape, key
    assert len(state) == 472 and not any(k.startswith("AuxLogits") for k in state)  # 94 conv-bn units + fc
    assert sum(p.numel() for p in network.parameters()) == 23_850_960  # torchvision's 27,161,264 - aux + 8 classes


def test_loads_a_torch_state_dict_and_safetensors(network: FIDInceptionV3, tmp_path: Path) -> None:
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), pth)  # as pytorch-fid's file: a plain state dict (with num_batches_tracked)
    st = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in network.state_dict().items() if "num_batches" not in k}, str(st))
    for path in (pth, st):
        loaded = load_inception(path)
        for key, value in network.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_or_mismatched_weights_are_clear_errors(network: FIDInceptionV3, tmp_path: Path) -> None:
    state = network.state_dict()
    with pytest.raises(CheckpointError, match="nope.pth does not exist.*FID Inception"):
        load_inception(tmp_path / "nope.pth")
    broken = dict(state)
    del broken["Mixed_6c.branch7x7_1.conv.weight"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing.pth.*'Mixed_6c.branch7x7_1.conv.weight' of shape \(160, 768"):
        load_inception(tmp_path / "missing.pth")
    bad = dict(state)
    bad["fc.weight"] = torch.zeros(1000, 2048)  # torchvision's ImageNet head: not the FID network
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape.pth.*'fc.weight' has shape \(1000, 2048\), expected \(1008"):
        load_inception(tmp_path / "shape.pth")
    extra = dict(state, **{"AuxLogits.fc.weight": torch.zeros(1008, 768)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="unexpected.*AuxLogits.fc.weight"):
        load_inception(tmp_path / "extra.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth is not a readable"):
        load_inception(tmp_path / "garbage.pth")


def test_tensorflow_average_pool_ignores_the_padding() -> None:
    x = torch.full((1, 2, 5, 5), 3.0)
    assert torch.equal(_avg_pool_tf(x), x)  # borders too: zero padding is not averaged in


def test_features_of_a_tiny_batch(network: FIDInceptionV3, tmp_path: Path) -> None:
    torch.save(network.state_dict(), tmp_path / "w.pth")
    extractor = InceptionFeatures(tmp_path / "w.pth")
    images = torch.rand(2, 1, 8, 8)  # grayscale: repeated to RGB; resized to 299x299 inside
    both = extractor(images)
    assert both.shape == (2, 2048) and torch.isfinite(both).all() and (both >= 0).all()  # after ReLU and pooling
    assert torch.allclose(extractor(images[1:]), both[1:], atol=1e-5)  # no batch dependence
    assert extractor.name.startswith("inception-")


def reference_module() -> ModuleType:
    """tests/fixtures/inception/make_reference.py: seeded weights and an Inception written without diffusionlab."""
    spec = importlib.util.spec_from_file_location("inception_reference", REFERENCE / "make_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference() -> tuple[ModuleType, dict]:
    return reference_module(), json.loads((REFERENCE / "reference.json").read_text())


@pytest.mark.parametrize("shape", [(2, 3, 21, 34), (1, 3, 320, 301), (1, 3, 299, 299)])
def test_preprocessing_is_a_half_pixel_bilinear_resize_to_299_then_minus_one_to_one(reference, shape) -> None:  # type: ignore[no-untyped-def]
    ref, _ = reference
    images = torch.from_numpy(np.random.default_rng(sum(shape)).random(shape))
    expected = ref.preprocess(images.numpy())
    ours = inception_input(images)  # float64 in, float64 out: the same formula agrees to round-off
    assert ours.shape == (shape[0], 3, 299, 299)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-12)
    # as the network runs it, in float32 (its source coordinates too are float32: ~1e-5 off)
    np.testing.assert_allclose(inception_input(images.float()).double().numpy(), expected, rtol=0, atol=1e-4)
    if shape[2:] == (299, 299):  # no resize at all: exactly 2x - 1
        assert torch.equal(ours, 2.0 * images - 1.0)


def test_preprocessing_of_the_fixture_inputs(reference) -> None:  # type: ignore[no-untyped-def]
    ref, fixture = reference
    images = ref.reference_inputs()
    assert list(images.shape) == fixture["input_shape"]
    first = inception_input(images)[:, 0, 0, :8].double().numpy()
    np.testing.assert_allclose(first, fixture["preprocessed_first"], rtol=0, atol=1e-6)
    for level in (0.0, 0.25, 1.0):  # a flat image stays flat, [0, 1] -> [-1, 1]
        flat = inception_input(torch.full((1, 3, 5, 7), level, dtype=torch.float64))
        torch.testing.assert_close(flat, torch.full((1, 3, 299, 299), 2 * level - 1, dtype=torch.float64))


def test_forward_pass_matches_the_independent_reference(reference, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ref, fixture = reference
    assert (fixture["weights_seed"], fixture["inputs_seed"]) == (ref.WEIGHTS_SEED, ref.INPUTS_SEED)
    save_file(ref.reference_weights(fixture["weights_seed"]), str(tmp_path / "seeded.safetensors"))
    extractor = InceptionFeatures(tmp_path / "seeded.safetensors")  # the loading path users take
    images = ref.reference_inputs(fixture["inputs_seed"])
    features = extractor(images).double()
    # float32 here against float64 there: agreement to ~1e-6 on O(1) values
    np.testing.assert_allclose(features[:, :8].numpy(), fixture["features_first"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(features.sum(1).numpy(), fixture["features_sum"], rtol=1e-5)
    np.testing.assert_allclose((features**2).sum(1).numpy(), fixture["features_sq_sum"], rtol=1e-5)
    logits = extractor.network.fc(features.float()).double()
    np.testing.assert_allclose(logits[:, :8].numpy(), fixture["logits_first"], rtol=0, atol=1e-4)
    gray = images[:1, :1]  # grayscale is the same image repeated to RGB
    torch.testing.assert_close(extractor(gray), extractor(gray.repeat(1, 3, 1, 1)), rtol=0, atol=0)
