"""Tables (data/table.py): CSV cells, schema inference, the quantile transform and the model-space round trip."""

from __future__ import annotations

import csv
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.special
import torch

from diffusionlab.data import DataError
from diffusionlab.data.table import (
    MISSING_SPELLINGS,
    TableTensors,
    decode_table,
    encode_table,
    from_normal,
    infer_schema,
    is_table_dataset,
    load_table_dataset,
    rank_matched,
    read_csv_table,
    read_schema_overrides,
    table_holes,
    table_layout,
    to_normal,
    write_csv_table,
)

CITIES = ["São Paulo", "New York, NY", 'The "Big" Apple', "東京", "Zürich"]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def mixed_csv(tmp_path: Path) -> Path:
    """300 rows: 2-decimal floats and big ints (numeric), low-card ints, True/False, quoted unicode strings, a
    label; missing cells in a numeric and a categorical column."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(300):
        income = "" if i % 17 == 3 else f"{rng.normal(3000, 800):.2f}"
        big = str(int(rng.integers(10**9, 10**12)))
        children = str(int(rng.integers(0, 5)))
        member = ["True", "False"][int(rng.integers(0, 2))]
        city = "" if i % 11 == 5 else CITIES[int(rng.integers(0, len(CITIES)))]
        ratio = f"{rng.uniform(1, 9):.1f}e-{int(rng.integers(1, 4))}"
        label = ["yes", "no"][int(rng.integers(0, 2))]
        rows.append([income, big, children, member, city, ratio, label])
    header = ["income", "big", "children", "member", "city", "ratio", "label"]
    return write_rows(tmp_path / "mixed.csv", header, rows)


def test_round_trip_keeps_schema_dtypes_and_cells(mixed_csv: Path, tmp_path: Path) -> None:
    frame = read_csv_table(mixed_csv)
    schema = infer_schema(frame, target="label")
    by_name = {c.name: c for c in schema.columns}
    assert [(c.name, c.kind, c.dtype) for c in schema.columns] == [
        ("income", "numeric", "float"),
        ("big", "numeric", "int"),
        ("children", "categorical", "int"),
        ("member", "categorical", "bool"),
        ("city", "categorical", "str"),
        ("ratio", "numeric", "float"),
        ("label", "categorical", "str"),
    ]
    assert by_name["income"].decimals == 2 and by_name["ratio"].decimals == 4  # "3.4e-3" is 0.0034
    assert by_name["member"].categories == ["False", "True"]
    assert by_name["children"].categories == ["0", "1", "2", "3", "4"]
    assert by_name["city"].categories == sorted(CITIES)
    assert by_name["income"].missing_rate == pytest.approx(18 / 300)
    assert by_name["city"].missing_rate == pytest.approx((frame["city"] == "").mean())
    assert len(by_name["big"].quantiles) == 300 and by_name["big"].minimum == float(frame["big"].astype(float).min())

    layout = table_layout(schema)
    assert layout.numeric == ["income", "big", "ratio"]
    assert layout.categorical == ["children", "member", "city", "income\x00missing"]
    assert layout.cardinalities == [5, 2, 6, 2] and layout.num_classes == 2
    tensors = encode_table(frame, schema)
    assert tensors.numeric.dtype == torch.float32 and tensors.numeric.shape == (300, 3)
    assert tensors.categorical.dtype == torch.int64 and tensors.labels.shape == (300,)
    assert (tensors.numeric[frame["income"].to_numpy() == "", 0] == 0).all()

    out = tmp_path / "out" / "synth.csv"
    write_csv_table(decode_table(tensors, schema), out)
    back = read_csv_table(out)
    assert list(back.columns) == list(frame.columns)
    for name in ["children", "member", "city", "label"]:
        assert back[name].tolist() == frame[name].tolist(), name
    assert back["income"].tolist() == frame["income"].tolist()  # 2 decimals survive float32 scores exactly
    assert back["ratio"].astype(float).tolist() == frame["ratio"].astype(float).tolist()  # as "0.0034", not "3.4e-3"
    assert back["big"].str.fullmatch(r"\d+").all()  # 12-digit ints: float32 scores keep ~6 significant digits
    np.testing.assert_allclose(back["big"].astype(float), frame["big"].astype(float), rtol=1e-5)
    again = {c.name: c for c in infer_schema(back, target="label").columns}
    for column in schema.columns:
        got = again[column.name]
        assert (got.kind, got.dtype, got.categories, got.decimals) == (
            column.kind,
            column.dtype,
            column.categories,
            column.decimals,
        )
        assert (got.minimum, got.maximum, got.missing_rate) == (column.minimum, column.maximum, column.missing_rate)
    assert list(out.parent.iterdir()) == [out]  # no temporary file left


def test_decode_of_model_samples_keeps_types_ranges_and_missing(mixed_csv: Path) -> None:
    frame = read_csv_table(mixed_csv)
    schema = infer_schema(frame, target="label")
    layout = table_layout(schema)
    g = torch.Generator().manual_seed(1)
    n = 2000
    numeric = 2.0 * torch.randn(n, len(layout.numeric), generator=g)  # wider than N(0,1): tails must clip
    categorical = torch.stack([torch.randint(0, k, (n,), generator=g) for k in layout.cardinalities], dim=1)
    labels = torch.randint(0, layout.num_classes, (n,), generator=g)
    synth = decode_table(TableTensors(numeric, categorical, labels), schema)
    by_name = {c.name: c for c in schema.columns}
    assert list(synth.columns) == list(frame.columns)
    for name in ["children", "member", "city", "label"]:
        assert set(synth[name]) <= set(by_name[name].categories) | {""}
    assert (synth["city"] == "").mean() == pytest.approx(1 / 6, abs=0.03)
    assert (synth["income"] == "").mean() == pytest.approx(0.5, abs=0.04)
    assert (synth["big"].str.fullmatch(r"\d+")).all()
    assert synth.loc[synth["income"] != "", "income"].str.fullmatch(r"-?\d+\.\d\d").all()
    for name in ["income", "big", "ratio"]:
        values = synth.loc[synth[name] != "", name].astype(float)
        assert values.min() == by_name[name].minimum and values.max() == by_name[name].maximum


def test_rank_matching_keeps_order_and_gives_exact_normal_quantiles() -> None:
    z = np.random.default_rng(0).standard_normal((500, 2)) ** 3 + 1.0  # skewed, shifted: far from N(0, 1)
    z[::7, 1] = np.nan
    out = rank_matched(z)
    for j in range(2):
        present = ~np.isnan(z[:, j])
        m = int(present.sum())
        assert np.array_equal(np.isnan(out[:, j]), ~present)
        expected = scipy.special.ndtri((np.arange(m) + 0.5) / m)
        np.testing.assert_allclose(np.sort(out[present, j]), expected, rtol=0, atol=1e-12)
        assert np.array_equal(np.argsort(out[present, j]), np.argsort(z[present, j]))


def test_matched_decode_follows_the_training_values_and_keeps_missing(mixed_csv: Path) -> None:
    frame = read_csv_table(mixed_csv)
    schema = infer_schema(frame, target="label")
    layout = table_layout(schema)
    g = torch.Generator().manual_seed(2)
    n = 1000
    numeric = 0.5 * torch.randn(n, len(layout.numeric), generator=g) + 0.7  # a biased model's marginals
    categorical = torch.stack([torch.randint(0, k, (n,), generator=g) for k in layout.cardinalities], dim=1)
    tensors = TableTensors(numeric, categorical, torch.randint(0, layout.num_classes, (n,), generator=g))
    plain, matched = decode_table(tensors, schema), decode_table(tensors, schema, match_marginals=True)
    assert (matched["income"] == "").equals(plain["income"] == "")
    assert matched.drop(columns=["income", "big", "ratio"]).equals(plain.drop(columns=["income", "big", "ratio"]))
    grid = np.sort(frame.loc[frame["income"] != "", "income"].astype(float).to_numpy())

    def ks(synth: pd.DataFrame) -> float:  # the Kolmogorov-Smirnov distance of the incomes to the training ones
        values = np.sort(synth.loc[synth["income"] != "", "income"].astype(float).to_numpy())
        cdf = np.searchsorted(values, grid, "right") / values.size
        return float(np.max(np.abs(cdf - np.arange(1, grid.size + 1) / grid.size)))

    assert ks(plain) > 0.3 and ks(matched) < 0.01


def test_quantile_transform_is_normal_and_inverts_at_the_knots() -> None:
    rng = np.random.default_rng(0)
    x = rng.lognormal(0.0, 1.5, size=20_000)
    knots = np.quantile(x, np.linspace(0, 1, 1000))
    z = to_normal(x, knots)
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.02
    assert abs(np.mean(z**3)) < 0.05  # the skew is gone (lognormal's is about 33)
    np.testing.assert_allclose(from_normal(to_normal(knots, knots), knots), knots, rtol=1e-9, atol=0)
    from_f32 = from_normal(to_normal(knots, knots).astype(np.float32), knots)  # the model space is float32
    assert from_f32[0] == knots[0] and from_f32[-1] == knots[-1]

    from sklearn.preprocessing import QuantileTransformer

    sk = QuantileTransformer(n_quantiles=1000, output_distribution="normal", subsample=None).fit(x[:, None])
    np.testing.assert_allclose(z, sk.transform(x[:, None])[:, 0], rtol=1e-9, atol=1e-9)


def test_quantile_transform_of_constant_and_tied_columns_is_finite() -> None:
    const = np.full(50, 5.0)
    assert np.all(to_normal(const, const) == 0.0)
    assert np.all(from_normal(np.array([-9.0, 0.0, 3.0]), const) == 5.0)
    ties = np.repeat([1.0, 2.0, 3.0], [10, 30, 10]).astype(float)
    knots = np.quantile(ties, np.linspace(0, 1, 50))
    z = to_normal(ties, knots)
    assert np.isfinite(z).all() and len(np.unique(z)) == 3 and np.all(np.diff(z) >= 0)
    assert np.array_equal(from_normal(z, knots), ties)
    # dequantised (training rows): each tie spreads evenly over its run of the CDF and still decodes to itself
    spread = to_normal(ties, knots, np.random.default_rng(0).random(len(ties)))
    assert np.array_equal(from_normal(spread, knots), ties) and len(np.unique(spread)) == len(ties)
    u = scipy.special.ndtr(spread[10:40])  # the 30 twos: knots 10..39 of 50 hold 2.0, probabilities 10/49..39/49
    assert 10 / 49 <= u.min() and u.max() <= 39 / 49 and abs(u.mean() - 24.5 / 49) < 0.05
    smooth = np.random.default_rng(1).normal(size=200)
    assert np.array_equal(to_normal(smooth, np.sort(smooth), np.full(200, 0.9)), to_normal(smooth, np.sort(smooth)))
    single = infer_schema(pd.DataFrame({"a": ["7", "", ""], "b": ["x", "y", "x"]}), overrides={"a": "numeric"})
    assert single.columns[0].quantiles == [7.0]
    cells = decode_table(encode_table(pd.DataFrame({"a": ["7", "", "7"], "b": ["x", "y", "x"]}), single), single)
    assert cells["a"].tolist() == ["7", "", "7"]


def test_inference_rules_and_overrides() -> None:
    frame = pd.DataFrame(
        {
            "flag": ["true", "FALSE", "True", "NA", "false"] * 3,
            "ints": [str(i) for i in range(15)],
            "few": ["1", "3", "2", "10", "2"] * 3,
            "dec": ["1.5", "2", "-0.125", ".5", "3."] * 3,
            "exp": ["1e5", "2.5E-3", "-1.25e-4", "7", "1.5e-20"] * 3,
            "words": ["b", "a", "", "c", "a"] * 3,
        }
    )
    schema = {c.name: c for c in infer_schema(frame).columns}
    assert (schema["flag"].kind, schema["flag"].dtype) == ("categorical", "bool")
    assert schema["flag"].categories == ["FALSE", "false", "True", "true"] and schema["flag"].missing_rate == 0.2
    assert (schema["ints"].kind, schema["ints"].dtype, schema["ints"].decimals) == ("numeric", "int", None)
    assert schema["few"].categories == ["1", "2", "3", "10"]  # by value, not "1" < "10" < "2"
    assert (schema["dec"].kind, schema["dec"].dtype, schema["dec"].decimals) == ("numeric", "float", 3)
    assert (schema["exp"].kind, schema["exp"].dtype, schema["exp"].decimals) == ("numeric", "float", None)
    assert infer_schema(frame[["exp"]].iloc[:4]).columns[0].decimals == 6  # "-1.25e-4" is -0.000125
    assert schema["words"].categories == ["a", "b", "c"]
    overridden = {c.name: c for c in infer_schema(frame, overrides={"few": "numeric", "ints": "categorical"}).columns}
    assert (overridden["few"].kind, overridden["few"].dtype, overridden["few"].minimum) == ("numeric", "int", 1.0)
    assert overridden["ints"].kind == "categorical" and len(overridden["ints"].categories) == 15
    assert {"", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"} == MISSING_SPELLINGS


def test_holes_encode_in_range_and_are_masked() -> None:
    frame = pd.DataFrame({"x": ["1.5", "2.5", "3.5", "4.5"], "c": ["a", "b", "a", "b"], "y": ["u", "v", "v", "u"]})
    schema = infer_schema(frame, target="y")
    holes = pd.DataFrame({"x": ["", "2.5"], "c": ["b", ""], "y": ["", "v"]})
    with pytest.raises(DataError, match=r"column 'c' row 2 is empty, but the column had no missing cells"):
        encode_table(holes, schema)
    encoded = encode_table(holes, schema, holes=True)
    assert encoded.categorical.tolist() == [[1], [0]] and encoded.labels.tolist() == [0, 1]
    masks = table_holes(holes, schema)
    assert masks.numeric.tolist() == [[True], [False]]
    assert masks.categorical.tolist() == [[False], [True]] and masks.labels.tolist() == [True, False]


def test_is_and_load_table_dataset(mixed_csv: Path, tmp_path: Path) -> None:
    assert is_table_dataset(f"table:{mixed_csv}") and is_table_dataset("data/X.CSV") and is_table_dataset(mixed_csv)
    assert not is_table_dataset("digits") and not is_table_dataset("text:a.txt") and not is_table_dataset(3)
    overrides = tmp_path / "schema.json"
    overrides.write_text('{"children": "numeric"}')
    frame, schema = load_table_dataset(f"table:{mixed_csv}", target="label", schema_file=overrides)
    assert len(frame) == 300 and schema.target == "label"
    assert {c.name: c.kind for c in schema.columns}["children"] == "numeric"
    assert read_schema_overrides(overrides) == {"children": "numeric"}


def one_line_error(call, *fragments: str) -> str:
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


@pytest.mark.parametrize(
    "content, fragments",
    [
        (None, ["does not exist", "expected a UTF-8 CSV"]),
        (b"", ["is empty", "header line and at least 2 rows"]),
        (b"\n  \n", ["is empty"]),
        (b"a,b\n", ["has a header but no rows"]),
        (b"a,b\n1,2\n", ["has only 1 row", "at least 2 rows"]),
        (b"a,b\n1,2\n3,4\n5,6,7\n", ["line 4 has 3 fields", "the header has 2"]),
        (b"a,b\n1,2\n3\n", ["line 3 has 1 field,"]),
        (b"a,b\n1,2\nx,caf\xe9\n", ["is not UTF-8", "offset 13", "line 3", "0xe9"]),
        (b"a,b,a\n1,2,3\n4,5,6\n", ["'a' appears more than once"]),
        (b"a,,c\n1,2,3\n4,5,6\n", ["column 2 has no name"]),
        (b'a,b\n1,"x\n2,3\n', ["not valid CSV", "unexpected end of data"]),
    ],
)
def test_bad_csv_is_one_clear_line(tmp_path: Path, content: bytes | None, fragments: list[str]) -> None:
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_bytes(content)
    message = one_line_error(lambda: read_csv_table(path), *fragments)
    assert str(path) in message


def test_bad_schema_inputs_are_one_clear_line(tmp_path: Path) -> None:
    frame = pd.DataFrame({"age": ["3", "4", "5"], "name": ["a", "b", "c"], "empty": ["", "NA", " "]})
    one_line_error(lambda: infer_schema(frame), "column 'empty' has no values", "all 3 cells are missing")
    frame["age"] = ["3.5", "4", "5"]
    ok = frame.drop(columns="empty")
    one_line_error(lambda: infer_schema(ok, target="y"), "target column 'y' is not in the table", "'age', 'name'")
    one_line_error(lambda: infer_schema(ok, overrides={"agee": "numeric"}), "'agee'", "not columns of the table")
    one_line_error(lambda: infer_schema(ok, overrides={"name": "numeric"}), "'name' is marked numeric", "'a'")
    one_line_error(lambda: infer_schema(ok, overrides={"age": "float"}), "'age' is 'float'")
    bad_json = tmp_path / "s.json"
    bad_json.write_text('{"age": "number"}')
    one_line_error(lambda: read_schema_overrides(bad_json), str(bad_json), "'age' is 'number'")
    bad_json.write_text("{oops")
    one_line_error(lambda: read_schema_overrides(bad_json), "is not valid JSON")
    one_line_error(lambda: read_schema_overrides(tmp_path / "none.json"), "does not exist")
    schema = infer_schema(ok)
    one_line_error(lambda: encode_table(pd.DataFrame({"age": ["3"], "name": ["zz"]}), schema), "'zz'", "categories")
    one_line_error(lambda: encode_table(pd.DataFrame({"age": ["x"], "name": ["a"]}), schema), "'x', not a number")
    one_line_error(lambda: encode_table(pd.DataFrame({"name": ["a"]}), schema), "lacks 'age'")
    ids = TableTensors(torch.zeros(1, 1), torch.tensor([[3]]))
    one_line_error(lambda: decode_table(ids, schema), "holds id 3, outside 0..2")
    one_line_error(lambda: load_table_dataset("digits"), "is not a table")


def test_ten_thousand_categories_are_refused_quickly(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "ids.csv", ["id", "x"], [[f"user-{i:05d}", str(i % 3)] for i in range(10_000)])
    start = time.perf_counter()
    message = one_line_error(
        lambda: load_table_dataset(path), "column 'id' has 10000 distinct values", "max_categories=1000", "drop it"
    )
    assert time.perf_counter() - start < 2.0
    numbers = pd.DataFrame({"zip": [str(10_000 + i) for i in range(2000)]})
    hint = one_line_error(lambda: infer_schema(numbers, overrides={"zip": "categorical"}), "2000 distinct")
    assert re.search(r'\{"zip": "numeric"\}', hint) and "raise max_categories" in message
