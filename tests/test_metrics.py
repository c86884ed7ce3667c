"""Sample-quality metrics against exact answers: closed-form Frechet distances, unbiasedness, set identities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from diffusionlab.data import eight_gaussians_params, sample_eight_gaussians
from diffusionlab.evaluation import (
    ClassifierFeatures,
    DomainClassifier,
    PixelFeatures,
    density_coverage,
    extract_features,
    feature_statistics,
    fid_from_features,
    frechet_distance,
    gaussian_mixture_log_prob,
    kernel_inception_distance,
    mmd_rbf,
    precision_recall,
    reference_features,
    sliced_wasserstein,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form() -> None:
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # |m1 - m2|^2 + sum (sqrt v1 - sqrt v2)^2 = (1 + 0 + 6.25) + (4 + 1 + 0)
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(12.25, abs=1e-10)


def test_frechet_distance_of_commuting_covariances() -> None:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    a, b = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # same eigenvectors: (C1 C2)^1/2 = Q diag(sqrt(ab)) Q^T
    m1, m2 = rng.standard_normal(5), rng.standard_normal(5)
    expected = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(m1, c1, m1, c1) == pytest.approx(0.0, abs=1e-9)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2000, 16, generator=g) @ torch.randn(16, 16, generator=g)
    noise = torch.randn(2000, 16, generator=g)
    assert fid_from_features(base, base) < 1e-8
    fids = [fid_from_features(base, base + s * noise) for s in (0.1, 0.3, 1.0, 3.0)]
    assert all(b > a for a, b in zip(fids, fids[1:], strict=False)) and fids[0] > 1e-3


def test_fid_does_not_depend_on_the_feature_batch_size() -> None:
    torch.manual_seed(0)
    extractor = ClassifierFeatures(DomainClassifier(1, 10, 8, width=4))
    images = torch.rand(37, 1, 8, 8)
    other = (images + 0.2 * torch.rand(37, 1, 8, 8)).clamp(0, 1)
    feats = {b: extract_features(extractor, images, batch_size=b) for b in (1, 7, 64)}
    assert torch.allclose(feats[1], feats[7], atol=1e-6) and torch.allclose(feats[1], feats[64], atol=1e-6)
    scores = [fid_from_features(f, extract_features(extractor, other, batch_size=5)) for f in feats.values()]
    assert max(scores) - min(scores) < 1e-6 * max(1.0, scores[0])


def _biased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def test_kid_is_unbiased() -> None:
    rng = np.random.default_rng(0)
    unbiased, biased = [], []
    for i in range(200):  # independent pairs of samples of one distribution
        x, y = rng.standard_normal((40, 8)), rng.standard_normal((40, 8))
        unbiased.append(kernel_inception_distance(x, y, num_subsets=1, subset_size=40, seed=i)[0])
        biased.append(_biased_mmd2(x, y))
    sem = np.std(unbiased) / math.sqrt(len(unbiased))
    assert abs(np.mean(unbiased)) < 3 * sem  # expectation 0 ...
    assert np.mean(biased) > 10 * sem  # ... which the plain (V-statistic) estimate misses by far
    shifted = kernel_inception_distance(rng.standard_normal((200, 8)), rng.standard_normal((200, 8)) + 0.5)
    assert shifted[0] > 10 * max(shifted[1], sem)


def test_precision_recall_and_density_coverage_of_identical_and_disjoint_sets() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 4))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert density_coverage(x, x)[1] == 1.0
    far = x + 100.0
    assert precision_recall(x, far) == (0.0, 0.0)
    assert density_coverage(x, far) == (0.0, 0.0)
    # half the samples on the data, half far away: precision 1/2, and density/coverage see the same half
    half = np.concatenate([x[:150], far[:150]])
    assert precision_recall(x, half)[0] == 0.5
    # samples from the same distribution: precision, recall and coverage near 1, density near 1
    p, r = precision_recall(x, rng.standard_normal((300, 4)))
    d, c = density_coverage(x, rng.standard_normal((300, 4)))
    assert p > 0.8 and r > 0.8 and 0.7 < d < 1.3 and c > 0.8


def test_sliced_wasserstein_and_mmd() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = sample_eight_gaussians(1000, g), sample_eight_gaussians(1000, g)
    assert sliced_wasserstein(x, x) == 0.0
    shift = torch.tensor([0.6, -0.8])
    # a shift moves every 1-D projection by theta . shift: SW1 = mean |theta . shift| over the same directions
    rng = np.random.default_rng(3)
    dirs = rng.standard_normal((64, 2))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    expected = np.abs(dirs @ shift.double().numpy()).mean()
    assert sliced_wasserstein(x, x + shift, num_projections=64, seed=3) == pytest.approx(expected, rel=1e-6)
    assert sliced_wasserstein(x, y) < 0.1 < sliced_wasserstein(x, y + shift)
    same, shifted = mmd_rbf(x, y), mmd_rbf(x, y + shift)
    assert abs(same) < 0.005 and shifted > 20 * abs(same)


def test_gaussian_mixture_log_prob_matches_scipy() -> None:
    params = eight_gaussians_params()
    pts = sample_eight_gaussians(50, torch.Generator().manual_seed(1))
    ref = sum(
        w * multivariate_normal(m.double().numpy(), params.std**2 * np.eye(2)).pdf(pts.double().numpy())
        for m, w in zip(params.means, params.weights.tolist(), strict=True)
    )
    assert np.allclose(gaussian_mixture_log_prob(pts, params).numpy(), np.log(ref), atol=1e-9)


def test_reference_features_are_cached(tmp_path) -> None:  # type: ignore[no-untyped-def]
    calls = []

    class Counting(PixelFeatures):
        def __call__(self, images: torch.Tensor) -> torch.Tensor:
            calls.append(len(images))
            return super().__call__(images)

    images = torch.rand(20, 1, 4, 4)
    first = reference_features(Counting(), images, "digits", cache_dir=tmp_path)
    again = reference_features(Counting(), images, "digits", cache_dir=tmp_path)
    assert torch.equal(first, again) and calls == [20]  # the second call embeds nothing
    reference_features(Counting(), images * 0.5, "digits", cache_dir=tmp_path)  # other images: embedded anew
    assert calls == [20, 20]


def test_pca_pixel_features_and_statistics() -> None:
    images = torch.rand(50, 1, 4, 4)
    pca = PixelFeatures.fit_pca(images, 3)
    f = pca(images)
    assert f.shape == (50, 3) and abs(f.mean(0)).max() < 1e-5 and pca.name.startswith("pixels-pca3-")
    stats = feature_statistics(f)
    assert stats.count == 50 and stats.cov.shape == (3, 3)
    with pytest.raises(ValueError, match="PCA dim"):
        PixelFeatures.fit_pca(images, 99)


def test_bad_features_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="differ in dimension"):
        kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        fid_from_features(np.full((5, 2), np.nan), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="k=3"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))


def test_blockwise_distances_give_the_same_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusionlab.evaluation import metrics

    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((120, 5)), rng.standard_normal((90, 5)) + 0.3
    whole = precision_recall(x, y), density_coverage(x, y)
    monkeypatch.setattr(metrics, "_row_chunks", lambda n, other, budget=0: range(0, n, 7))
    assert (precision_recall(x, y), density_coverage(x, y)) == whole
