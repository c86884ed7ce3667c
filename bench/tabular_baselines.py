"""Two baselines for synthetic tables, for ``bench/tabular.py``: SMOTE-style interpolation and a Gaussian copula.

Both are pure functions ``(train, schema, n, seed) -> frame``: ``train`` holds the cells as read (str), the
result ``n`` rows of str cells in the schema's column order. A categorical cell is always a cell of the train
table (its spelling kept); a numeric one is clipped to the column's range (the schema's, else the train rows'),
rounded to an integer for an ``int`` column and to the column's ``decimals`` for a float one, and a missing
numeric cell is written "".

- ``smote_sample``: SMOTE (Chawla et al. 2002, sec. 4.2) as TabDDPM's baseline uses it (imbalanced-learn's
  variant): a train row drawn uniformly, one of its k = 5 nearest neighbours (of the same class when the target is
  categorical; Euclidean distance in ``distance_features``' space of the other columns), numeric columns at one
  uniform point of the segment between them (one gap per row, imbalanced-learn's choice; Chawla's pseudo-code draws
  one per column), a numeric cell missing in either row and every categorical cell taken from one of the two rows
  at random.
- ``gaussian_copula_sample``: SDV's GaussianCopula approach. Each column becomes normal scores: a numeric column
  through its empirical CDF (mid-ranks, (rank - 1/2) / m), a categorical one through its frequency CDF (the
  categories by decreasing frequency split [0, 1] into intervals of their frequencies; a cell becomes a uniform
  draw inside its interval, as rdt's FrequencyEncoder with noise), a numeric column with missing cells adds such a
  missing indicator (a missing cell's own score is 0). Samples are drawn from the normal with the correlation
  matrix of these scores and mapped back by the empirical quantiles (numeric) or the intervals (categorical).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri
from sklearn.neighbors import NearestNeighbors

from diffusionlab.config import ColumnSchema, TableSchema
from diffusionlab.evaluation.tabular import MISSING, categorical_values, distance_features, numeric_values

__all__ = ["smote_sample", "gaussian_copula_sample", "format_numeric"]


def format_numeric(values: np.ndarray, column: ColumnSchema, train_values: np.ndarray) -> np.ndarray:
    """Numeric values as cells: clipped to the column's range (schema, else ``train_values``), an ``int`` column
    rounded to integers, a float one to its ``decimals`` (else the shortest repr); NaN as ""."""
    present = train_values[~np.isnan(train_values)]
    low = column.minimum if column.minimum is not None else (float(present.min()) if len(present) else -np.inf)
    high = column.maximum if column.maximum is not None else (float(present.max()) if len(present) else np.inf)
    out = np.full(len(values), "", dtype=object)
    keep = ~np.isnan(values)
    clipped = np.clip(values[keep], low, high)
    if column.dtype == "int":
        cells = [str(int(v)) for v in np.rint(clipped)]
    elif column.decimals is not None:
        cells = [f"{v:.{column.decimals}f}" for v in np.round(clipped, column.decimals) + 0.0]
    else:
        cells = [repr(float(v)) for v in clipped + 0.0]
    out[keep] = cells
    return out


def _cells(frame: pd.DataFrame, name: str) -> np.ndarray:
    return np.asarray(frame[name].to_numpy(dtype=object, na_value=""), dtype=object)


def _neighbours(features: np.ndarray, rows: np.ndarray, k: int) -> list[np.ndarray]:
    """For each of ``rows`` (indices into ``features``) its k nearest other rows of ``rows`` (itself if alone)."""
    if len(rows) == 1:
        return [rows]
    found = NearestNeighbors(n_neighbors=min(k + 1, len(rows))).fit(features[rows]).kneighbors(features[rows])[1]
    out = []
    for position, near in enumerate(found):
        others = near[near != position]  # itself, wherever a duplicate put it in the list
        out.append(rows[others[:k]])
    return out


def smote_sample(
    train: pd.DataFrame, schema: TableSchema, n: int, seed: int = 0, k: int = 5, target: str | None = None
) -> pd.DataFrame:
    """``n`` rows interpolated between train rows and one of their ``k`` nearest neighbours (SMOTE, Chawla et al.
    2002), neighbours of the same class when the target (``target`` or the schema's) is categorical."""
    rng = np.random.default_rng(seed)
    target = target or schema.target
    groups: dict[str, np.ndarray]
    target_column = next((c for c in schema.columns if c.name == target), None)
    if target_column is not None and target_column.kind == "categorical":
        classes = categorical_values(train, target_column).astype(str)
        groups = {label: np.flatnonzero(classes == label) for label in np.unique(classes)}
        space = TableSchema(columns=[c for c in schema.columns if c.name != target])  # constant within a class
    else:
        groups, space = {"": np.arange(len(train))}, schema
    features = distance_features([train], space)[0]
    neighbours: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(train)
    for rows in groups.values():
        for row, near in zip(rows, _neighbours(features, rows, k), strict=True):
            neighbours[row] = near
    first = rng.integers(0, len(train), size=n)
    second = np.array([neighbours[i][rng.integers(len(neighbours[i]))] for i in first], dtype=np.int64)
    gap = rng.random(n)
    columns = {}
    for column in schema.columns:
        cells = _cells(train, column.name)
        either = np.where(rng.random(n) < 0.5, first, second)
        if column.kind == "categorical":
            columns[column.name] = cells[either]
            continue
        values = numeric_values(train, column)
        a, b = values[first], values[second]
        both = ~(np.isnan(a) | np.isnan(b))
        out = cells[either].copy()
        out[both] = format_numeric(a[both] + gap[both] * (b[both] - a[both]), column, values)
        columns[column.name] = out
    return pd.DataFrame(columns, columns=[c.name for c in schema.columns])


def _frequency_intervals(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Categories by decreasing frequency (ties in first-seen order), their interval starts and widths in [0, 1]."""
    labels, first, counts = np.unique(cells.astype(str), return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))
    widths = counts[order] / len(cells)
    starts = np.concatenate([[0.0], np.cumsum(widths)[:-1]])
    return labels[order], starts, widths


def _uniform(u: np.ndarray) -> np.ndarray:
    """u kept inside (0, 1) so that its normal score is finite."""
    return np.clip(u, 1e-9, 1 - 1e-9)


class _Categorical:
    """A categorical variable (a column or a missing indicator) through its frequency CDF."""

    def __init__(self, cells: np.ndarray) -> None:
        self.labels, self.starts, self.widths = _frequency_intervals(cells)
        self.cells = cells

    def scores(self, rng: np.random.Generator) -> np.ndarray:
        ids = {label: i for i, label in enumerate(self.labels)}
        index = np.array([ids[c] for c in self.cells.astype(str)])
        return ndtri(_uniform(self.starts[index] + rng.random(len(index)) * self.widths[index]))

    def decode(self, u: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(self.starts, u, side="right") - 1, 0, len(self.labels) - 1)
        return self.labels[index]


class _Numeric:
    """A numeric column through its empirical CDF, with a missing indicator when it has missing cells."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.missing = np.isnan(values)
        self.present = np.sort(values[~self.missing])
        self.indicator = _Categorical(np.where(self.missing, MISSING, "")) if self.missing.any() else None

    def scores(self, rng: np.random.Generator) -> list[np.ndarray]:
        z = np.zeros(len(self.values))
        if len(self.present):
            ranks = pd.Series(self.values[~self.missing]).rank(method="average").to_numpy()
            z[~self.missing] = ndtri(_uniform((ranks - 0.5) / len(self.present)))
        return [z] if self.indicator is None else [z, self.indicator.scores(rng)]

    def decode(self, u: np.ndarray) -> np.ndarray:
        drawn = np.quantile(self.present, u[:, 0]) if len(self.present) else np.full(len(u), np.nan)
        if self.indicator is not None:
            drawn[self.indicator.decode(u[:, 1]) == MISSING] = np.nan
        return drawn


def gaussian_copula_sample(train: pd.DataFrame, schema: TableSchema, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows from a Gaussian copula of the train rows (SDV's GaussianCopula): empirical marginals, the
    correlation of the normal scores."""
    rng = np.random.default_rng(seed)
    scores: list[np.ndarray] = []
    plan: list[tuple[ColumnSchema, _Categorical | _Numeric, slice]] = []
    for column in schema.columns:
        if column.kind == "categorical":
            variable: _Categorical | _Numeric = _Categorical(_cells(train, column.name))
            own = [variable.scores(rng)]
        else:
            variable = _Numeric(numeric_values(train, column))
            own = variable.scores(rng)
        plan.append((column, variable, slice(len(scores), len(scores) + len(own))))
        scores += own
    matrix = np.stack(scores, axis=1) if scores else np.zeros((len(train), 0))
    factor = np.linalg.cholesky(_correlation(matrix))
    u = ndtr(rng.standard_normal((n, matrix.shape[1])) @ factor.T)
    columns = {}
    for column, variable, where in plan:
        if isinstance(variable, _Categorical):
            columns[column.name] = variable.decode(u[:, where.start]).astype(object)
        else:
            columns[column.name] = format_numeric(variable.decode(u[:, where]), column, variable.values)
    return pd.DataFrame(columns, columns=[c.name for c in schema.columns])


def _correlation(scores: np.ndarray) -> np.ndarray:
    """The correlation matrix of the normal scores, positive definite: a constant score is uncorrelated, and the
    eigenvalues are floored at 1e-6 before the diagonal is rescaled to 1."""
    d = scores.shape[1]
    centred = scores - scores.mean(axis=0)
    norms = np.sqrt((centred**2).sum(axis=0))
    safe = np.where(norms > 0, norms, 1.0)
    correlation = (centred.T @ centred) / np.outer(safe, safe)
    correlation[norms == 0, :] = 0.0
    correlation[:, norms == 0] = 0.0
    np.fill_diagonal(correlation, 1.0)
    eigenvalues, vectors = np.linalg.eigh(correlation)
    correlation = (vectors * np.maximum(eigenvalues, 1e-6)) @ vectors.T
    scale = np.sqrt(np.diag(correlation))
    return correlation / np.outer(scale, scale) if d else correlation
