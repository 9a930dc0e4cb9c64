"""``riftune bench`` runs every part end to end on a tiny model and writes what it prints.

No timing is asserted (machines are shared and noisy); only structure and sanity.
"""

from __future__ import annotations

import json
import math

import pytest

from riftune.cli import main


def test_bench_writes_ratios_reference_pass_and_scaling(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--no-pretrained", "--img-size", "32", "--batch-size", "4",
            "--eval-batch-size", "8", "--device", "cpu", "--steps", "2", "--warmup", "1",
            "--rounds", "2",
            "--variants", "rift covariance q=identity,rift paired q=learned,l2sp,ftp,ldifs,bss",
            "--epoch-images", "16", "--scaling-d", "16,32", "--scaling-batch", "4,8",
            "--scaling-dim", "16", "--scaling-n", "8", "--scaling-repeats", "1",
            "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    labels = [row["variant"] for row in results["steps"]]
    plain = results["steps"][0]
    assert labels[0] == "plain (none)"
    assert plain["time_ratio"] == 1.0 and plain["time_ratio_amortized"] == 1.0
    assert set(labels[1:]) == {
        "rift covariance q=identity stats=batch",
        "rift covariance q=identity stats=ema",
        "rift paired q=learned rank=d ref=cache",
        "rift paired q=learned rank=d ref=teacher",
        "rift paired q=learned rank=64 ref=cache",
        "rift paired q=learned rank=64 ref=teacher",
        "l2sp",
        "ftp",
        "ldifs",
        "bss",
    }
    for row in results["steps"]:
        assert row["step_ms"] > 0 and row["time_ratio"] > 0 and row["time_ratio_amortized"] > 0
        assert math.isfinite(row["penalty_alone"]) and row["penalty_alone"] >= 0
        assert row["time_ratio_se"] >= 0 and len(row["time_ratio_rounds"]) == (
            1 if row is plain else 2
        )
        assert row["variant"] in printed
    assert results["reference_pass"]["images"] == 16
    assert results["reference_pass"]["fraction_of_epoch"] > 0
    assert [(r["d"], r["n"]) for r in results["scaling"]] == [(16, 8), (32, 8), (16, 4), (16, 8)]
    columns = {k for r in results["scaling"] for k in r} - {"d", "n"}
    assert columns == {
        f"{match} q={q}"
        for match in ("covariance", "paired")
        for q in ("identity", "learned rank=d", "learned rank=64", "optimal")
    }
    assert all(r[k] > 0 for r in results["scaling"] for k in columns)


@pytest.mark.slow
def test_bench_runs_ema_optimal_q_on_the_shipped_weights_at_28_px(tmp_path):
    """The default recipe's size with the shipped EfficientNet-Lite0 (d = 1280, embeddings of
    low rank): float32 LAPACK once failed to converge on this running covariance, and the
    bench died; the eigensolver now falls back to float64."""
    out = tmp_path / "bench.json"
    argv = ["bench", "--img-size", "28", "--batch-size", "32", "--device", "cpu",
            "--steps", "2", "--warmup", "1", "--rounds", "1", "--skip", "reference,scaling",
            "--variants", "rift covariance q=optimal stats=ema", "--json", str(out)]  # fmt: skip
    assert main(argv) == 0
    rows = json.loads(out.read_text())["steps"]
    assert [r["variant"] for r in rows] == ["plain (none)", "rift covariance q=optimal stats=ema"]
