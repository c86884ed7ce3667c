"""Tables: a CSV read cell by cell as strings, its schema inferred, and rows encoded for the model and back.

- ``read_csv_table(path)``: every cell a ``str`` exactly as spelled in the file (UTF-8, a leading BOM dropped), the
  header's names as written; a missing or empty file, a header without rows, a single row, a ragged row, bytes that
  are not UTF-8 and empty or repeated column names are each one ``DataError`` line naming the file.
- ``infer_schema(frame, target, overrides)``: per column, over its non-missing cells (``MISSING_SPELLINGS``, after
  stripping spaces): all "true"/"false" (any case) -> categorical bool; all integers -> categorical int when at most
  ``LOW_CARDINALITY`` distinct spellings, else numeric int; all decimal numbers -> numeric float, ``decimals`` the
  most decimal places of a value as written ("3.4e-2" has 3; None past ``MAX_DECIMALS``, then values are written
  in full); anything else -> categorical str.
  Categories are the distinct spellings sorted (by value for int/float/bool columns, then by spelling; by code
  point for str), so that the ids do not depend on row order. Numeric columns keep their observed range and
  ``min(n_quantiles, values)`` knots of their quantile transform.
- ``encode_table`` / ``decode_table``: the model space of ``table_layout(schema)``. Numeric columns go through the
  quantile transform to a standard normal (TabDDPM, Kotelnikov et al. 2023, sec. 4: scikit-learn's
  ``QuantileTransformer(output_distribution="normal")``; training rows dequantise tied values, ``to_normal``'s
  ``spread``); a missing numeric cell is 0.0 plus a missing-indicator
  category; a missing categorical cell is its own last category. Decoding gives categorical cells back as spelled,
  numeric values clipped to the observed range and rounded to the column's decimals (ints without ".0"), and a
  missing cell as "" (any of the ``MISSING_SPELLINGS`` read comes back as "").
- ``load_table_dataset("table:<file.csv>" or "<file.csv>")``: the frame and its fitted schema.

This floor imports only torch, numpy, pandas and scipy (both on first use) and floors 0-1 (``config``, ``io``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..config import ColumnSchema, TableSchema
from ..io import atomic_path
from .base import DataError

if TYPE_CHECKING:  # pandas and scipy load on first use: importing diffusionlab.data stays fast for the other data
    import pandas as pd

__all__ = [
    "LOW_CARDINALITY",
    "MISSING_SPELLINGS",
    "MISSING_SUFFIX",
    "QUANTILE_CLIP",
    "TABLE_DATASET_FORMS",
    "TableLayout",
    "TableTensors",
    "decode_table",
    "encode_table",
    "from_normal",
    "infer_schema",
    "is_table_dataset",
    "load_table_dataset",
    "rank_matched",
    "table_dataset_path",
    "read_csv_table",
    "read_schema_overrides",
    "table_holes",
    "table_layout",
    "to_normal",
    "write_csv_table",
]

MISSING_SPELLINGS: frozenset[str] = frozenset({"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"})
LOW_CARDINALITY = 10  # an integer column with at most this many distinct values is categorical
QUANTILE_CLIP = 1e-7  # u is clipped to [QUANTILE_CLIP, 1 - QUANTILE_CLIP] before ndtri (scikit-learn's bound)
TABLE_DATASET_FORMS = ("'table:<file.csv>'", "a path ending in .csv")
MAX_DECIMALS = 15  # a float column needing more decimals (e.g. "1.5e-20") is written in full (repr) instead
MISSING_SUFFIX = "\x00missing"  # internal name of a numeric column's missing indicator: f"{name}\x00missing"

_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_BOOL_WORDS = frozenset({"true", "false"})


@dataclass(frozen=True)
class TableLayout:
    """Where each column lives in the model space: numeric scores, categorical ids (with cardinalities), labels."""

    numeric: list[str]
    categorical: list[str]  # categorical columns except a categorical target, then f"{name}\x00missing" indicators
    cardinalities: list[int]
    num_classes: int | None  # the categorical target's cardinality, else None


class TableTensors(NamedTuple):
    """Rows in model space: numeric (N, Dn) float32 normal scores, categorical (N, Dc) int64 ids, labels (N,)."""

    numeric: Tensor
    categorical: Tensor
    labels: Tensor | None = None


# --- reading and writing --------------------------------------------------------------------------------------------


def read_csv_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a UTF-8 CSV with a header and at least 2 rows; every cell a ``str`` as spelled (checked, DataError)."""
    import pandas as pd

    path = Path(path)
    expected = "expected a UTF-8 CSV file with a header line and at least 2 rows"
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file; {expected}.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        start = err.start + (3 if raw.startswith(b"\xef\xbb\xbf") else 0)
        line = raw.count(b"\n", 0, start) + 1
        raise DataError(
            f"{path} is not UTF-8: byte 0x{raw[start]:02x} at offset {start} (line {line}) is invalid; "
            f"save it as UTF-8 ({expected})."
        ) from None
    if not text.strip():
        raise DataError(f"{path} is empty; {expected}.")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(row for row in reader if row)
        width = len(header)
        _check_header(header, path)
        rows = []
        for row in reader:
            if not row:  # a blank line
                continue
            if len(row) != width:
                raise DataError(
                    f"{path} line {reader.line_num} has {len(row)} field{'s' * (len(row) != 1)}, but the header has "
                    f"{width}; every row must have one field per column (quote a cell that holds a comma)."
                )
            rows.append(row)
    except csv.Error as err:
        raise DataError(f"{path} line {reader.line_num} is not valid CSV ({err}); {expected}.") from None
    if not rows:
        raise DataError(f"{path} has a header but no rows; {expected}.")
    if len(rows) == 1:
        raise DataError(f"{path} has only 1 row; a table needs at least 2 rows to learn from.")
    return pd.DataFrame(rows, columns=header, dtype=str)


def _check_header(header: list[str], path: Path) -> None:
    """Every column named, no name twice."""
    for i, name in enumerate(header):
        if not name.strip():
            raise DataError(f"{path} header: column {i + 1} has no name; every column needs a name.")
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DataError(f"{path} header: the column name {name!r} appears more than once; names must be unique.")
        seen.add(name)


def write_csv_table(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``frame`` (header, then rows; cells as strings, a missing value as "") to ``path`` atomically."""
    cells = [["" if _is_null(v) else str(v) for v in row] for row in frame.itertuples(index=False, name=None)]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([str(c) for c in frame.columns])
        writer.writerows(cells)


def _is_null(value: object) -> bool:
    import pandas as pd

    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def is_table_dataset(spec: object) -> bool:
    """Whether ``spec`` names a table: "table:<file>" or a path ending in .csv (any case) that no other kind's
    prefix claims ("series:<file.csv>" is a time series, "text:<file>" a corpus)."""
    if not isinstance(spec, (str, os.PathLike)):
        return False
    name = os.fspath(spec).strip().lower()
    other = name.startswith(("series:", "text:", "audio:", "array:"))
    return name.startswith("table:") or (name.endswith(".csv") and not other)


def table_dataset_path(spec: str | os.PathLike[str]) -> Path:
    """The CSV file a table dataset spec names ("table:<file.csv>" or a path ending in .csv)."""
    if not is_table_dataset(spec):
        raise DataError(f"{spec!r} is not a table; expected {' or '.join(TABLE_DATASET_FORMS)}.")
    text = os.fspath(spec).strip()
    path = text[len("table:") :] if text.lower().startswith("table:") else text
    if not path:
        raise DataError(f"{spec!r} names no file; expected {' or '.join(TABLE_DATASET_FORMS)}.")
    return Path(path).expanduser()


def load_table_dataset(
    spec: str | os.PathLike[str], target: str | None = None, schema_file: str | os.PathLike[str] | None = None
) -> tuple[pd.DataFrame, TableSchema]:
    """Read "table:<file.csv>" (or a .csv path) and infer its schema, with ``schema_file``'s overrides if given."""
    path = table_dataset_path(spec)
    overrides = read_schema_overrides(schema_file) if schema_file is not None else None
    frame = read_csv_table(path)
    return frame, infer_schema(frame, target=target, overrides=overrides)


def read_schema_overrides(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a JSON object {"column": "numeric" | "categorical"} (checked, DataError naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f'schema file {path} does not exist; expected JSON like {{"age": "numeric"}}.')
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise DataError(f"schema file {path} is not valid JSON ({str(err).splitlines()[0]}).") from None
    if not isinstance(data, dict):
        raise DataError(f'schema file {path} must hold a JSON object {{"column": "numeric" | "categorical"}}.')
    for name, kind in data.items():
        if kind not in ("numeric", "categorical"):
            raise DataError(
                f'schema file {path}: column {name!r} is {kind!r}; each column is "numeric" or "categorical".'
            )
    return dict(data)


# --- schema -----------------------------------------------------------------------------------------------------------


@dataclass
class _Column:
    """What the first pass learns of one column."""

    name: str
    kind: str
    dtype: str
    present: np.ndarray  # the non-missing cells, as spelled
    stripped: np.ndarray  # the same, stripped of surrounding spaces
    missing_rate: float


def infer_schema(
    frame: pd.DataFrame,
    target: str | None = None,
    overrides: Mapping[str, str] | None = None,
    max_categories: int = 1000,
    n_quantiles: int = 1000,
) -> TableSchema:
    """Each column's kind, dtype, categories or range and quantile knots (module docstring); checked, DataError."""
    names = [str(c) for c in frame.columns]
    if target is not None and target not in names:
        raise DataError(f"target column {target!r} is not in the table; its columns are {_listing(names)}.")
    overrides = dict(overrides or {})
    unknown = [name for name in overrides if name not in names]
    if unknown:
        raise DataError(
            f"schema overrides name {_listing(unknown)}, not columns of the table; its columns are {_listing(names)}."
        )
    for name, kind in overrides.items():
        if kind not in ("numeric", "categorical"):
            raise DataError(f"schema override for {name!r} is {kind!r}; expected 'numeric' or 'categorical'.")
    if len(frame) < 2:
        raise DataError(f"the table has {len(frame)} row{'s' * (len(frame) != 1)}; it needs at least 2.")
    if max_categories < 1 or n_quantiles < 1:
        raise DataError(f"max_categories and n_quantiles must be at least 1, got {max_categories}, {n_quantiles}.")
    columns = [_first_pass(frame[name], name, overrides.get(name), max_categories) for name in names]
    return TableSchema(columns=[_fit_column(c, n_quantiles) for c in columns], target=target)


def _first_pass(series: pd.Series, name: str, override: str | None, max_categories: int) -> _Column:
    """The column's kind and dtype from its distinct spellings, with every check that needs no heavy work."""
    import pandas as pd

    cells = series.to_numpy(dtype=object)
    stripped_all = series.astype(str).str.strip().to_numpy(dtype=object)
    missing = np.isin(stripped_all, list(MISSING_SPELLINGS))
    if missing.all():
        raise DataError(
            f"column {name!r} has no values: all {len(cells)} cells are missing; drop the column from the CSV."
        )
    present, stripped = cells[~missing].astype(str), stripped_all[~missing].astype(str)
    distinct = pd.unique(stripped)
    if all(s.lower() in _BOOL_WORDS for s in distinct):
        dtype = "bool"
    elif all(_INT.fullmatch(s) for s in distinct):
        dtype = "int"
    elif all(_FLOAT.fullmatch(s) for s in distinct):
        dtype = "float"
    else:
        dtype = "str"
    if override == "numeric" and dtype not in ("int", "float"):
        example = next(s for s in distinct if not _FLOAT.fullmatch(s))
        raise DataError(f"column {name!r} is marked numeric, but its cell {example!r} is not a number.")
    n_spellings = len(pd.unique(present))
    if override is not None:
        kind = override
    elif dtype == "float" or (dtype == "int" and n_spellings > LOW_CARDINALITY):
        kind = "numeric"
    else:
        kind = "categorical"
    if kind == "categorical" and n_spellings > max_categories:
        hint = (
            f'mark it numeric in a schema file ({{{json.dumps(name)}: "numeric"}}) or drop it'
            if dtype in ("int", "float")
            else "drop it (an identifier or free text cannot be learned as categories) or raise max_categories"
        )
        raise DataError(
            f"column {name!r} has {n_spellings} distinct values, more than max_categories={max_categories} "
            f"for a categorical column; {hint}."
        )
    return _Column(name, kind, dtype, present, stripped, float(missing.mean()))


def _fit_column(column: _Column, n_quantiles: int) -> ColumnSchema:
    """The column's schema: sorted categories, or its range, decimals and quantile knots."""
    import pandas as pd

    if column.kind == "categorical":
        spellings = pd.unique(column.present)
        if column.dtype in ("int", "float"):
            keyed = sorted((float(s), s) for s in spellings)
        elif column.dtype == "bool":
            keyed = sorted((s.strip().lower() == "true", s) for s in spellings)
        else:
            keyed = sorted((0, s) for s in spellings)
        return ColumnSchema(
            name=column.name,
            kind="categorical",
            dtype=column.dtype,
            categories=[s for _, s in keyed],
            missing_rate=column.missing_rate,
        )
    values = column.stripped.astype(np.float64)
    if not np.isfinite(values).all():
        bad = column.stripped[~np.isfinite(values)][0]
        raise DataError(f"column {column.name!r} holds {bad!r}, too large for a 64-bit float.")
    decimals = None
    if column.dtype == "float":
        decimals = max(_decimals(s) for s in pd.unique(column.stripped))
        decimals = decimals if decimals <= MAX_DECIMALS else None
    n = min(n_quantiles, len(values))
    knots = np.quantile(values, np.linspace(0.0, 1.0, n))
    return ColumnSchema(
        name=column.name,
        kind="numeric",
        dtype=column.dtype,
        minimum=float(values.min()),
        maximum=float(values.max()),
        decimals=decimals,
        missing_rate=column.missing_rate,
        quantiles=[float(k) for k in knots],
    )


def _decimals(number: str) -> int:
    """Decimal places of a number as written: "1.25" -> 2, "3.4e-2" -> 3, "1.5e3" -> 0."""
    mantissa, _, exponent = number.lower().partition("e")
    return max(0, len(mantissa.partition(".")[2]) - int(exponent or 0))


def _listing(names: list[str]) -> str:
    """Names for a one-line message: the first 20, then a count."""
    shown = ", ".join(repr(n) for n in names[:20])
    return shown + (f" (and {len(names) - 20} more)" if len(names) > 20 else "")


# --- quantile transform -------------------------------------------------------------------------------------------


def to_normal(values: np.ndarray, knots: np.ndarray | list[float], spread: np.ndarray | None = None) -> np.ndarray:
    """Map values to N(0, 1) scores through the empirical CDF of ``knots`` (TabDDPM, Kotelnikov et al. 2023, sec. 4).

    As scikit-learn's ``QuantileTransformer(output_distribution="normal")``: u = the mean of the forward and backward
    linear interpolations of the knots at evenly spaced probabilities (so that repeated knots, as in a constant
    column, map to the middle of their run), clipped to [1e-7, 1 - 1e-7], then z = Phi^-1(u).

    ``spread`` (U[0, 1) numbers, one per value) dequantises ties (Uria et al. 2013; Theis et al. 2016, sec. 3.1): a
    value repeated over a run of knots maps to the point of its run at that fraction instead of its middle, so a
    column of few distinct values (ages in bands, counts) becomes a continuous normal that a Gaussian model can
    fit, and ``from_normal`` still gives the value back from anywhere in its run. Untied values do not move.
    """
    from scipy.special import ndtri

    x = np.asarray(values, dtype=np.float64)
    q = np.asarray(knots, dtype=np.float64)
    if q.size == 1:
        return np.where(np.isnan(x), np.nan, 0.0)
    probs = np.linspace(0.0, 1.0, q.size)
    forward, backward = np.interp(x, q, probs), -np.interp(-x, -q[::-1], -probs[::-1])
    u = 0.5 * (forward + backward) if spread is None else backward + np.asarray(spread) * (forward - backward)
    return ndtri(np.clip(u, QUANTILE_CLIP, 1.0 - QUANTILE_CLIP))


def from_normal(z: np.ndarray, knots: np.ndarray | list[float]) -> np.ndarray:
    """The inverse of ``to_normal``: u = Phi(z), x = the knots interpolated at u; a clipped tail gives the end knot."""
    from scipy.special import ndtr, ndtri

    z = np.asarray(z, dtype=np.float64)
    q = np.asarray(knots, dtype=np.float64)
    if q.size == 1:
        return np.where(np.isnan(z), np.nan, q[0])
    x = np.interp(ndtr(z), np.linspace(0.0, 1.0, q.size), q)
    # the ends to_normal clips to, widened so that such a z stored as float32 still gives the end knot
    z_lo, z_hi = float(ndtri(QUANTILE_CLIP)), float(ndtri(1.0 - QUANTILE_CLIP))
    x = np.where(z <= max(z_lo, float(np.float32(z_lo))), q[0], x)
    return np.where(z >= min(z_hi, float(np.float32(z_hi))), q[-1], x)


def rank_matched(z: np.ndarray) -> np.ndarray:
    """Each column of normal scores (N, D) replaced by the normal quantiles of its ranks, Phi^-1((r + 1/2) / N).

    Rank matching (Iman & Conover 1982, sec. 3: reorder a sample of the wanted marginal by the ranks of the draws):
    the rows keep the order the model gave them in every column, so its dependence between columns stays, while
    each column's scores become exactly N(0, 1)'s evenly spaced quantiles, which ``from_normal`` maps onto the
    training values' empirical distribution. NaN scores (missing cells) keep NaN and take no rank.
    """
    from scipy.special import ndtri

    z = np.asarray(z, dtype=np.float64)
    out = np.full_like(z, np.nan)
    for j in range(z.shape[1]):
        rows = np.flatnonzero(~np.isnan(z[:, j]))
        ranks = np.empty(rows.size)
        ranks[np.argsort(z[rows, j], kind="stable")] = np.arange(rows.size)
        out[rows, j] = ndtri((ranks + 0.5) / max(rows.size, 1))
    return out


# --- model space --------------------------------------------------------------------------------------------------


def table_layout(schema: TableSchema) -> TableLayout:
    """The model-space layout of a row: numeric columns, categorical ids (then missing indicators), labels."""
    numeric, categorical, cardinalities, num_classes = [], [], [], None
    for column in schema.columns:
        if column.kind == "numeric":
            numeric.append(column.name)
        else:
            cardinality = _cardinality(column)
            if column.name == schema.target:
                num_classes = cardinality
            else:
                categorical.append(column.name)
                cardinalities.append(cardinality)
    for column in schema.columns:
        if column.kind == "numeric" and column.missing_rate > 0:
            categorical.append(column.name + MISSING_SUFFIX)
            cardinalities.append(2)
    return TableLayout(numeric, categorical, cardinalities, num_classes)


def _cardinality(column: ColumnSchema) -> int:
    """A categorical column's ids: its categories, plus one for "missing" when it had missing cells."""
    if not column.categories:
        raise DataError(f"categorical column {column.name!r} of the schema has no categories.")
    return len(column.categories) + (1 if column.missing_rate > 0 else 0)


def encode_table(
    frame: pd.DataFrame, schema: TableSchema, holes: bool = False, spread: np.random.Generator | None = None
) -> TableTensors:
    """Encode a frame of str cells (as ``read_csv_table`` gives) in the layout of ``table_layout(schema)``.

    A missing cell is the missing category of its column (numeric: 0.0 and indicator 1); with ``holes`` it is
    instead a hole to fill (imputation): 0.0, category id 0, indicator 0, its place given by ``table_holes``. A
    category the schema does not know, a non-number in a numeric column, a missing or unknown column: DataError.
    ``spread`` draws the dequantisation of tied numeric values (``to_normal``; training rows), else ties map to the
    middle of their run.
    """
    layout = table_layout(schema)
    _check_columns(frame, schema)
    numeric = np.zeros((len(frame), len(layout.numeric)), dtype=np.float32)
    categorical = np.zeros((len(frame), len(layout.categorical)), dtype=np.int64)
    labels = None
    indicators = []
    slot = 0
    for column in schema.columns:
        cells = frame[column.name].astype(str).to_numpy(dtype=object)
        missing = _missing(cells)
        if column.kind == "numeric":
            numeric[:, layout.numeric.index(column.name)] = _encode_numeric(cells, missing, column, spread)
            if column.missing_rate > 0:
                indicators.append(np.zeros(len(cells), dtype=np.int64) if holes else missing.astype(np.int64))
            continue
        ids = _encode_categorical(cells, missing, column, holes)
        if column.name == schema.target:
            labels = torch.from_numpy(ids)
        else:
            categorical[:, slot] = ids
            slot += 1
    for i, indicator in enumerate(indicators):
        categorical[:, slot + i] = indicator
    return TableTensors(torch.from_numpy(numeric), torch.from_numpy(categorical), labels)


def table_holes(frame: pd.DataFrame, schema: TableSchema) -> TableTensors:
    """Bool masks in the layout of ``table_layout(schema)``: True where a cell of ``frame`` is missing (a numeric
    cell's indicator too), i.e. what ``encode_table(frame, schema, holes=True)`` left to fill."""
    layout = table_layout(schema)
    _check_columns(frame, schema)
    masks = {c.name: _missing(frame[c.name].astype(str).to_numpy(dtype=object)) for c in schema.columns}
    numeric = np.stack([masks[n] for n in layout.numeric], axis=1) if layout.numeric else None
    categorical = [masks[n.removesuffix(MISSING_SUFFIX)] for n in layout.categorical]
    n = len(frame)
    return TableTensors(
        torch.from_numpy(numeric if numeric is not None else np.zeros((n, 0), dtype=bool)),
        torch.from_numpy(np.stack(categorical, axis=1) if categorical else np.zeros((n, 0), dtype=bool)),
        torch.from_numpy(masks[schema.target]) if layout.num_classes is not None else None,
    )


def _check_columns(frame: pd.DataFrame, schema: TableSchema) -> None:
    """The frame has exactly the schema's columns (any order)."""
    have = [str(c) for c in frame.columns]
    want = [c.name for c in schema.columns]
    absent = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    if absent or extra:
        parts = ([f"lacks {_listing(absent)}"] if absent else []) + ([f"has extra {_listing(extra)}"] if extra else [])
        raise DataError(f"the table {' and '.join(parts)}; the model's columns are {_listing(want)}.")


def _missing(cells: np.ndarray) -> np.ndarray:
    """Which cells are missing: one of ``MISSING_SPELLINGS`` once stripped of surrounding spaces."""
    return np.isin(np.char.strip(cells.astype(str)), list(MISSING_SPELLINGS))


def _encode_numeric(
    cells: np.ndarray, missing: np.ndarray, column: ColumnSchema, spread: np.random.Generator | None = None
) -> np.ndarray:
    """Quantile-normal scores of a numeric column's cells (ties dequantised by draws of ``spread``); 0.0 where
    missing."""
    if column.quantiles is None or column.minimum is None or column.maximum is None:
        raise DataError(f"numeric column {column.name!r} of the schema has no quantiles or range.")
    stripped = np.char.strip(cells[~missing].astype(str))
    try:
        values = stripped.astype(np.float64)
    except ValueError:
        rows = np.flatnonzero(~missing)
        bad = next(i for i, s in enumerate(stripped) if not _FLOAT.fullmatch(s))
        raise DataError(
            f"column {column.name!r} row {rows[bad] + 1} holds {str(stripped[bad])!r}, not a number."
        ) from None
    scores = np.zeros(len(cells), dtype=np.float64)
    fractions = None if spread is None else spread.random(len(values))
    scores[~missing] = to_normal(values, column.quantiles, fractions)
    return scores


def _encode_categorical(cells: np.ndarray, missing: np.ndarray, column: ColumnSchema, holes: bool) -> np.ndarray:
    """Category ids of a categorical column's cells (spelled as in the schema); missing: the last id (or a hole)."""
    import pandas as pd

    categories = column.categories or []
    _cardinality(column)
    ids = pd.Index(categories).get_indexer(pd.Index(cells.astype(str))).astype(np.int64)
    unknown = (ids < 0) & ~missing
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise DataError(
            f"column {column.name!r} row {row + 1} holds {str(cells[row])!r}, not one of its "
            f"{len(categories)} categories ({_listing(categories[:5])}{', ...' if len(categories) > 5 else ''})."
        )
    if holes:
        ids[missing] = 0
    elif missing.any():
        if column.missing_rate == 0:
            row = int(np.flatnonzero(missing)[0])
            raise DataError(
                f"column {column.name!r} row {row + 1} is empty, but the column had no missing cells when its "
                "schema was fitted; fill it, or impute it."
            )
        ids[missing] = len(categories)
    return ids


def decode_table(tensors: TableTensors, schema: TableSchema, match_marginals: bool = False) -> pd.DataFrame:
    """Rows in model space back to a frame of str cells in schema (CSV) order; the categorical target from labels.

    Categorical cells are their categories' spellings; numeric ones are clipped to the column's observed range and
    rounded to its decimals (ints written without ".0"); a missing category or indicator gives "". ``match_marginals``:
    each numeric column's scores of the rows not missing there are first rank-matched (``rank_matched``) to
    N(0, 1), so that its values follow the training values' distribution exactly (a post-hoc step, off by default).
    """
    import pandas as pd

    layout = table_layout(schema)
    numeric = _as_array(tensors.numeric, "numeric", np.float64)
    categorical = _as_array(tensors.categorical, "categorical", np.int64)
    n = numeric.shape[0]
    if numeric.shape != (n, len(layout.numeric)) or categorical.shape != (n, len(layout.categorical)):
        raise DataError(
            f"table tensors of shapes {tuple(numeric.shape)} and {tuple(categorical.shape)} do not fit the schema: "
            f"expected (N, {len(layout.numeric)}) numeric and (N, {len(layout.categorical)}) categorical."
        )
    for j, (name, k) in enumerate(zip(layout.categorical, layout.cardinalities, strict=True)):
        _check_ids(categorical[:, j], k, name.replace(MISSING_SUFFIX, " (missing indicator)"))
    labels = None
    if layout.num_classes is not None:
        if tensors.labels is None:
            raise DataError(f"the schema's target {schema.target!r} is categorical: decoding needs its labels.")
        labels = _as_array(tensors.labels, "labels", np.int64)
        if labels.shape != (n,):
            raise DataError(f"labels of shape {tuple(labels.shape)} do not fit {n} rows; expected ({n},).")
        _check_ids(labels, layout.num_classes, f"target {schema.target!r}")
    elif tensors.labels is not None:
        raise DataError("labels were given, but the schema has no categorical target column.")
    out = {}
    for column in schema.columns:
        if column.kind == "numeric":
            indicator = column.name + MISSING_SUFFIX
            gone = np.zeros(n, dtype=bool)
            if indicator in layout.categorical:
                gone = categorical[:, layout.categorical.index(indicator)] == 1
            z = numeric[:, layout.numeric.index(column.name)]
            if match_marginals:
                z = rank_matched(np.where(gone, np.nan, z)[:, None])[:, 0]
                z[gone] = 0.0  # written as "" below; any finite score decodes
            cells = _decode_numeric(z, column)
            cells[gone] = ""
        else:
            ids = labels if column.name == schema.target else categorical[:, layout.categorical.index(column.name)]
            spellings = np.array([*(column.categories or []), ""], dtype=object)
            cells = spellings[ids]
        out[column.name] = cells
    return pd.DataFrame(out, columns=[c.name for c in schema.columns], dtype=str)


def _as_array(tensor: Tensor, what: str, dtype: type) -> np.ndarray:
    """A tensor as a numpy array of ``dtype`` (NaN in numeric scores refused)."""
    if not isinstance(tensor, Tensor):
        raise DataError(f"table {what} must be a torch tensor, got {type(tensor).__name__}.")
    if tensor.dtype.is_floating_point and dtype is np.int64:
        raise DataError(f"table {what} must hold integer ids, got {tensor.dtype}.")
    array = tensor.detach().cpu().to(torch.float64 if dtype is np.float64 else torch.int64).numpy()
    if dtype is np.float64 and np.isnan(array).any():
        raise DataError(f"table {what} scores hold NaN; the sampler diverged.")
    return array


def _check_ids(ids: np.ndarray, cardinality: int, name: str) -> None:
    bad = (ids < 0) | (ids >= cardinality)
    if bad.any():
        raise DataError(f"column {name} holds id {int(ids[bad][0])}, outside 0..{cardinality - 1}.")


def _decode_numeric(z: np.ndarray, column: ColumnSchema) -> np.ndarray:
    """Normal scores back to a numeric column's cells: clipped to its range, rounded, written as read."""
    if column.quantiles is None or column.minimum is None or column.maximum is None:
        raise DataError(f"numeric column {column.name!r} of the schema has no quantiles or range.")
    x = np.clip(from_normal(z, column.quantiles), column.minimum, column.maximum)
    if column.dtype == "int":
        return np.array([str(int(v)) for v in np.rint(x) + 0.0], dtype=object)
    if column.decimals is None:
        return np.array([repr(float(v)) for v in x], dtype=object)
    d = column.decimals
    return np.array([f"{v:.{d}f}" for v in np.round(x, d) + 0.0], dtype=object)
