"""Fidelity, utility and privacy of a synthetic table against the real one (floor 3).

Frames hold the cells as read (str); the schema says how to parse them: a numeric cell is a float through
``pandas.to_numeric`` (an empty, unparseable or non-finite cell is missing), a categorical cell is its spelling,
and a cell spelled as missing ("", "NA", "nan", ...) that is not one of the column's categories is one category,
"missing". Every score here is computed by this module (numpy, scipy, scikit-learn), not by ``sdmetrics``:

- ``column_shapes``: SDMetrics' KSComplement (1 - the two-sample Kolmogorov-Smirnov statistic over the present
  values) of a numeric column, TVComplement (1 - the total variation distance of the category frequencies,
  missing counted as a category) of a categorical one; 1 is identical.
- ``pair_trends``: SDMetrics' CorrelationSimilarity (1 - |r_real - r_synth| / 2, Pearson over rows where both are
  present) of two numeric columns, ContingencySimilarity (1 - the total variation distance of the joint
  frequencies) of a pair with a categorical column, a numeric one binned into 10 quantile bins of the real column
  (missing its own bin).
- ``ml_efficacy``: scikit-learn's HistGradientBoosting trained on one frame, scored on another: macro F1 for a
  categorical target (also for two classes: TabDDPM's F1, e.g. adult .815 for train-on-real, is the macro average
  of its classification report), R^2 for a numeric one.
- ``privacy_scores``: distance to closest record (DCR) in the space of ``distance_features``, share of synthetic
  rows closer to train than to an equal-size holdout (TabSyn, Zhang et al. 2024, ideal 0.5), exact copies, and a
  DCR-based membership-inference attack (its AUC; 0.5 is no leak).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.metrics import accuracy_score, f1_score, r2_score, roc_auc_score
from sklearn.neighbors import NearestNeighbors

from diffusionlab.config import ColumnSchema, TableSchema
from diffusionlab.io import atomic_path

__all__ = [
    "MISSING",
    "numeric_values",
    "categorical_values",
    "column_shapes",
    "pair_trends",
    "ml_efficacy",
    "privacy_scores",
    "distance_features",
    "association_matrix",
    "table_report",
    "plot_table_report",
]

MISSING = "\x00missing"  # the category of a missing categorical cell
_MISSING_SPELLINGS = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})  # data.table's, stripped
_BINS = 10  # quantile bins of a numeric column in a contingency table (SDMetrics' ContingencySimilarity)
_MAX_PAIRS = 1225  # all pairs of up to 50 columns; a wider table gets a seeded sample of this many
_HGB_MAX_CODES = 255  # HistGradientBoosting's categorical features take codes below max_bins (255)
_DENSE_WIDTH = 512  # distance features wider than this are a sparse matrix


def _cells(frame: pd.DataFrame, name: str) -> np.ndarray:
    """A column's cells as a numpy array of str, a missing (NaN/None) cell as ""."""
    if name not in frame.columns:
        raise ValueError(f"the frame has no column {name!r} (columns: {', '.join(map(str, frame.columns))}).")
    values = frame[name].to_numpy(dtype=object, na_value="")
    return np.asarray([str(v) for v in values], dtype=str) if len(values) else np.zeros(0, dtype=str)


def numeric_values(frame: pd.DataFrame, column: ColumnSchema) -> np.ndarray:
    """A numeric column as float64, NaN where the cell is missing, unparseable or not finite."""
    cells = pd.Series(np.char.strip(_cells(frame, column.name)), dtype=object)
    out = pd.to_numeric(cells, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


def categorical_values(frame: pd.DataFrame, column: ColumnSchema) -> np.ndarray:
    """A categorical column as its spellings, a missing cell (a missing spelling once stripped of surrounding
    spaces, and not itself one of the column's categories) as ``MISSING``."""
    cells = _cells(frame, column.name)
    missing = np.isin(np.char.strip(cells), sorted(_MISSING_SPELLINGS)) & ~np.isin(cells, column.categories or [])
    out = cells.astype(object)
    out[missing] = MISSING
    return out


def _codes(real: np.ndarray, synth: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer codes of two label arrays over the union of their labels, and the number of labels."""
    labels, inverse = np.unique(np.concatenate([real, synth]).astype(str), return_inverse=True)
    return inverse[: len(real)], inverse[len(real) :], len(labels)


def _quantile_bins(real: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Bin ids of ``values`` in ``_BINS`` quantile bins of the real column's present values; missing: its own bin."""
    present = real[~np.isnan(real)]
    edges = np.unique(np.quantile(present, np.linspace(0, 1, _BINS + 1)[1:-1])) if len(present) else np.zeros(0)
    bins = np.searchsorted(edges, values, side="right")
    bins[np.isnan(values)] = len(edges) + 1
    return bins, len(edges) + 2


def _ks_complement(real: np.ndarray, synth: np.ndarray) -> float:
    """1 - sup_x |F_real(x) - F_synth(x)| over the present values (the KS statistic, exact)."""
    a, b = np.sort(real[~np.isnan(real)]), np.sort(synth[~np.isnan(synth)])
    if len(a) == 0 or len(b) == 0:
        return 1.0 if len(a) == len(b) else 0.0
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(1.0 - np.max(np.abs(cdf_a - cdf_b)))


def _tv_complement(real: np.ndarray, synth: np.ndarray, size: int) -> float:
    """1 - total variation distance, 1/2 sum |p - q|, of two integer-coded samples over ``size`` codes."""
    if len(real) == 0 or len(synth) == 0:
        return 1.0 if len(real) == len(synth) else 0.0
    p = np.bincount(real, minlength=size) / len(real)
    q = np.bincount(synth, minlength=size) / len(synth)
    return float(1.0 - 0.5 * np.abs(p - q).sum())


def column_shapes(real: pd.DataFrame, synth: pd.DataFrame, schema: TableSchema) -> dict[str, float]:
    """Per column, in CSV order: the KS complement (numeric, present values) or TV complement (categorical)."""
    scores = {}
    for column in schema.columns:
        if column.kind == "numeric":
            scores[column.name] = _ks_complement(numeric_values(real, column), numeric_values(synth, column))
        else:
            a, b, size = _codes(categorical_values(real, column), categorical_values(synth, column))
            scores[column.name] = _tv_complement(a, b, size)
    return scores


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r over the rows where both are present; 0 where it is undefined (fewer than 2 rows, a constant)."""
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 2:
        return 0.0
    x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
    denominator = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / denominator if denominator > 0 else 0.0


def _pair_codes(real: pd.DataFrame, synth: pd.DataFrame, column: ColumnSchema) -> tuple[np.ndarray, np.ndarray, int]:
    """A column as integer codes for a contingency table: categories, or quantile bins of the real column."""
    if column.kind == "categorical":
        return _codes(categorical_values(real, column), categorical_values(synth, column))
    a, b = numeric_values(real, column), numeric_values(synth, column)
    (bins_a, size), (bins_b, _) = _quantile_bins(a, a), _quantile_bins(a, b)
    return bins_a, bins_b, size


def _pairs(n: int, max_pairs: int, seed: int) -> list[tuple[int, int]]:
    """All pairs (i < j) of n columns, or a seeded sample of ``max_pairs`` of them in order."""
    pairs = list(itertools.combinations(range(n), 2))
    if len(pairs) > max_pairs:
        chosen = np.sort(np.random.default_rng(seed).choice(len(pairs), size=max_pairs, replace=False))
        pairs = [pairs[i] for i in chosen]
    return pairs


def pair_trends(
    real: pd.DataFrame, synth: pd.DataFrame, schema: TableSchema, max_pairs: int = _MAX_PAIRS, seed: int = 0
) -> dict[str, float]:
    """Per pair "a|b" (CSV order): correlation similarity (two numeric) or contingency similarity (else).

    All pairs up to ``max_pairs`` (1225: every pair of 50 columns); a wider table gets a seeded sample of pairs.
    """
    columns = schema.columns
    numeric = {c.name: (numeric_values(real, c), numeric_values(synth, c)) for c in columns if c.kind == "numeric"}
    codes: dict[str, tuple[np.ndarray, np.ndarray, int]] = {}
    scores = {}
    for i, j in _pairs(len(columns), max_pairs, seed):
        a, b = columns[i], columns[j]
        if a.kind == "numeric" and b.kind == "numeric":
            (ra, sa), (rb, sb) = numeric[a.name], numeric[b.name]
            score = 1.0 - abs(_pearson(ra, rb) - _pearson(sa, sb)) / 2.0
        else:
            for c in (a, b):
                if c.name not in codes:
                    codes[c.name] = _pair_codes(real, synth, c)
            (ra, sa, ka), (rb, sb, kb) = codes[a.name], codes[b.name]
            score = _tv_complement(ra * kb + rb, sa * kb + sb, ka * kb)
        scores[f"{a.name}|{b.name}"] = score
    return scores


def _column(schema: TableSchema, name: str) -> ColumnSchema:
    for column in schema.columns:
        if column.name == name:
            return column
    raise ValueError(f"no column {name!r} in the table (columns: {', '.join(c.name for c in schema.columns)}).")


def _feature_matrices(
    train: pd.DataFrame, test: pd.DataFrame, columns: list[ColumnSchema]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features for HistGradientBoosting: numeric as floats (NaN missing), categorical as ordinal codes.

    A categorical column's codes are its schema categories in order (without any: the train values, sorted), then
    missing, then any other spelling; one with more codes than HistGradientBoosting's 255 bins is passed as its
    (ordered) codes instead. Returns the train and test matrices and which columns are categorical.
    """
    matrices = np.zeros((len(train), len(columns))), np.zeros((len(test), len(columns)))
    is_categorical = np.zeros(len(columns), dtype=bool)
    for k, column in enumerate(columns):
        if column.kind == "numeric":
            for matrix, frame in zip(matrices, (train, test), strict=True):
                matrix[:, k] = numeric_values(frame, column)
            continue
        values = [categorical_values(frame, column) for frame in (train, test)]
        categories = column.categories or sorted(set(values[0]) - {MISSING})
        ids = {c: i for i, c in enumerate(categories)} | {MISSING: len(categories)}
        for matrix, v in zip(matrices, values, strict=True):
            matrix[:, k] = [ids.get(cell, len(categories) + 1) for cell in v]
        is_categorical[k] = len(categories) + 2 <= _HGB_MAX_CODES
    return matrices[0], matrices[1], is_categorical


def ml_efficacy(
    train: pd.DataFrame, test: pd.DataFrame, schema: TableSchema, target: str, seed: int = 0
) -> dict[str, Any]:
    """Train HistGradientBoosting on ``train``, score on ``test``: macro F1 (categorical target) or R^2 (numeric).

    Returns {"task", "metric": "f1" | "r2", "score", "train_rows", "test_rows"} (+ "accuracy" for classification);
    a score that is undefined (a constant numeric test target) is None.
    """
    target_column = _column(schema, target)
    features = [c for c in schema.columns if c.name != target]
    if not features:
        raise ValueError(f"the table has no column besides the target {target!r} to predict it from.")
    x_train, x_test, categorical = _feature_matrices(train, test, features)
    if target_column.kind == "categorical":
        y_train = categorical_values(train, target_column).astype(str)
        y_test = categorical_values(test, target_column).astype(str)
        if len(np.unique(y_train)) == 1:  # a synthetic table of one class: the model predicts that class
            predicted = np.full(len(y_test), y_train[0])
        else:
            model = HistGradientBoostingClassifier(categorical_features=categorical, random_state=seed)
            predicted = model.fit(x_train, y_train).predict(x_test)
        score = f1_score(y_test, predicted, average="macro", zero_division=0)
        return {
            "task": "classification",
            "metric": "f1",
            "score": float(score),
            "accuracy": float(accuracy_score(y_test, predicted)),
            "train_rows": len(y_train),
            "test_rows": len(y_test),
        }
    y_train, y_test = numeric_values(train, target_column), numeric_values(test, target_column)
    keep_train, keep_test = ~np.isnan(y_train), ~np.isnan(y_test)
    model = HistGradientBoostingRegressor(categorical_features=categorical, random_state=seed)
    model.fit(x_train[keep_train], y_train[keep_train])
    y_true, predicted = y_test[keep_test], model.predict(x_test[keep_test])
    defined = len(y_true) >= 2 and np.ptp(y_true) > 0
    return {
        "task": "regression",
        "metric": "r2",
        "score": float(r2_score(y_true, predicted)) if defined else None,
        "train_rows": int(keep_train.sum()),
        "test_rows": int(keep_test.sum()),
    }


def distance_features(frames: Sequence[pd.DataFrame], schema: TableSchema) -> list[np.ndarray | sparse.csr_matrix]:
    """Rows of each frame in one normalised space whose Euclidean distance is the DCR's.

    The first frame is the reference (the real train rows). A numeric column is scaled by its reference range,
    (x - min) / (max - min), so a difference counts at most 1 within that range; a missing cell sits at the
    reference median and sets an indicator of weight 1 (present against missing adds 1 to the squared distance).
    A categorical column is one-hot over every value seen in any frame (missing its own value), each entry
    1/sqrt(2), so that a mismatch adds exactly 1 to the squared distance. Wider than 512 features: sparse rows.
    """
    if not frames:
        return []
    blocks: list[list[Any]] = [[] for _ in frames]
    for column in schema.columns:
        if column.kind == "numeric":
            values = [numeric_values(frame, column) for frame in frames]
            present = values[0][~np.isnan(values[0])]
            low, high = (float(present.min()), float(present.max())) if len(present) else (0.0, 1.0)
            scale = high - low if high > low else 1.0
            median = (float(np.median(present)) - low) / scale if len(present) else 0.0
            with_missing = any(np.isnan(v).any() for v in values)
            for block, v in zip(blocks, values, strict=True):
                missing = np.isnan(v)
                block.append(sparse.csr_matrix(np.where(missing, median, (v - low) / scale)[:, None]))
                if with_missing:
                    block.append(sparse.csr_matrix(missing.astype(np.float64)[:, None]))
        else:
            values = [categorical_values(frame, column).astype(str) for frame in frames]
            labels, inverse = np.unique(np.concatenate(values), return_inverse=True)
            start = 0
            for block, v in zip(blocks, values, strict=True):
                codes = inverse[start : start + len(v)]
                start += len(v)
                one_hot = sparse.csr_matrix(
                    (np.full(len(v), 1 / math.sqrt(2)), (np.arange(len(v)), codes)), shape=(len(v), len(labels))
                )
                block.append(one_hot)
    out = []
    for frame, block in zip(frames, blocks, strict=True):
        matrix = sparse.hstack(block, format="csr") if block else sparse.csr_matrix((len(frame), 0))
        out.append(matrix.toarray() if matrix.shape[1] <= _DENSE_WIDTH else matrix)
    return out


def _nearest(points: Any, queries: Any) -> np.ndarray:
    """Each query's Euclidean distance to its nearest point, recomputed exactly for the neighbour found."""
    index = NearestNeighbors(n_neighbors=1, algorithm="brute").fit(points).kneighbors(queries, return_distance=False)
    difference = queries - points[index[:, 0]]
    if sparse.issparse(difference):
        return np.sqrt(np.asarray(difference.multiply(difference).sum(axis=1)).ravel())
    return np.sqrt(np.einsum("ij,ij->i", difference, difference))


def _rows(frame: pd.DataFrame, schema: TableSchema) -> list[tuple[Any, ...]]:
    """Each row's values in schema order: numbers as parsed (None where missing), categories as spelled."""
    columns = []
    for column in schema.columns:
        if column.kind == "numeric":
            values = numeric_values(frame, column).astype(object)
            values[pd.isna(values)] = None
        else:
            values = categorical_values(frame, column)
        columns.append(values.tolist())
    return list(zip(*columns, strict=True)) if columns else []


def privacy_scores(
    synth: pd.DataFrame, train: pd.DataFrame, holdout: pd.DataFrame, schema: TableSchema, seed: int = 0
) -> dict[str, Any]:
    """DCR share, median DCR, exact copies and a DCR membership-inference AUC of synthetic rows (Euclidean
    distance in the space of ``distance_features``, train rows the reference).

    - dcr_share: share of synthetic rows strictly closer to their nearest train row than to their nearest holdout
      row, a tie counting 1/2 (TabSyn's DCR test; 0.5 is ideal). Train and holdout must be the same size for 0.5 to
      be the ideal: the larger is subsampled (seeded) to the size of the smaller for this share only.
    - dcr_median: median distance of a synthetic row to its nearest train row; holdout_dcr_median: the same for
      the holdout rows, what rows never seen by the model score.
    - exact_copies: synthetic rows identical to some train row, value for value (numbers as parsed, so "1.5" is
      "1.50"; any missing spelling is any other; categories as spelled); exact_copy_rate: their share;
      holdout_exact_copies: the holdout rows that are, what a table of few distinct rows gives without copying.
    - attack_auc: members (train rows) against non-members (holdout rows) scored by minus their distance to the
      nearest synthetic row; the ROC AUC of that attack, 0.5 when the synthetic rows reveal no membership.
    """
    if min(len(synth), len(train), len(holdout)) == 0:
        raise ValueError(
            f"privacy scores need rows in each of synth, train and holdout (got {len(synth)}, {len(train)}, "
            f"{len(holdout)})."
        )
    t, s, h = distance_features([train, synth, holdout], schema)
    to_train = _nearest(t, s)
    rng = np.random.default_rng(seed)
    t_share, h_share = t, h
    if len(train) > len(holdout):
        t_share = t[np.sort(rng.choice(len(train), len(holdout), replace=False))]
    elif len(holdout) > len(train):
        h_share = h[np.sort(rng.choice(len(holdout), len(train), replace=False))]
    near_train = to_train if t_share is t else _nearest(t_share, s)
    near_holdout = _nearest(h_share, s)
    share = float(np.mean(np.where(near_train < near_holdout, 1.0, np.where(near_train == near_holdout, 0.5, 0.0))))
    member_scores = -_nearest(s, t)
    outsider_scores = -_nearest(s, h)
    labels = np.concatenate([np.ones(len(train)), np.zeros(len(holdout))])
    auc = roc_auc_score(labels, np.concatenate([member_scores, outsider_scores]))
    train_rows = set(_rows(train, schema))
    copies = sum(row in train_rows for row in _rows(synth, schema))
    holdout_copies = sum(row in train_rows for row in _rows(holdout, schema))
    return {
        "dcr_share": share,
        "dcr_median": float(np.median(to_train)),
        "holdout_dcr_median": float(np.median(_nearest(t, h))),
        "exact_copies": int(copies),
        "exact_copy_rate": copies / len(synth),
        "holdout_exact_copies": int(holdout_copies),
        "attack_auc": float(auc),
        "synth_rows": len(synth),
        "train_rows": len(train),
        "holdout_rows": len(holdout),
    }


def _cramers_v(a: np.ndarray, b: np.ndarray, ka: int, kb: int) -> float:
    """Cramér's V of two integer-coded samples, sqrt(chi^2 / (n (min(r, c) - 1))), without bias correction;
    0 where a column has a single value."""
    counts = np.bincount(a * kb + b, minlength=ka * kb).reshape(ka, kb).astype(np.float64)
    counts = counts[counts.sum(axis=1) > 0][:, counts.sum(axis=0) > 0]
    n, k = counts.sum(), min(counts.shape)
    if k < 2:
        return 0.0
    expected = np.outer(counts.sum(axis=1), counts.sum(axis=0)) / n
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return math.sqrt(chi2 / (n * (k - 1)))


def association_matrix(
    frame: pd.DataFrame, schema: TableSchema, reference: pd.DataFrame | None = None, columns: Sequence[str] = ()
) -> np.ndarray:
    """Pairwise association of a frame's columns (schema order, or ``columns``): Pearson's r of two numeric
    columns (in [-1, 1]), Cramér's V (in [0, 1]) of a pair with a categorical column, a numeric column binned into
    10 quantile bins of ``reference`` (default: the frame itself), missing its own bin or category; 1 on the
    diagonal."""
    chosen = [_column(schema, name) for name in columns] if columns else list(schema.columns)
    reference = frame if reference is None else reference
    numeric = {c.name: numeric_values(frame, c) for c in chosen if c.kind == "numeric"}
    codes = {c.name: _pair_codes(reference, frame, c)[1:] for c in chosen}
    matrix = np.eye(len(chosen))
    for i, j in itertools.combinations(range(len(chosen)), 2):
        a, b = chosen[i], chosen[j]
        if a.kind == "numeric" and b.kind == "numeric":
            value = _pearson(numeric[a.name], numeric[b.name])
        else:
            (ca, ka), (cb, kb) = codes[a.name], codes[b.name]
            value = _cramers_v(ca, cb, ka, kb) if len(ca) else 0.0
        matrix[i, j] = matrix[j, i] = value
    return matrix


def _missing_rate(frame: pd.DataFrame, column: ColumnSchema) -> float | None:
    if len(frame) == 0:
        return None
    if column.kind == "numeric":
        return float(np.isnan(numeric_values(frame, column)).mean())
    return float((categorical_values(frame, column) == MISSING).mean())


def _json_safe(value: Any) -> Any:
    """The value with every non-finite float as None and numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _mean(scores: dict[str, float]) -> float | None:
    return float(np.mean(list(scores.values()))) if scores else None


def table_report(
    real_test: pd.DataFrame,
    synth: pd.DataFrame,
    schema: TableSchema,
    train: pd.DataFrame | None = None,
    holdout: pd.DataFrame | None = None,
    target: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every score of a synthetic table, as a plain JSON-able dict (undefined numbers None).

    Fidelity (column shapes, pair trends, missing rates) against ``real_test``; ML efficacy of train-on-synthetic
    and, with ``train``, train-on-real, both tested on ``real_test`` (target: ``target`` or the schema's); privacy
    with ``train`` and ``holdout`` (the rows the model never saw).
    """
    target = target or schema.target
    shapes = column_shapes(real_test, synth, schema)
    trends = pair_trends(real_test, synth, schema, seed=seed)
    n = len(schema.columns)
    report: dict[str, Any] = {
        "rows": {"real_test": len(real_test), "synth": len(synth)},
        "column_shapes": {"mean": _mean(shapes), "columns": shapes},
        "pair_trends": {
            "mean": _mean(trends),
            "pairs_scored": len(trends),
            "pairs_total": n * (n - 1) // 2,
            "pairs": trends,
        },
        "missing_rates": {
            c.name: {"real": _missing_rate(real_test, c), "synth": _missing_rate(synth, c)} for c in schema.columns
        },
    }
    if train is not None:
        report["rows"]["train"] = len(train)
    if holdout is not None:
        report["rows"]["holdout"] = len(holdout)
    if target:
        efficacy: dict[str, Any] = {"target": target, "synthetic": ml_efficacy(synth, real_test, schema, target, seed)}
        if train is not None:
            efficacy["real"] = ml_efficacy(train, real_test, schema, target, seed)
            synthetic_score, real_score = efficacy["synthetic"]["score"], efficacy["real"]["score"]
            efficacy["ratio"] = synthetic_score / real_score if synthetic_score is not None and real_score else None
        report["ml_efficacy"] = efficacy
    if train is not None and holdout is not None:
        report["privacy"] = privacy_scores(synth, train, holdout, schema, seed=seed)
    return _json_safe(report)


def _plot_marginal(ax: Any, real: pd.DataFrame, synth: pd.DataFrame, column: ColumnSchema, top: int = 20) -> None:
    """Real against synthetic: overlaid density histograms (numeric, present values) or frequency bars
    (categorical, the ``top`` most frequent real categories and missing)."""
    ax.set_title(column.name[:30], fontsize=9)
    ax.tick_params(labelsize=7)
    if column.kind == "numeric":
        a, b = numeric_values(real, column), numeric_values(synth, column)
        a, b = a[~np.isnan(a)], b[~np.isnan(b)]
        both = np.concatenate([a, b])
        if len(both) == 0:
            return
        low, high = float(both.min()), float(both.max())
        integers = column.dtype == "int" and high - low <= 60
        edges = np.arange(low - 0.5, high + 1.5) if integers else np.histogram_bin_edges(both, bins=30)
        for values, label, color in ((a, "real", "tab:blue"), (b, "synthetic", "tab:orange")):
            if len(values):
                ax.hist(values, bins=edges, density=True, alpha=0.5, label=label, color=color)
        return
    a, b = categorical_values(real, column), categorical_values(synth, column)
    labels, counts = np.unique(a, return_counts=True)
    shown = [labels[i] for i in np.argsort(-counts, kind="stable")[:top]]
    positions = np.arange(len(shown))
    for offset, values, label, color in ((-0.2, a, "real", "tab:blue"), (0.2, b, "synthetic", "tab:orange")):
        share = [float(np.mean(values == v)) if len(values) else 0.0 for v in shown]
        ax.bar(positions + offset, share, width=0.4, label=label, color=color)
    ax.set_xticks(positions, ["(missing)" if v == MISSING else str(v)[:10] for v in shown], rotation=90, fontsize=7)


def plot_table_report(
    real: pd.DataFrame,
    synth: pd.DataFrame,
    schema: TableSchema,
    path: str | os.PathLike[str],
    max_marginals: int = 16,
    max_matrix_columns: int = 30,
) -> None:
    """A PNG, written atomically: the marginals of the first ``max_marginals`` columns, real against synthetic,
    above the real and synthetic association matrices side by side (``association_matrix`` of the first
    ``max_matrix_columns`` columns, numeric ones binned by the real quantiles)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    shown = schema.columns[:max_marginals]
    per_row = 4
    rows = max(1, math.ceil(len(shown) / per_row))
    figure = Figure(figsize=(4 * per_row, 2.6 * rows + 6), layout="constrained")
    grid = figure.add_gridspec(rows + 1, per_row, height_ratios=[2.6] * rows + [6])
    for k, column in enumerate(shown):
        ax = figure.add_subplot(grid[k // per_row, k % per_row])
        _plot_marginal(ax, real, synth, column)
        if k == 0:
            ax.legend(fontsize=7)
    names = [c.name for c in schema.columns[:max_matrix_columns]]
    image = None
    for k, (frame, title) in enumerate(((real, "real"), (synth, "synthetic"))):
        ax = figure.add_subplot(grid[rows, 2 * k : 2 * k + 2])
        matrix = association_matrix(frame, schema, reference=real, columns=names)
        image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(f"{title}: Pearson r (numeric pairs), Cramér's V (else)", fontsize=9)
        ticks = np.arange(len(names))
        labels = [n[:12] for n in names]
        ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=6)
    if image is not None:
        figure.colorbar(image, ax=figure.axes[-2:], shrink=0.6)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
