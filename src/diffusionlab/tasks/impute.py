"""Tabular imputation: fill the missing cells of a table with a table model, keeping every given cell (floor 5).

Imputation is inpainting of rows (CSDI, Tashiro et al. 2021: conditional generation with the observed values
kept): the sampler runs on every row with its given values held (numbers by RePaint's replacement, Lugmayr et al.
2022; categories as kept tokens, as in text infilling), and the filled rows are written back cell by cell: a cell
that was given comes back exactly as it was read, bit for bit; only the holes take the model's values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..data.table import MISSING_SPELLINGS, MISSING_SUFFIX, encode_table, table_holes, table_layout
from ..pipeline import Pipeline
from ..sampling.request import SampleRequest

__all__ = ["impute"]


def impute(
    pipe: Pipeline,
    frame: Any,
    columns: Sequence[str] | None = None,
    *,
    request: SampleRequest | None = None,
    batch_size: int = 256,
    progress: bool = False,
    **settings: Any,
) -> tuple[Any, int]:
    """The table ``frame`` (str cells, as ``read_csv_table`` gives) with its missing cells filled (only those of
    ``columns``, if given), and the number of cells filled. Row i draws from the random stream (seed, i);
    ``settings`` are the request's fields by name (``steps``, ``seed``, ``guidance``, ``temperature``)."""
    if pipe.space.name != "table":
        raise ValueError(f"imputation fills the missing cells of a table; this is a {pipe.space.name} model.")
    schema = pipe.config.data.table
    names = [c.name for c in schema.columns]
    chosen = set(names if columns is None else columns)
    unknown = sorted(chosen - set(names))
    if unknown:
        raise ValueError(f"columns {unknown} are not columns of this model's table; expected some of {names}.")
    holes = table_holes(frame, schema)
    layout = table_layout(schema)
    if holes.labels is not None and bool(holes.labels.any()):
        count = int(holes.labels.sum())
        raise ValueError(
            f"the target column {schema.target!r} has {count} missing cells; the model is conditioned on it, so "
            "every row needs its target (impute the other columns)."
        )
    wanted = {
        name: frame[name].astype(str).str.strip().isin(MISSING_SPELLINGS).to_numpy() & (name in chosen)
        for name in names
    }
    filled = int(sum(mask.sum() for mask in wanted.values()))
    if filled == 0:
        where = "" if columns is None else f" in columns {sorted(chosen)}"
        raise ValueError(f"the table has no missing cells{where}: nothing to impute.")
    given = encode_table(frame, schema, holes=True)
    indicator = torch.tensor([name.endswith(MISSING_SUFFIX) for name in layout.categorical], dtype=torch.bool)
    keep_categorical = ~holes.categorical | indicator  # a numeric hole is filled with a value: its indicator "present"
    parts, keeps = [given.numeric, given.categorical.float()], [~holes.numeric, keep_categorical]
    labels = None
    if given.labels is not None:
        parts.append(given.labels.float()[:, None])
        keeps.append(torch.ones(len(frame), 1, dtype=torch.bool))
        labels = given.labels.tolist()
    known, keep = torch.cat(parts, dim=1), torch.cat(keeps, dim=1)
    req = (request or SampleRequest.from_settings(labels=labels, **settings)).resolve(pipe.config.sample)
    pipe.family.check_sampler(req.sampler.sampler)
    n = len(frame)
    rows = pipe.family.draw_rows(pipe, req, n, list(range(n)), batch_size, known=known, keep=keep, progress=progress)
    drawn = pipe.space.frame(rows, match_marginals=False)  # imputed cells follow their rows, not the marginals
    out = frame.copy()
    for name in names:
        out.loc[wanted[name], name] = drawn.loc[wanted[name], name]
    return out, filled
