"""Sample-quality metrics on feature vectors: FID, KID, precision/recall, density/coverage (floor 3).

Every function takes two sets of features (N, D) (real first, then generated) as tensors or arrays and
computes in float64 on the CPU. None of them sees images, so each works with any ``FeatureExtractor``; and
none depends on how the features were batched (the fault of lucidrains #224): statistics are taken over the
whole set at once.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FeatureStatistics",
    "feature_statistics",
    "frechet_distance",
    "fid_from_features",
    "kernel_inception_distance",
    "precision_recall",
    "density_coverage",
    "pairwise_distances",
]

ArrayLike = Tensor | np.ndarray


class FeatureStatistics(NamedTuple):
    """Mean (D,) and covariance (D, D) of a set of features, and how many features they came from."""

    mean: np.ndarray
    cov: np.ndarray
    count: int


def _as_features(x: ArrayLike, name: str, min_rows: int = 1) -> np.ndarray:
    array = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of features (N, D), got shape {array.shape}.")
    if len(array) < min_rows:
        raise ValueError(f"{name} has {len(array)} feature vectors; at least {min_rows} are needed.")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite values; check the images and the feature extractor.")
    return array


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the two feature sets differ in dimension ({a.shape[1]} vs {b.shape[1]}); use one extractor.")


def feature_statistics(features: ArrayLike) -> FeatureStatistics:
    """Mean and unbiased covariance (ddof = 1, as pytorch-fid) of features (N, D), N >= 2."""
    f = _as_features(features, "features", min_rows=2)
    return FeatureStatistics(f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]), len(f))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues -> 0)."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mean1: ArrayLike, cov1: ArrayLike, mean2: ArrayLike, cov2: ArrayLike) -> float:
    """Squared Frechet (2-Wasserstein) distance of N(mean1, cov1) and N(mean2, cov2).

    d^2 = |m1 - m2|^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2)) (Dowson & Landau 1982; FID, Heusel et al. 2017 eq. 6).
    Tr (C1 C2)^(1/2) = sum of the square roots of the eigenvalues of the symmetric PSD C1^(1/2) C2 C1^(1/2),
    which has the same spectrum; so no non-symmetric matrix square root (and no imaginary parts) is needed.
    """
    m1, m2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mean1, mean2))
    c1, c2 = (np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in (cov1, cov2))
    d = m1.shape[0]
    if m2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(
            f"means {m1.shape}, {m2.shape} and covariances {c1.shape}, {c2.shape} do not fit; expected (D,) and (D, D)."
        )
    root1 = _psd_sqrt(c1)
    middle = root1 @ c2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    value = float(((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2.0 * trace_sqrt)
    return max(value, 0.0)


def fid_from_features(real: ArrayLike | FeatureStatistics, fake: ArrayLike | FeatureStatistics) -> float:
    """FID between two feature sets (or their precomputed statistics)."""
    s1 = real if isinstance(real, FeatureStatistics) else feature_statistics(real)
    s2 = fake if isinstance(fake, FeatureStatistics) else feature_statistics(fake)
    if s1.mean.shape != s2.mean.shape:
        raise ValueError(f"the two feature sets differ in dimension ({s1.mean.shape[0]} vs {s2.mean.shape[0]}).")
    return frechet_distance(s1.mean, s1.cov, s2.mean, s2.cov)


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / d + 1)^3 (Binkowski et al. 2018, sec. 3 and eq. 3)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    m, n = len(x), len(y)
    sum_xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    sum_yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sum_xx + sum_yy - 2.0 * kxy.mean())


def kernel_inception_distance(
    real: ArrayLike, fake: ArrayLike, num_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID: mean and standard deviation over ``num_subsets`` random subsets of the unbiased polynomial-kernel MMD^2.

    Each subset draws ``min(subset_size, len(real), len(fake))`` features of each set without replacement
    (Binkowski et al. 2018, as in their code and torch-fidelity). The estimate is unbiased: its expectation is 0
    when both sets come from one distribution, so it may be slightly negative.
    """
    a, b = _as_features(real, "real features", 2), _as_features(fake, "generated features", 2)
    _same_dim(a, b)
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"num_subsets={num_subsets} must be >= 1 and subset_size={subset_size} >= 2.")
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [
        _polynomial_mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
        for _ in range(num_subsets)
    ]
    return float(np.mean(values)), float(np.std(values))


def pairwise_distances(x: ArrayLike, y: ArrayLike) -> Tensor:
    """Euclidean distances (N, M) in float64, sqrt(|x|^2 + |y|^2 - 2 x.y)."""
    a = torch.as_tensor(_as_features(x, "x"))
    b = torch.as_tensor(_as_features(y, "y"))
    d2 = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return d2.clamp_(min=0.0).sqrt_()


def _row_chunks(n: int, other: int, budget: int = 2**24) -> range:
    """Start indices of row blocks whose (rows x other) distance matrix stays within ``budget`` entries."""
    return range(0, n, max(1, budget // max(other, 1)))


def _knn_radii(features: np.ndarray, k: int) -> Tensor:
    """Distance of each point to its k-th nearest other point (the (k+1)-th smallest including itself)."""
    if not 1 <= k < len(features):
        raise ValueError(f"k={k} nearest neighbours need at least {k + 1} feature vectors, got {len(features)}.")
    step = _row_chunks(len(features), len(features)).step
    parts = [
        pairwise_distances(features[i : i + step], features).kthvalue(k + 1, dim=1).values
        for i in range(0, len(features), step)
    ]
    return torch.cat(parts)


def _balls(centers: np.ndarray, radii: Tensor, queries: np.ndarray) -> tuple[Tensor, Tensor]:
    """For k-NN balls B(centers_i, radii_i): how many balls hold each query (M,), and which balls hold any (N,)."""
    counts = torch.zeros(len(queries), dtype=torch.int64)
    hit = torch.zeros(len(centers), dtype=torch.bool)
    step = _row_chunks(len(queries), len(centers)).step
    for j in range(0, len(queries), step):
        inside = pairwise_distances(centers, queries[j : j + step]) <= radii[:, None]  # (N, chunk)
        counts[j : j + step] = inside.sum(0)
        hit |= inside.any(1)
    return counts, hit


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 1-2) with k-NN balls (k = 3 in the paper).

    precision: share of generated features inside the k-NN ball of some real feature; recall: share of real
    features inside the k-NN ball of some generated feature. Distances are computed in blocks, so large sets fit.
    """
    a, b = _as_features(real, "real features"), _as_features(fake, "generated features")
    _same_dim(a, b)
    in_real, _ = _balls(a, _knn_radii(a, k), b)
    in_fake, _ = _balls(b, _knn_radii(b, k), a)
    return (in_real > 0).double().mean().item(), (in_fake > 0).double().mean().item()


def density_coverage(real: ArrayLike, fake: ArrayLike, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, eq. 3-4) with k-NN balls around the real features (k = 5).

    density = (1 / kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]  (may exceed 1);
    coverage = (1 / N) sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))].
    """
    a, b = _as_features(real, "real features"), _as_features(fake, "generated features")
    _same_dim(a, b)
    counts, covered = _balls(a, _knn_radii(a, k), b)
    return counts.sum().item() / (k * len(b)), covered.double().mean().item()
