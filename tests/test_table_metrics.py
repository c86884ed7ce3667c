"""Fidelity, utility and privacy scores of synthetic tables (evaluation/tabular.py) and the bench's two baselines
(bench/tabular_baselines.py), against hand-computed or independently computed answers."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ks_2samp

from diffusionlab.config import ColumnSchema, TableSchema
from diffusionlab.evaluation.tabular import (
    association_matrix,
    column_shapes,
    distance_features,
    ml_efficacy,
    pair_trends,
    plot_table_report,
    privacy_scores,
    table_report,
)

BENCH = Path(__file__).parents[1] / "bench" / "tabular_baselines.py"


def _baselines():
    spec = importlib.util.spec_from_file_location("tabular_baselines", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCHEMA = TableSchema(
    columns=[
        ColumnSchema(name="x", kind="numeric", dtype="float", minimum=-5.0, maximum=5.0, decimals=4),
        ColumnSchema(name="z", kind="numeric", dtype="float", minimum=-5.0, maximum=5.0, decimals=4, missing_rate=0.1),
        ColumnSchema(name="c", kind="categorical", dtype="str", categories=["no", "yes"], missing_rate=0.05),
        ColumnSchema(name="k", kind="numeric", dtype="int", minimum=0, maximum=20),
        ColumnSchema(name="y", kind="categorical", dtype="str", categories=["A", "B"]),
    ],
    target="y",
)


def _table(n: int, seed: int) -> pd.DataFrame:
    """A mixed table with known dependencies: z ~ 0.8 x, c and y depend on x (and y on z, k), missing z and c."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(size=n), -5, 5)
    z = np.clip(0.8 * x + 0.6 * rng.normal(size=n), -5, 5)
    c = np.where(x + rng.normal(scale=0.5, size=n) > 0, "yes", "no")
    k = np.clip(rng.poisson(4, size=n), 0, 20)
    y = np.where(x + z + 0.3 * (k - 4) + rng.normal(scale=0.5, size=n) > 0.3, "A", "B")
    frame = pd.DataFrame(
        {"x": [f"{v:.4f}" for v in x], "z": [f"{v:.4f}" for v in z], "c": c, "k": k.astype(str), "y": y}, dtype=str
    )
    frame.loc[rng.random(n) < 0.1, "z"] = ""
    frame.loc[rng.random(n) < 0.05, "c"] = "NA"
    return frame


def _num(name: str) -> ColumnSchema:
    return ColumnSchema(name=name, kind="numeric", dtype="float")


def _cat(name: str, categories: list[str]) -> ColumnSchema:
    return ColumnSchema(name=name, kind="categorical", dtype="str", categories=categories)


def test_identical_frames_score_exactly_one() -> None:
    real = _table(400, 0)
    shapes, trends = column_shapes(real, real.copy(), SCHEMA), pair_trends(real, real.copy(), SCHEMA)
    assert list(shapes) == ["x", "z", "c", "k", "y"]
    assert set(shapes.values()) == {1.0}
    assert len(trends) == 10 and "x|z" in trends and "c|y" in trends
    assert set(trends.values()) == {1.0}


def test_column_shapes_equal_hand_computed_ks_and_tv() -> None:
    schema = TableSchema(columns=[_num("v"), _cat("c", ["a", "b"])])
    values = np.arange(100.0)
    real = pd.DataFrame({"v": [str(v) for v in values], "c": ["a"] * 50 + ["b"] * 50})
    # shifted by 10: the ECDFs differ by 10/100 on [9, 10); 70 a, 20 b, 10 missing: TV = (0.2 + 0.3 + 0.1) / 2
    synth = pd.DataFrame({"v": [str(v + 10) for v in values], "c": ["a"] * 70 + ["b"] * 20 + [""] * 10})
    shapes = column_shapes(real, synth, schema)
    assert shapes["v"] == pytest.approx(0.9, abs=1e-12)
    assert shapes["c"] == pytest.approx(0.7, abs=1e-12)
    # the KS statistic over the present values against scipy's, on samples with missing cells and ties
    rng = np.random.default_rng(1)
    for size_a, size_b in ((200, 150), (57, 300)):
        a, b = np.round(rng.normal(size=size_a), 1), np.round(rng.normal(0.3, 1.2, size=size_b), 1)
        cells_a = [str(v) if i % 7 else "" for i, v in enumerate(a)]
        cells_b = [str(v) if i % 5 else "NA" for i, v in enumerate(b)]
        expected = ks_2samp(a[np.arange(size_a) % 7 != 0], b[np.arange(size_b) % 5 != 0]).statistic
        got = column_shapes(
            pd.DataFrame({"v": cells_a}), pd.DataFrame({"v": cells_b}), TableSchema(columns=[_num("v")])
        )
        assert got["v"] == pytest.approx(1 - expected, abs=1e-12)


def test_a_permuted_column_keeps_shapes_and_lowers_trends_by_the_computed_amount() -> None:
    real = _table(1000, 2)
    synth = real.copy()
    synth["z"] = real["z"].sample(frac=1.0, random_state=0).to_numpy()
    synth["c"] = real["c"].sample(frac=1.0, random_state=1).to_numpy()
    assert set(column_shapes(real, synth, SCHEMA).values()) == {1.0}
    trends = pair_trends(real, synth, SCHEMA)

    def pearson(frame: pd.DataFrame) -> float:
        both = frame[(frame["x"] != "") & (frame["z"] != "")]
        return float(np.corrcoef(both["x"].astype(float), both["z"].astype(float))[0, 1])

    assert pearson(real) > 0.7
    assert trends["x|z"] == pytest.approx(1 - abs(pearson(real) - pearson(synth)) / 2, abs=1e-12)
    assert trends["x|z"] < 0.65

    def joint(frame: pd.DataFrame) -> pd.Series:  # x in 10 quantile bins of the real x, c with missing ("NA")
        edges = np.quantile(real["x"].astype(float), np.linspace(0, 1, 11)[1:-1])
        bins = pd.cut(frame["x"].astype(float), [-np.inf, *edges, np.inf], right=False, labels=False)
        return pd.crosstab(bins, frame["c"], normalize="all").stack()

    p, q = joint(real), joint(synth)
    tv = 0.5 * (p - q.reindex(p.index, fill_value=0.0)).abs().sum()
    assert trends["x|c"] == pytest.approx(1 - tv, abs=1e-12)
    assert trends["x|c"] < 0.8
    assert trends["x|k"] == 1.0 and trends["k|y"] == 1.0  # untouched pairs


def test_pair_trends_score_every_pair_up_to_fifty_columns_then_a_sample() -> None:
    rng = np.random.default_rng(0)
    for width, expected in ((50, 1225), (60, 1225), (8, 28)):
        schema = TableSchema(columns=[_num(f"v{i}") for i in range(width)])
        frame = pd.DataFrame({f"v{i}": rng.normal(size=30).astype(str) for i in range(width)})
        trends = pair_trends(frame, frame, schema)
        assert len(trends) == expected and len(set(trends)) == expected


def test_ml_efficacy_learns_a_learnable_table_and_not_shuffled_labels() -> None:
    train, test = _table(1500, 3), _table(1000, 4)
    shuffled = train.copy()
    shuffled["y"] = train["y"].sample(frac=1.0, random_state=0).to_numpy()
    real, noise = ml_efficacy(train, test, SCHEMA, "y"), ml_efficacy(shuffled, test, SCHEMA, "y")
    assert real["metric"] == "f1" and real["task"] == "classification" and real["test_rows"] == 1000
    assert real["score"] > 0.85 and noise["score"] < 0.6 and real["score"] - noise["score"] > 0.3
    regression = TableSchema(columns=SCHEMA.columns, target="x")
    shuffled["x"] = train["x"].sample(frac=1.0, random_state=1).to_numpy()
    r2, r2_noise = ml_efficacy(train, test, regression, "x"), ml_efficacy(shuffled, test, regression, "x")
    assert r2["metric"] == "r2" and r2["score"] > 0.6 and r2_noise["score"] < 0.1
    one_class = train.assign(y="A")  # a collapsed synthetic table: F1 of always predicting A
    assert ml_efficacy(one_class, test, SCHEMA, "y")["score"] == pytest.approx(
        0.5 * 2 * (test["y"] == "A").mean() / (1 + (test["y"] == "A").mean()), abs=1e-12
    )


def test_distance_features_give_the_documented_distances() -> None:
    schema = TableSchema(columns=[_num("v"), _cat("c", ["a", "b", "c"])])
    train = pd.DataFrame({"v": ["0", "4", "8", "10"], "c": ["a", "b", "c", "a"]})  # range 10, median 6
    other = pd.DataFrame({"v": ["5", "", "0"], "c": ["b", "a", ""]})
    t, o = distance_features([train, other], schema)
    distance = np.linalg.norm(t[:, None, :] - o[None, :, :], axis=2)
    assert distance[0, 0] == pytest.approx(math.sqrt(0.5**2 + 1))  # (0, a) - (5, b): half the range, one mismatch
    assert distance[0, 1] == pytest.approx(math.sqrt(0.6**2 + 1))  # (0, a) - (missing, a): median 6, indicator
    assert distance[0, 2] == pytest.approx(1.0)  # (0, a) - (0, missing): missing is its own category
    assert distance[1, 0] == pytest.approx(0.1)


def test_privacy_scores_of_a_hand_made_table_with_ties() -> None:
    schema = TableSchema(columns=[_cat("c", ["a", "b", "c", "d"])])
    train, holdout = pd.DataFrame({"c": ["a", "b"]}), pd.DataFrame({"c": ["a", "c"]})
    synth = pd.DataFrame({"c": ["a", "b", "c", "d"]})  # a: tie at 0, b: train, c: holdout, d: tie at 1
    scores = privacy_scores(synth, train, holdout, schema)
    assert scores["dcr_share"] == 0.5 and scores["dcr_median"] == pytest.approx(0.5)
    assert scores["exact_copies"] == 2 and scores["holdout_exact_copies"] == 1
    assert scores["attack_auc"] == 0.5  # every train and holdout row is itself a synthetic row
    lopsided = privacy_scores(pd.DataFrame({"c": ["a", "b", "b", "d"]}), train, holdout, schema)
    assert lopsided["dcr_share"] == 0.75  # a: tie, b and b: train, d: tie -> (0.5 + 1 + 1 + 0.5) / 4
    assert lopsided["attack_auc"] == 0.75  # members a, b at 0; outsiders a at 0, c at 1


def test_privacy_of_a_copy_of_the_train_rows() -> None:
    train, holdout = _table(500, 5), _table(500, 6)
    scores = privacy_scores(train.copy(), train, holdout, SCHEMA)
    assert scores["exact_copies"] == 500 and scores["exact_copy_rate"] == 1.0
    # spelled otherwise ("0.1230" as "0.12300", "" as "nan", "NA" as ""): the same values, still copies
    respelled = train.assign(x=train["x"] + "0", z=train["z"].replace("", "nan"), c=train["c"].replace("NA", ""))
    assert privacy_scores(respelled, train, holdout, SCHEMA) == scores
    assert scores["dcr_share"] == 1.0 and scores["dcr_median"] == 0.0
    assert scores["attack_auc"] == 1.0
    assert scores["holdout_dcr_median"] > 0.01


def test_privacy_of_independent_rows_from_the_same_distribution() -> None:
    # 40 seeds at 500 rows: share 0.502 +- 0.028 (0.448..0.558), AUC 0.500 +- 0.017 (0.466..0.534)
    train, holdout, synth = _table(1000, 7), _table(1000, 8), _table(1000, 9)
    scores = privacy_scores(synth, train, holdout, SCHEMA)
    assert 0.42 < scores["dcr_share"] < 0.58
    assert 0.45 < scores["attack_auc"] < 0.55
    assert scores["exact_copies"] == 0 and scores["holdout_exact_copies"] == 0
    assert scores["dcr_median"] == pytest.approx(scores["holdout_dcr_median"], rel=0.2)
    # half copies, half fresh rows: closer to train for every copy and half the rest, 0.75
    half = pd.concat([train.iloc[:500], synth.iloc[:500]], ignore_index=True)
    mixed = privacy_scores(half, train, holdout, SCHEMA)
    duplicated = privacy_scores(synth, train, pd.concat([holdout.iloc[:990], train.iloc[:10]]), SCHEMA)
    assert duplicated["holdout_exact_copies"] == 10
    assert mixed["exact_copies"] == 500 and 0.70 < mixed["dcr_share"] < 0.80
    assert 0.7 < mixed["attack_auc"] < 0.8  # copied members score 0: AUC about 0.5 + 0.5 * 0.5
    # a larger train table is subsampled to the holdout's size for the share, which stays near 0.5
    unequal = privacy_scores(synth, pd.concat([train, _table(1000, 10)], ignore_index=True), holdout, SCHEMA)
    assert 0.42 < unequal["dcr_share"] < 0.58 and unequal["train_rows"] == 2000


def test_table_report_is_strict_json_with_means_of_its_details(tmp_path: Path) -> None:
    train, holdout, test, synth = _table(600, 11), _table(600, 12), _table(600, 13), _table(600, 14)
    report = table_report(test, synth, SCHEMA, train=train, holdout=holdout)
    json.dumps(report, allow_nan=False)
    shapes, trends = report["column_shapes"], report["pair_trends"]
    assert shapes["mean"] == pytest.approx(np.mean(list(shapes["columns"].values())))
    assert trends["mean"] == pytest.approx(np.mean(list(trends["pairs"].values())))
    assert trends["pairs_scored"] == trends["pairs_total"] == 10
    efficacy = report["ml_efficacy"]
    assert efficacy["target"] == "y"
    assert efficacy["ratio"] == pytest.approx(efficacy["synthetic"]["score"] / efficacy["real"]["score"])
    assert report["privacy"]["exact_copies"] == 0 and report["rows"]["holdout"] == 600
    assert report["missing_rates"]["z"]["real"] == pytest.approx((test["z"] == "").mean())
    assert report["missing_rates"]["c"]["synth"] == pytest.approx((synth["c"] == "NA").mean())
    no_target = table_report(test, synth, TableSchema(columns=SCHEMA.columns))
    assert "ml_efficacy" not in no_target and "privacy" not in no_target


def test_association_matrix_and_the_report_png(tmp_path: Path) -> None:
    schema = TableSchema(columns=[_num("u"), _num("v"), _cat("a", ["p", "q"]), _cat("b", ["r", "s"])])
    # a/b: counts [[30, 10], [10, 30]] -> chi^2 = 20, V = sqrt(20 / 80) = 0.5; v = -2 u exactly
    a = ["p"] * 40 + ["q"] * 40
    b = ["r"] * 30 + ["s"] * 10 + ["r"] * 10 + ["s"] * 30
    u = np.arange(80.0)
    frame = pd.DataFrame({"u": u.astype(str), "v": (-2 * u).astype(str), "a": a, "b": b})
    matrix = association_matrix(frame, schema)
    assert matrix[2, 3] == pytest.approx(0.5) and matrix[0, 1] == pytest.approx(-1.0)
    assert np.allclose(np.diag(matrix), 1.0) and np.allclose(matrix, matrix.T)
    path = tmp_path / "out" / "report.png"
    plot_table_report(_table(300, 15), _table(300, 16), SCHEMA, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert [p.name for p in path.parent.iterdir()] == ["report.png"]


def _check_cells(synth: pd.DataFrame, train: pd.DataFrame) -> None:
    """Columns, categories and numeric formats of a baseline's rows against the schema and its train rows."""
    assert list(synth.columns) == [c.name for c in SCHEMA.columns]
    assert set(synth["c"]) <= set(train["c"]) and set(synth["y"]) <= set(train["y"])
    for name in ("x", "z"):
        present = synth[name][synth[name] != ""]
        assert present.str.fullmatch(r"-?\d+\.\d{4}").all()
        assert present.astype(float).between(train[name][train[name] != ""].astype(float).min(), 5).all()
    assert synth["k"].str.fullmatch(r"\d+").all()
    assert synth["k"].astype(int).between(0, 20).all()
    assert abs((synth["z"] == "").mean() - (train["z"] == "").mean()) < 0.03
    assert abs((synth["c"] == "NA").mean() - (train["c"] == "NA").mean()) < 0.03


def test_smote_keeps_formats_classes_and_copies_no_rows() -> None:
    baselines = _baselines()
    train = _table(1000, 17)
    synth = baselines.smote_sample(train, SCHEMA, 1000, seed=0)
    _check_cells(synth, train)
    assert synth.equals(baselines.smote_sample(train, SCHEMA, 1000, seed=0))
    numeric = set(map(tuple, train[["x", "z", "k"]].to_numpy()))
    copies = sum(row in numeric for row in map(tuple, synth[["x", "z", "k"]].to_numpy()))
    assert copies < 10
    # neighbours of the same class: every row of A has a twin in B at distance 0.001 (w scaled by its range,
    # 1000), rows of one class are 0.02 apart in v, so A's rows keep w = 0 only if neighbours are of A
    schema = TableSchema(columns=[_num("v"), _num("w"), _cat("y", ["A", "B"])], target="y")
    v = np.arange(50.0)
    two = pd.DataFrame(
        {
            "v": np.concatenate([v, v, [0.0]]).astype(str),
            "w": np.concatenate([np.zeros(50), np.ones(50), [1000.0]]).astype(str),
            "y": ["A"] * 50 + ["B"] * 51,
        }
    )
    out = baselines.smote_sample(two, schema, 500, seed=1)
    assert (out["w"][out["y"] == "A"].astype(float) == 0).all()
    assert 0.4 < (out["y"] == "A").mean() < 0.6


def test_gaussian_copula_keeps_formats_marginals_and_the_correlation() -> None:
    baselines = _baselines()
    train = _table(2000, 18)
    synth = baselines.gaussian_copula_sample(train, SCHEMA, 2000, seed=0)
    _check_cells(synth, train)
    assert synth.equals(baselines.gaussian_copula_sample(train, SCHEMA, 2000, seed=0))
    assert min(column_shapes(train, synth, SCHEMA).values()) > 0.95
    assert pair_trends(train, synth, SCHEMA)["x|z"] > 0.97
    assert privacy_scores(synth, train, _table(2000, 19), SCHEMA)["exact_copies"] == 0
