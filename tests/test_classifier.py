"""Tests for diffusionlab.evaluation.classifier: accuracy on held-out digits, save/load, the cache."""

from __future__ import annotations

import pytest
import torch

from diffusionlab.data import load_digits_dataset
from diffusionlab.evaluation import (
    DomainClassifier,
    accuracy,
    digits_classifier,
    load_classifier,
    predict,
    save_classifier,
    train_classifier,
)
from diffusionlab.evaluation import classifier as classifier_module
from diffusionlab.io import CheckpointError, save_tensors

WIDTH = 16


@pytest.fixture(scope="module")
def digits():
    """The 16x16 digits, train and test split."""
    return load_digits_dataset(16, split="train"), load_digits_dataset(16, split="test")


@pytest.fixture(scope="module")
def trained(digits) -> DomainClassifier:
    """A quickly trained classifier (a couple of seconds)."""
    train, _ = digits
    return train_classifier(train.images, train.labels, num_classes=10, steps=200, width=WIDTH, seed=0)


def test_held_out_accuracy(trained, digits):
    _, test = digits
    assert accuracy(trained, test.images, test.labels) >= 0.9
    pred = predict(trained, test.images)
    assert pred.shape == (len(test),) and pred.dtype == torch.long


def test_training_is_deterministic_per_seed(digits):
    train, _ = digits
    x, y = train.images[:256], train.labels[:256]
    a = train_classifier(x, y, num_classes=10, steps=5, batch_size=32, width=8, seed=3)
    b = train_classifier(x, y, num_classes=10, steps=5, batch_size=32, width=8, seed=3)
    c = train_classifier(x, y, num_classes=10, steps=5, batch_size=32, width=8, seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_features_and_logits_shapes(trained, digits):
    _, test = digits
    x = test.images[:7]
    assert trained.features(x).shape == (7, trained.feature_dim) == (7, 4 * WIDTH)
    assert trained(x).shape == (7, 10)


def test_outputs_do_not_depend_on_batch_size(trained, digits):
    _, test = digits
    x = test.images[:16]
    with torch.no_grad():
        together = trained(x)
        alone = torch.cat([trained(x[i : i + 1]) for i in range(len(x))])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


def test_bad_input_is_one_clear_error(trained):
    with pytest.raises(ValueError, match=r"expected \(N, 1, 16, 16\)"):
        trained(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="multiple of 4"):
        DomainClassifier(1, 10, image_size=18)
    with pytest.raises(ValueError, match="label 10"):
        train_classifier(torch.zeros(4, 1, 16, 16), torch.tensor([0, 1, 2, 10]), num_classes=10, steps=1)


def test_save_load_round_trips_bit_for_bit(trained, digits, tmp_path):
    _, test = digits
    path = tmp_path / "sub" / "clf.safetensors"
    save_classifier(trained, path)
    loaded = load_classifier(path)
    assert loaded.config() == trained.config()
    with torch.no_grad():
        assert torch.equal(loaded(test.images), trained(test.images))
    assert [p.name for p in path.parent.iterdir()] == ["clf.safetensors"]  # no temporary files left


def test_missing_or_corrupted_file_raises_checkpoint_error(trained, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_classifier(tmp_path / "nope.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_classifier(garbage)
    good = tmp_path / "good.safetensors"
    save_classifier(trained, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        load_classifier(truncated)
    other = tmp_path / "other.safetensors"
    save_tensors({"w": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match="not a saved DomainClassifier"):
        load_classifier(other)


def test_digits_classifier_reuses_its_cache(trained, tmp_path, monkeypatch):
    # A cached file with the current recipe tag is loaded as is, without training.
    monkeypatch.setenv("DIFFUSIONLAB_CACHE", str(tmp_path))
    cached = tmp_path / "classifiers" / "digits-16.safetensors"
    save_classifier(trained, cached, recipe=classifier_module._DIGITS_RECIPE)

    def no_training(*args, **kwargs):
        raise AssertionError("digits_classifier retrained despite a valid cache")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    model = digits_classifier(16)
    assert model.config() == trained.config()
    assert torch.equal(model.head.weight, trained.head.weight)
    other_dir = tmp_path / "explicit"
    save_classifier(trained, other_dir / "digits-16.safetensors", recipe=classifier_module._DIGITS_RECIPE)
    assert digits_classifier(16, cache_dir=other_dir).config() == trained.config()


def test_the_shipped_digits_classifier_is_the_recipes_and_needs_no_training(tmp_path, monkeypatch):
    # A fresh machine (empty cache) gets the weights shipped in the package at 16x16, without a minute of training.
    def no_training(*args, **kwargs):
        raise AssertionError("digits_classifier trained although weights are shipped")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    model = digits_classifier(16, cache_dir=tmp_path / "empty")
    shipped = load_classifier(classifier_module.SHIPPED_WEIGHTS / "digits-16.safetensors")
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped.state_dict().values(), strict=True)
    )
    test = load_digits_dataset(16, split="test")
    assert accuracy(model, test.images, test.labels) >= 0.97  # measured 0.989 on the 359 held-out digits


def test_digits_classifier_rebuilds_a_corrupted_cache(trained, tmp_path, monkeypatch):
    cached = tmp_path / "digits-16.safetensors"
    cached.write_bytes(b"garbage")
    monkeypatch.setattr(classifier_module, "train_classifier", lambda *args, **kwargs: trained)
    monkeypatch.setattr(classifier_module, "SHIPPED_WEIGHTS", tmp_path / "none")  # nothing shipped to fall back on
    with pytest.warns(UserWarning, match="skipping an unreadable digits classifier"):
        model = digits_classifier(16, cache_dir=tmp_path)
    assert model is trained
    assert load_classifier(cached).config() == trained.config()  # the cache was rewritten
