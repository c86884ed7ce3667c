"""The metrics ``accuracy`` (the domain classifier's verdict on class-conditional samples) and ``fid_real`` (FID of
real training images: FID's floor at the sample count), computed here independently with the cached digits
classifier, and where each applies."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from diffusionlab.config import DataConfig, ModelConfig, NetworkConfig
from diffusionlab.data import load_digits_dataset
from diffusionlab.evaluation import (
    DomainClassifier,
    classifier_cache_dir,
    default_metrics,
    digits_classifier,
    evaluate_model,
    fid_from_features,
    parse_metrics,
    predict,
)
from diffusionlab.evaluation.classifier import SHIPPED_WEIGHTS
from diffusionlab.sampling.request import SampleRequest

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16  # the digits classifier cached at this size (trained once, about a minute, if it is not)
NUM = 100  # samples: ten of each digit


class StubModel:
    """An ``EvaluableModel`` whose samples are fixed images in [0, 1]; records the requests it was asked."""

    device = torch.device("cpu")

    def __init__(self, config: ModelConfig, samples: Tensor) -> None:
        self.config, self.samples = config, samples
        self.requests: list[SampleRequest] = []

    def sample(self, num_samples: int | None = None, labels: Any = None, **keywords: Any) -> Tensor:
        assert num_samples == len(self.samples) and labels is None
        self.requests.append(keywords["request"])
        return self.samples.clone()

    def encode(self, data: Tensor) -> Tensor:
        return data * 2.0 - 1.0

    def guided_denoiser(self, num_samples: int, request: SampleRequest | None = None, **settings: Any) -> Any:
        raise AssertionError("no likelihood metric was asked for")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the digits classifier that ``digits_classifier`` reads (the user's cached one, else the
    one shipped with the package): the reference features these tests compute are written here, not to the user's
    cache. A fresh machine has no cached classifier."""
    digits_classifier(SIZE)
    folder = tmp_path_factory.mktemp("cache")
    name = f"digits-{SIZE}.safetensors"
    cached = classifier_cache_dir() / name
    shutil.copy(cached if cached.is_file() else SHIPPED_WEIGHTS / name, folder)
    return folder


@pytest.fixture(scope="module")
def classifier(cache: Path) -> DomainClassifier:
    return digits_classifier(SIZE, cache_dir=cache).eval()


def digits_config(num_classes: int = 10) -> ModelConfig:
    return ModelConfig(
        data=DataConfig(dataset="digits", image_size=SIZE, channels=1, num_classes=num_classes or None),
        network=NetworkConfig(num_classes=num_classes),
    )


def folder_config(folder: str, num_classes: int = 0) -> ModelConfig:
    return ModelConfig(
        data=DataConfig(dataset=folder, image_size=SIZE, channels=3, num_classes=num_classes or None),
        network=NetworkConfig(num_classes=num_classes),
    )


def to_8bit(images: Tensor) -> Tensor:
    return torch.round(images.clamp(0, 1) * 255) / 255


def held_out_digits(labels: list[int]) -> Tensor:
    """Held-out digits in [0, 1], one per label: the k-th test image of a digit for its k-th occurrence."""
    test = load_digits_dataset(SIZE, split="test")
    seen: dict[int, int] = {}
    rows = []
    for label in labels:
        k = seen.get(label, 0)
        seen[label] = k + 1
        rows.append(int(torch.nonzero(test.labels == label)[k]))
    return (test.images[rows] + 1.0) / 2.0


def classifier_features(classifier: DomainClassifier, images: Tensor) -> Tensor:
    """The classifier's penultimate features of images in [0, 1], as saved to 8-bit PNGs and mapped to [-1, 1]."""
    with torch.no_grad():
        return classifier.features(to_8bit(images) * 2.0 - 1.0)


def train_draw(seed: int, n: int) -> Tensor:
    """``n`` training digits in [0, 1], drawn without replacement by a generator seeded by ``seed``, in data order."""
    train = load_digits_dataset(SIZE, split="train")
    keep = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return (train.images[keep] + 1.0) / 2.0


# ------------------------------------------------------------------------------------------------- accuracy
@pytest.mark.parametrize("shift, bound", [(0, 0.9), (1, 0.2)])
def test_accuracy_is_the_classifiers_verdict_on_the_asked_labels(
    cache: Path, classifier: DomainClassifier, shift: int, bound: float
) -> None:
    asked = [i % 10 for i in range(NUM)]
    samples = held_out_digits([(label + shift) % 10 for label in asked])  # shift 1: every sample the next digit
    model = StubModel(digits_config(), samples)
    result = evaluate_model(model, "accuracy", num_samples=NUM, seed=0, cache_dir=str(cache))
    assert model.requests[0].conditioning.labels == asked
    predicted = predict(classifier, to_8bit(samples) * 2.0 - 1.0)
    expected = float((predicted == torch.tensor(asked)).float().mean())
    assert result["metrics"]["accuracy"] == expected
    assert expected > bound if shift == 0 else expected < bound


def test_accuracy_needs_the_domain_classifier(cache: Path) -> None:
    model = StubModel(digits_config(), held_out_digits([i % 10 for i in range(20)]))
    with pytest.raises(ValueError, match=r"^accuracy needs features 'classifier' \(a domain classifier\); got "):
        evaluate_model(model, "accuracy", num_samples=20, features="pixels", cache_dir=str(cache))


def test_default_metrics_with_pixel_features_evaluate(cache: Path) -> None:
    model = StubModel(digits_config(), held_out_digits([i % 10 for i in range(20)]))
    result = evaluate_model(model, None, num_samples=20, features="pixels", cache_dir=str(cache))
    assert result["features"] == "pixels" and result["metrics"]["fid"] > 0


# ------------------------------------------------------------------------------------------------- fid_real
def test_fid_real_is_the_fid_of_the_seeded_training_draw(cache: Path, classifier: DomainClassifier) -> None:
    n, seed = 50, 4
    model = StubModel(digits_config(), held_out_digits([i % 10 for i in range(n)]))
    result = evaluate_model(model, "fid,fid_real", num_samples=n, seed=seed, cache_dir=str(cache))
    reference = classifier_features(classifier, (load_digits_dataset(SIZE, split="test").images + 1.0) / 2.0)
    expected = fid_from_features(reference, classifier_features(classifier, train_draw(seed, n)))
    assert result["metrics"]["fid_real"] == pytest.approx(expected, rel=1e-5)
    samples_fid = fid_from_features(reference, classifier_features(classifier, model.samples))
    assert result["metrics"]["fid"] == pytest.approx(samples_fid, rel=1e-5)
    assert abs(expected - samples_fid) > 1e-3 * expected  # the two are told apart
    # a model whose samples are that very draw scores exactly fid_real
    perfect = StubModel(digits_config(), train_draw(seed, n))
    exact = evaluate_model(perfect, "fid,fid_real", num_samples=n, seed=seed, cache_dir=str(cache))["metrics"]
    assert exact["fid"] == exact["fid_real"] == result["metrics"]["fid_real"]


def test_fid_real_depends_on_the_seed_not_on_the_model(cache: Path) -> None:
    n = 20
    first = StubModel(digits_config(), held_out_digits([i % 10 for i in range(n)]))
    other = StubModel(digits_config(), held_out_digits([(i + 3) % 10 for i in range(n)]))

    def fid_real(model: StubModel, seed: int) -> float:
        return evaluate_model(model, "fid_real", num_samples=n, seed=seed, cache_dir=str(cache))["metrics"]["fid_real"]

    assert fid_real(first, 1) == fid_real(other, 1)
    assert fid_real(first, 2) == fid_real(other, 2)
    assert fid_real(first, 1) != fid_real(first, 2)


def test_fid_real_needs_as_many_training_images_as_samples(cache: Path) -> None:
    model = StubModel(digits_config(), torch.zeros(1500, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"^fid_real needs num_samples=1500 real training images; the train split "):
        evaluate_model(model, "fid_real", num_samples=1500, features="pixels", cache_dir=str(cache))


# ------------------------------------------------------------------------------------------------- where they apply
def test_accuracy_on_an_unconditional_model_is_refused() -> None:
    with pytest.raises(ValueError) as err:
        parse_metrics("fid,accuracy", digits_config(num_classes=0))
    assert str(err.value) == (
        "accuracy needs a class-conditional model of a labelled dataset (its domain classifier judges it)."
    )


def test_fid_real_on_an_image_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as err:
        parse_metrics(["fid_real"], folder_config(str(tmp_path)))
    assert str(err.value) == (
        f"fid_real needs a dataset with a test split (digits, mnist:, cifar10:); {str(tmp_path)!r} has none to "
        "hold the real images apart from."
    )


def test_default_metrics_include_them_where_they_apply(tmp_path: Path) -> None:
    assert default_metrics(digits_config()) == ("fid", "kid", "pr", "dc", "accuracy", "fid_real")
    assert default_metrics(digits_config(num_classes=0)) == ("fid", "kid", "pr", "dc", "fid_real")
    assert default_metrics(folder_config(str(tmp_path))) == ("fid", "kid", "pr", "dc")
    assert default_metrics(folder_config(str(tmp_path), num_classes=3)) == ("fid", "kid", "pr", "dc", "accuracy")
    assert parse_metrics(None, digits_config()) == default_metrics(digits_config())
