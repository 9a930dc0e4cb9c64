"""``riftune compare``: a small real grid, its report, λ selection, and resumption."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from riftune.cli import main
from riftune.commands.compare import add_compare_arguments
from riftune.commands.grid import (
    finetune_flags,
    parse_regularizer_entry,
    parse_variant,
    resolve_grid,
)
from riftune.errors import UserError

TINY = ["--epochs", "1", "--img-size", "32", "--shots", "10", "--batch-size", "8",
        "--landscape-images", "16", "--hessian-iters", "2"]  # fmt: skip


def test_dataset_finetune_flags_override_the_shared_ones():
    grid = {
        "finetune": {"epochs": 3, "freeze-bn": True},
        "dataset_finetune": {"pneumoniamnist": {"epochs": 1, "transfer-data": "breastmnist"}},
    }
    assert finetune_flags(grid, ["--quiet"], "breastmnist") == [
        "--epochs", "3", "--freeze-bn", "--quiet"]  # fmt: skip
    assert finetune_flags(grid, ["--quiet"], "pneumoniamnist") == [
        "--epochs", "1", "--freeze-bn", "--transfer-data", "breastmnist", "--quiet"]  # fmt: skip


def test_wise_ft_methods_must_be_in_the_grid(tmp_path):
    with pytest.raises(UserError, match="wise-ft"):
        main(["compare", "--out", str(tmp_path), "--methods", "full", "--wise-ft", "lora",
              "--debug"])  # fmt: skip


def test_variant_flags_resolve_to_the_regularizers_own_flags():
    variant = parse_variant("rift[match=paired,q=optimal]")
    assert variant.flags == ("--reg", "rift", "--rift-match", "paired", "--rift-q", "optimal")
    assert variant.label == "paired,optimal"
    assert parse_variant("cka[reference=cache]").flags[-2:] == ("--reference", "cache")
    with pytest.raises(UserError, match="--rift-colour"):
        parse_variant("rift[colour=blue]")
    with pytest.raises(UserError, match="key=value"):
        parse_variant("rift[paired]")


@pytest.mark.slow
def test_grid_runs_selects_lambda_reports_and_resumes(tmp_path, medmnist_dir, monkeypatch, capsys):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    out = tmp_path / "grid"
    argv = ["compare", "--out", str(out), "--data", "breastmnist", "--methods", "full",
            "--regs", "none;rift[match=paired,q=optimal]", "--lams", "0.5,2", "--seeds", "0,1",
            "--wise-ft", "full", "--wise-ft-alphas", "0,0.5,1", "--quiet", *TINY]  # fmt: skip
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    assert "rift (paired,optimal)" in report and "| none" in report
    # --shots is the grid's training-set size: its own folder level and report heading
    assert "## breastmnist · 10 shots · full" in report
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = json.loads((out / "runs.json").read_text())
    rift_runs = [r for r in records if r["reg"] == "rift" and r["chosen"]]
    assert sorted(r["seed"] for r in rift_runs) == [0, 1]
    swept = [r for r in records if r["reg"] == "rift" and not r["chosen"]]
    assert [(r["seed"], r["lam"] != rift_runs[0]["lam"]) for r in swept] == [(0, True)]
    assert len({r["lam"] for r in rift_runs}) == 1  # the λ chosen on validation, for every seed
    # λ was chosen on validation AUC of seed 0 among the λ grid
    lam_runs = {lam: json.loads((out / "runs" / "breastmnist-10shots" / "full" / "rift[paired,optimal]"
                                 / f"lam{lam:g}" / "seed0" / "metrics.json").read_text())
                for lam in (0.5, 2.0)}  # fmt: skip
    best = max(lam_runs, key=lambda lam: (lam_runs[lam]["val"]["auc"], -lam))
    assert rift_runs[0]["lam"] == best

    # WiSE-FT of the unregularized runs: α chosen on seed 0's validation AUC, used for every seed
    wise_runs = [r for r in records if r["reg"] == "wise-ft"]
    assert sorted(r["seed"] for r in wise_runs) == [0, 1]
    plain_seed0 = out / "runs" / "breastmnist-10shots" / "full" / "none" / "no-lam" / "seed0"
    alphas = json.loads((plain_seed0 / "wise_ft.json").read_text())["alphas"]
    assert [row["alpha"] for row in alphas] == [0.0, 0.5, 1.0]
    chosen = max(alphas, key=lambda row: (row["val.auc"], -row["alpha"]))
    assert {r["variant"] for r in wise_runs} == {f"α={chosen['alpha']:g}"}
    seed0 = next(r for r in wise_runs if r["seed"] == 0)
    assert seed0["test.auc"] == chosen["test.auc"]
    assert f"wise-ft (α={chosen['alpha']:g})" in report

    # finished runs are skipped: a second call changes no metrics.json
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps

    # an interrupted grid continues: remove one finished run and only that one is redone
    victim = next(iter(stamps))
    for path in sorted(victim.parent.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    assert main(argv) == 0
    assert victim.is_file()
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if p != victim)


def test_a_variant_may_set_its_own_lambda_grid_and_selection_seeds():
    plain, swept, budget = (
        parse_regularizer_entry(entry)
        for entry in (
            "none",
            {"reg": "rift[match=covariance]", "lams": [0.01, 0.1], "select_seeds": 3},
            "rift[match=paired,target-similarity=0.9]",
        )
    )
    assert plain.lam_grid([1.0, 10.0]) == [None]
    assert swept.lam_grid([1.0, 10.0]) == [0.01, 0.1] and swept.select_seeds == 3
    # under a similarity budget λ is found in training: one run per seed, no --lam
    assert budget.lam_grid([1.0, 10.0]) == [None]
    assert budget.flags[-2:] == ("--target-similarity", "0.9")
    for bad in ({"reg": "rift", "lam": [1]}, {"reg": "rift", "select_seeds": 0}, {"lams": [1]}):
        with pytest.raises(UserError):
            parse_regularizer_entry(bad)


@pytest.mark.parametrize("name", ["grid_evidence.yaml", "grid_evidence_whole.yaml"])
def test_the_evidence_grids_sweep_ftp_ldifs_and_bss(tmp_path, name):
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    grid_file = Path(__file__).parents[2] / "benchmarks" / name
    args = parser.parse_args(["--out", str(tmp_path / "g"), "--grid", str(grid_file)])
    variants = {v.name: v for v in map(parse_regularizer_entry, resolve_grid(args)["regs"])}
    ladders = {"ftp": [0.1, 1, 10], "ldifs": [10, 100, 1000], "bss": [0.001, 0.01, 0.1]}
    for reg, lams in ladders.items():
        assert variants[reg].flags == ("--reg", reg)
        assert variants[reg].lam_grid([5.0]) == lams
    assert parse_variant("bss[k=2]").flags == ("--reg", "bss", "--bss-k", "2")
    assert parse_variant("ldifs[layers=blocks.1]").flags[-2:] == ("--ldifs-layers", "blocks.1")


def test_a_grid_files_sizes_and_variants_carry_their_own_settings(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(
        "data: [breastmnist]\nshots: [10, all]\nfinetune: {epochs: 2, batch-size: 32}\n"
        "shots_finetune: {10: {batch-size: 10}}\n"
    )
    parser = argparse.ArgumentParser()
    add_compare_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "g"), "--grid", str(path)])
    grid = resolve_grid(args)
    assert finetune_flags(grid, [], "breastmnist", 10)[-2:] == ["--batch-size", "10"]
    assert finetune_flags(grid, [], "breastmnist", None)[-2:] == ["--batch-size", "32"]
    # --regs picks among the file's variants, which keep their own λ grids
    path.write_text("regs: [none, {reg: spd, lams: [0.5, 1]}]\n")
    args.regs = "spd;l2sp"
    assert resolve_grid(args)["regs"] == [{"reg": "spd", "lams": [0.5, 1]}, "l2sp"]
    args.regs = None
    path.write_text("shots: [10]\nshots_finetune: {50: {batch-size: 10}}\n")
    with pytest.raises(UserError, match="shots_finetune"):
        resolve_grid(args)


def test_slurm_settings_need_the_slurm_launcher(tmp_path, capsys):
    assert main(["compare", "--out", str(tmp_path / "g"), "--slurm-time", "5"]) == 2
    assert capsys.readouterr().err.strip() == "error: --slurm-time needs --launcher slurm"
    assert main(["compare", "--out", str(tmp_path / "g"), "--shots", "10,x"]) == 2
    assert "shots 'x'" in capsys.readouterr().err


@pytest.mark.slow
def test_shots_are_a_grid_dimension(tmp_path, medmnist_dir, monkeypatch):
    monkeypatch.setenv("RIFTUNE_DATA", str(medmnist_dir))
    out = tmp_path / "grid"
    tiny = [a for a in TINY if a not in ("--shots", "10")]
    argv = ["compare", "--out", str(out), "--regs", "none", "--seeds", "0", "--shots", "4,8",
            "--quiet", *tiny]  # fmt: skip
    assert main(argv) == 0
    report = (out / "report.md").read_text()
    assert "## breastmnist · 4 shots · full" in report
    assert "## breastmnist · 8 shots · full" in report
    for shots in (4, 8):
        run = out / "runs" / f"breastmnist-{shots}shots" / "full" / "none" / "no-lam" / "seed0"
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["data"]["shots"] == shots


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("data: breastmnist\n", "data must be a list"),
        ("seeds: zero\n", "seeds must be a list"),
        ("seeds: [0, one]\n", "seeds holds 'one'"),
        ("lams: [0.1, true]\n", "lams holds True"),
        ("regs: [none, 3]\n", "regs holds 3"),
        ("finetune: [epochs, 1]\n", "finetune must be a mapping"),
        ("select_seeds: yes\n", "select_seeds"),
        ('regs: ["rift[colour=blue]"]\n', "--rift-colour"),
        ("regs: [none]\nfinetune: {epochs: -1}\n", "epochs"),
        ("data: [breastmnist\n", "not a YAML grid file"),
        ("- data\n", "a mapping of keys"),
    ],
)
def test_a_bad_grid_is_one_line_and_creates_nothing(tmp_path, capsys, text, message):
    """A string where a list belongs once ran one job per letter; a grid refused for any
    reason (types, a variant, a cell's configuration) leaves no --out folder behind."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(text)
    out = tmp_path / "out"
    assert main(["compare", "--grid", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()
