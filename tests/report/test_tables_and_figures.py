"""Tests for riftune.report: history CSV, Markdown tables, aggregation over seeds, figures."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA

from riftune.report import (
    COMPARE_COLUMNS,
    MetricColumn,
    aggregate_runs,
    compare_report_markdown,
    flatten_metrics,
    format_stat,
    pca_2d,
    plot_embeddings,
    plot_tradeoff,
    plot_training,
    read_history_csv,
    relative_to_plain_table,
    select_lambda,
    summary_table,
    write_history_csv,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_real_png(path: Path) -> np.ndarray:
    """The file is a PNG that matplotlib reads back, and it is not a blank image."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.var(image[..., :3])) > 0
    return image


def parse_table(markdown: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """Headers and body cells of the first Markdown table after ``heading``."""
    lines = markdown[markdown.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line[1:-1])])
    assert all(re.fullmatch(r"-+:?", cell) for cell in block[1]), block[1]
    return block[0], block[2:]


# --------------------------------------------------------------------------- history CSV


def test_history_csv_round_trip_with_union_of_columns(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 0.6931471805599453, "val_auc": 0.5},
        {"epoch": 2, "train_loss": 0.41, "train_reg_loss": 1e-07, "val_auc": float("nan")},
        {"epoch": 3, "val_cka": 0.987654321, "train_loss": None, "note": "lr drop"},
    ]
    path = tmp_path / "history.csv"
    write_history_csv(history, path)
    header = path.read_text().splitlines()[0]
    assert header == "epoch,train_loss,val_auc,train_reg_loss,val_cka,note"
    back = read_history_csv(path)
    assert back[0] == history[0]
    assert back[1]["train_reg_loss"] == 1e-07 and math.isnan(back[1]["val_auc"])
    assert back[2] == {"epoch": 3, "val_cka": 0.987654321, "note": "lr drop"}  # None dropped
    assert isinstance(back[0]["epoch"], int)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["epoch", "train_loss", "val_auc", "val_cka", "train_reg_loss"]),
            st.floats(allow_nan=False) | st.integers(-(10**6), 10**6),
            min_size=1,
        ),
        min_size=1,
        max_size=5,
    )
)
def test_history_csv_round_trip_property(tmp_path_factory, history):
    path = tmp_path_factory.mktemp("h") / "history.csv"
    write_history_csv(history, path)
    assert read_history_csv(path) == history


# --------------------------------------------------------------------------- summary table


def test_summary_table_rows_columns_and_formats():
    rows = [
        {"run": "full", "acc": 0.81234, "auc": 0.9, "cka": 0.41, "seconds": 61.04},
        {"run": "full + rift|paired", "acc": 0.8, "auc": 0.91, "cka": None, "seconds": 70.0},
    ]
    columns = [
        ("run", "Run", ""),
        ("acc", "Accuracy", ".3f"),
        ("auc", "AUC", ".3f"),
        ("cka", "CKA", ".2f"),
        ("seconds", "Time", lambda s: f"{s:.0f} s"),
    ]
    table = summary_table(rows, columns)
    lines = table.splitlines()
    assert len(lines) == 4
    assert lines[0] == "| Run | Accuracy | AUC | CKA | Time |"
    assert lines[1] == "|---|---:|---:|---:|---:|"
    assert lines[2] == "| full | 0.812 | 0.900 | 0.41 | 61 s |"
    assert lines[3] == r"| full + rift\|paired | 0.800 | 0.910 | – | 70 s |"


# --------------------------------------------------------------------------- aggregation


def make_runs() -> list[dict]:
    """A small grid: full × {none, rift(paired) at λ 0.1 and 1} × seeds, one missing metric."""
    rng = np.random.default_rng(0)
    runs = []
    for reg, variant, lam, seeds in [
        ("none", None, None, [0, 1, 2]),
        ("rift", "paired", 0.1, [0, 1, 2]),
        ("rift", "paired", 1.0, [0, 1]),
    ]:
        for seed in seeds:
            runs.append(
                {
                    "dataset": "breastmnist",
                    "method": "full",
                    "reg": reg,
                    "variant": variant,
                    "lam": lam,
                    "seed": seed,
                    "test.acc": float(rng.uniform(0.7, 0.9)),
                    "test.cka": float(rng.uniform(0.3, 0.9)),
                    "val.auc": float(rng.uniform(0.8, 0.9)),
                    "run_dir": f"runs/{reg}-{lam}-{seed}",
                }
            )
    runs[0]["test.ece"] = 0.05  # reported by one seed of one group only
    return runs


def test_aggregate_runs_matches_numpy_mean_and_sample_std():
    runs = make_runs()
    groups = aggregate_runs(runs)
    assert [(g["reg"], g["lam"], g["n"]) for g in groups] == [
        ("none", None, 3),
        ("rift", 0.1, 3),
        ("rift", 1.0, 2),
    ]
    for group in groups:
        members = [r for r in runs if r["reg"] == group["reg"] and r["lam"] == group["lam"]]
        assert group["seeds"] == sorted(r["seed"] for r in members)
        for key in ("test.acc", "test.cka", "val.auc"):
            values = np.array([r[key] for r in members])
            stat = group["metrics"][key]
            assert stat["n"] == len(values)
            np.testing.assert_allclose(stat["mean"], values.mean(), rtol=1e-12)
            np.testing.assert_allclose(stat["std"], values.std(ddof=1), rtol=1e-12)
        assert "run_dir" not in group["metrics"] and "seed" not in group["metrics"]
    # A metric reported by a single seed: n = 1, std None, printed as "–".
    ece = groups[0]["metrics"]["test.ece"]
    assert ece == {"mean": 0.05, "std": None, "n": 1}
    assert format_stat(ece, ".3f") == "0.050 ± –"


def test_aggregate_runs_rejects_duplicate_seeds_and_missing_keys():
    run = {"method": "full", "reg": "none", "seed": 0, "test.acc": 0.8}
    with pytest.raises(ValueError, match="repeated seeds"):
        aggregate_runs([run, dict(run)])
    with pytest.raises(ValueError, match="seed"):
        aggregate_runs([{"method": "full", "reg": "none"}])


def test_flatten_metrics_keeps_numbers_under_dotted_keys():
    metrics = {
        "test": {"acc": 0.8, "auc": 0.9, "cka": 0.5, "confusion": [[1, 2], [3, 4]]},
        "val": {"auc": 0.85},
        "transfer": {"retained": 0.97, "dataset": "pneumoniamnist"},
        "best_epoch": 3,
        "amp": True,
    }
    assert flatten_metrics(metrics) == {
        "test.acc": 0.8,
        "test.auc": 0.9,
        "test.cka": 0.5,
        "val.auc": 0.85,
        "transfer.retained": 0.97,
        "best_epoch": 3.0,
    }


def group(reg, lam, val_auc, method="full", variant=None, **metrics):
    stats = {"val.auc": {"mean": val_auc, "std": None, "n": 1}}
    stats.update({k: {"mean": v, "std": None, "n": 1} for k, v in metrics.items()})
    return {
        "dataset": None,
        "method": method,
        "reg": reg,
        "variant": variant,
        "lam": lam,
        "seeds": [0],
        "n": 1,
        "metrics": stats,
    }


def test_select_lambda_best_validation_auc_ties_to_smaller_lambda():
    groups = [
        group("rift", 10.0, 0.90, variant="paired"),
        group("rift", 0.1, 0.85, variant="paired"),
        group("rift", 1.0, 0.90, variant="paired"),  # ties with 10 → the smaller λ wins
        group("rift", 1.0, 0.70, variant="covariance"),
        group("rift", 0.1, 0.75, variant="covariance"),
        group("rift", 0.1, 0.99, method="lora", variant="paired"),
        group("none", None, 0.80),
        group("cka", 1.0, float("nan")),  # no finite AUC at this λ: never chosen
        group("cka", 3.0, 0.60),
    ]
    chosen = select_lambda(groups)
    picked = {(g["method"], g["reg"], g["variant"]): g["lam"] for g in chosen}
    assert picked == {
        ("full", "rift", "paired"): 1.0,
        ("full", "rift", "covariance"): 0.1,
        ("lora", "rift", "paired"): 0.1,
        ("full", "none", None): None,
        ("full", "cka", None): 3.0,
    }
    assert select_lambda(chosen) == chosen  # idempotent
    lower = select_lambda(groups[:3], key="val.auc", higher_is_better=False)
    assert [g["lam"] for g in lower] == [0.1]
    with pytest.raises(ValueError, match=r"finite 'val\.auc'"):
        select_lambda([group("cka", 1.0, float("nan"))])


# --------------------------------------------------------------------------- compare report


def test_compare_report_bolds_exactly_the_best_per_column_with_direction():
    groups = [
        group(
            "none",
            None,
            0.80,
            **{
                "test.acc": 0.85,
                "test.cka": 0.40,
                "test.ece": 0.09,
                "test.sharpness": 0.30,
                "train_step_ms": 50.0,
            },
        ),
        group(
            "rift",
            1.0,
            0.82,
            variant="paired",
            **{
                "test.acc": 0.84,
                "test.cka": 0.80,
                "test.ece": 0.05,
                "test.sharpness": 0.20,
                "train_step_ms": 52.0,
            },
        ),
        group(
            "rift",
            10.0,
            0.70,
            variant="paired",
            **{"test.acc": 0.99, "test.cka": 0.99, "test.ece": 0.01},
        ),  # not chosen
        group(
            "l2sp",
            0.01,
            0.81,
            **{
                "test.acc": 0.83,
                "test.cka": 0.60,
                "test.ece": 0.12,
                "test.sharpness": 0.10,
                "train_step_ms": 49.0,
            },
        ),
        group("none", None, 0.9, method="linear", **{"test.acc": 0.7, "test.cka": 1.0}),
    ]
    report = compare_report_markdown(groups, notes=["command: riftune compare --grid g.yaml"])

    headers, rows = parse_table(report, "## full")
    assert headers == [
        "Regularizer",
        "λ",
        "n",
        "Acc ↑",
        "CKA ↑",
        "Sharpness ↓",
        "ECE ↓",
        "Step ms ↓",
        "Val AUC ↑",
    ]  # columns nobody reports (AUC, Hessian, Retained, Val CKA) left out
    assert [r[:3] for r in rows] == [
        ["none", "–", "1"],
        ["rift (paired)", "1", "1"],
        ["l2sp", "0.01", "1"],
    ]
    bold = {(r[0], headers[j]) for r in rows for j, cell in enumerate(r) if cell.startswith("**")}
    assert bold == {
        ("none", "Acc ↑"),  # higher is better: 0.85
        ("rift (paired)", "CKA ↑"),  # 0.80; the λ = 10 row (0.99) was not selected
        ("l2sp", "Sharpness ↓"),  # lower is better: 0.10
        ("rift (paired)", "ECE ↓"),  # 0.05
        ("l2sp", "Step ms ↓"),  # 49.0
        ("rift (paired)", "Val AUC ↑"),  # 0.82
    }
    assert rows[1][4] == "**0.800 ± –**"

    # The single-row linear table has nothing to compare: no bold.
    _, linear_rows = parse_table(report, "## linear")
    assert linear_rows == [["none", "–", "1", "0.700 ± –", "1.000 ± –", "–", "–", "–", "0.900 ± –"]]

    legend = report[report.index("## Legend") :]
    assert "Higher is better (↑): Acc, CKA, Val AUC." in legend
    assert "Lower is better (↓): Sharpness, ECE, Step ms." in legend
    assert "ddof = 1" in legend and "Seeds: 0." in legend
    assert "AUC (`test.auc`)" in legend and "command: riftune compare" in legend


def test_compare_report_from_aggregated_runs_shows_mean_and_std():
    runs = make_runs()
    report = compare_report_markdown(aggregate_runs(runs), columns=COMPARE_COLUMNS[:3])
    headers, rows = parse_table(report, "## breastmnist · full")
    assert headers == ["Regularizer", "λ", "n", "Acc ↑", "CKA ↑"]
    none_acc = np.array([r["test.acc"] for r in runs if r["reg"] == "none"])
    expected = f"{none_acc.mean():.3f} ± {none_acc.std(ddof=1):.3f}"
    assert rows[0][3].strip("*") == expected
    assert "Seeds: 0, 1, 2." in report


def test_metric_column_rejects_unknown_direction():
    with pytest.raises(ValueError, match="higher"):
        MetricColumn("test.acc", "Acc", "up")


# --------------------------------------------------------------------------- figures


@pytest.mark.parametrize("shape", [(60, 5), (40, 300)])  # the covariance's and the Gram's route
def test_pca_2d_matches_sklearn_up_to_sign(shape):
    rng = np.random.default_rng(1)
    x = rng.normal(size=shape) @ np.diag(np.linspace(3.0, 0.5, shape[1])) + 3.0
    scores, ratios = pca_2d(x)
    reference = PCA(n_components=2, svd_solver="full").fit(x)
    expected = reference.transform(x)
    for k in range(2):
        sign = np.sign(scores[:, k] @ expected[:, k])
        np.testing.assert_allclose(scores[:, k], sign * expected[:, k], atol=1e-9)
    np.testing.assert_allclose(ratios, reference.explained_variance_ratio_, rtol=1e-9)
    one_dim, one_ratios = pca_2d(x[:, :1])
    assert np.all(one_dim[:, 1] == 0) and one_ratios[0] == pytest.approx(1.0)


def test_plot_training_writes_png_and_skips_missing_keys(tmp_path):
    history = [
        {
            "epoch": e,
            "train_loss": 1 / e,
            "train_task_loss": 0.9 / e,
            "train_reg_loss": 0.1 / e,
            "val_auc": 0.7 + 0.02 * e,
            "val_acc": 0.6 + 0.03 * e,
            "val_cka": 1 - 0.05 * e,
        }
        for e in range(1, 6)
    ]
    full = tmp_path / "training.png"
    plot_training(history, full, best_epoch=4)
    assert_real_png(full)
    sparse = tmp_path / "sparse.png"
    plot_training([{"epoch": 1, "train_loss": 0.7}, {"train_loss": "nan"}], sparse)
    assert_real_png(sparse)
    csv = tmp_path / "history.csv"
    write_history_csv(history, csv)
    plot_training(read_history_csv(csv), tmp_path / "from_csv.png")
    assert_real_png(tmp_path / "from_csv.png")


def test_plot_embeddings_writes_png_and_validates_shapes(tmp_path):
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, size=90)
    pretrained = rng.normal(size=(90, 16)) + labels[:, None]
    finetuned = rng.normal(size=(90, 8)).astype(np.float32) + 2 * labels[:, None]
    path = tmp_path / "embeddings.png"
    plot_embeddings(pretrained, finetuned, labels, path, class_names=["a", "b", "c"], cka=0.42)
    assert_real_png(path)
    with pytest.raises(ValueError, match="same N"):
        plot_embeddings(pretrained, finetuned[:-1], labels, path)
    with pytest.raises(ValueError, match="shapes"):
        plot_embeddings(pretrained, finetuned, labels[:, None], path)


def test_plot_tradeoff_writes_png(tmp_path):
    runs = make_runs()
    for run in make_runs():
        runs.append({**run, "method": "lora", "dataset": "pneumoniamnist"})
    path = tmp_path / "tradeoff.png"
    plot_tradeoff(aggregate_runs(runs), path)
    image = assert_real_png(path)
    assert image.shape[1] > image.shape[0]  # two dataset panels and legends side by side
    empty = tmp_path / "empty.png"
    plot_tradeoff([group("none", None, 0.8)], empty)
    assert_real_png(empty)


def test_relative_to_plain_table_points_and_percent():
    groups = [
        group("none", None, 0.80, **{"test.acc": 0.80, "test.cka": 0.40, "test.sharpness": 0.30}),
        group(
            "rift",
            1.0,
            0.78,
            variant="paired",
            **{"test.acc": 0.825, "test.cka": 0.60, "test.sharpness": 0.15},
        ),
        group("l2sp", 0.1, 0.81, **{"test.acc": 0.79}),
    ]
    lines = relative_to_plain_table(groups).splitlines()
    assert lines[0] == (
        "| Regularizer | λ | Acc Δ (points) | CKA change | Sharpness change | Val AUC Δ (points) |"
    )
    assert lines[2] == "| rift (paired) | 1 | +2.5 | +50% | -50% | -2.0 |"
    assert lines[3] == "| l2sp | 0.1 | -1.0 | – | – | +1.0 |"
    assert relative_to_plain_table(groups[1:]) == ""  # no `none` to compare with
    assert relative_to_plain_table(groups[:1]) == ""  # nothing but `none`
