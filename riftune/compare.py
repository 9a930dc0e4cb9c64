"""``riftune compare``: a resumable grid of finetuning runs, summarized in report.md.

The grid is datasets × methods × regularizer variants × λ × seeds. λ is chosen per
(dataset, method, variant) on validation AUC only, from runs with the first seed (the
selection seed); the chosen λ then runs with every seed. With ``wise_ft`` methods, the
unregularized runs of those methods are also interpolated with the pretrained backbone
(``riftune wise-ft``); α is chosen on validation AUC of the selection seed and reported as the
regularizer ``wise-ft``. Each run is a ``riftune finetune`` subprocess in its own folder, so a
finished run is skipped, an interrupted one is resumed, and an interrupted grid continues
where it stopped. ``--jobs N`` runs N at once (e.g. on one GPU).

A regularizer variant is written ``NAME`` or ``NAME[key=value,...]``; each key is the
regularizer's own flag without its prefix (``rift[match=paired,q=optimal]`` means
``--reg rift --rift-match paired --rift-q optimal``) or any finetune flag
(``cka[reference=cache]``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

from riftune import report
from riftune.config import finetune_parser, run_config_from_args
from riftune.config.run import flag_targets
from riftune.errors import UserError
from riftune.run_dir import RunDir

_VARIANT = re.compile(r"^(?P<name>[\w-]+)(\[(?P<options>[^\]]*)\])?$")


@dataclass(frozen=True)
class RegularizerVariant:
    """A regularizer with fixed flags; ``label`` names it in reports (e.g. ``paired,optimal``)."""

    name: str
    flags: tuple[str, ...]
    label: str

    @property
    def folder(self) -> str:
        return self.name + (f"[{self.label}]" if self.label else "")


def parse_variant(text: str) -> RegularizerVariant:
    """``rift[match=paired,q=optimal]`` -> the flags ``--reg rift --rift-match paired ...``."""
    match = _VARIANT.match(text.strip())
    if match is None:
        raise UserError(f"cannot read regularizer {text!r}; write NAME or NAME[key=value,...]")
    name = match["name"]
    known = {"--" + dest.replace("_", "-") for dest in flag_targets()}
    flags: list[str] = ["--reg", name]
    values = []
    for item in filter(None, (match["options"] or "").split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"{item!r} in {text!r} needs the form key=value")
        flag = next((f for f in (f"--{name}-{key}", f"--{key}") if f in known), None)
        if flag is None:
            raise UserError(f"{text!r}: neither --{name}-{key} nor --{key} is a finetune flag")
        flags += [flag, value]
        values.append(value)
    return RegularizerVariant(name, tuple(flags), ",".join(values))


def run_folder(
    out: Path, dataset: str, method: str, variant_folder: str, lam: float | None, seed: int
) -> Path:
    """Where a grid in ``out`` keeps one run: runs/DATASET/METHOD/VARIANT/lamΛ|no-lam/seedS."""
    lam_part = "no-lam" if lam is None else f"lam{lam:g}"
    return out / "runs" / dataset / method / variant_folder / lam_part / f"seed{seed}"


@dataclass(frozen=True)
class Job:
    dataset: str
    method: str
    variant: RegularizerVariant
    lam: float | None
    seed: int
    folder: Path

    def command(self, passthrough: Sequence[str]) -> list[str]:
        lam = ["--lam", repr(self.lam)] if self.lam is not None else []
        return [
            sys.executable, "-m", "riftune", "finetune",
            "--data", self.dataset,
            "--method", self.method,
            *self.variant.flags,
            *lam,
            "--seed", str(self.seed),
            "--out", str(self.folder),
            "--quiet",
            *passthrough,
        ]  # fmt: skip

    def record(self) -> dict | None:
        """The run record for report.aggregate_runs, or None while the run is unfinished."""
        metrics_path = self.folder / "metrics.json"
        if not metrics_path.is_file():
            return None
        metrics = json.loads(metrics_path.read_text())
        return {
            "dataset": self.dataset,
            "method": self.method,
            "reg": self.variant.name,
            "variant": self.variant.label or None,
            "lam": self.lam,
            "seed": self.seed,
            **report.flatten_metrics(metrics),
        }


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="grid folder (resumable)")
    parser.add_argument("--grid", help="YAML file with any of the keys below (flags override)")
    parser.add_argument("--data", help="comma-separated datasets (default: breastmnist)")
    parser.add_argument("--methods", help="comma-separated methods (default: full)")
    parser.add_argument(
        "--regs",
        help="regularizer variants separated by spaces or semicolons, e.g. "
        "'none;rift[match=paired,q=optimal];cka' (default: none;rift)",
    )
    parser.add_argument("--lams", help="comma-separated λ values (default: 0.1,1,10)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument(
        "--wise-ft",
        help="comma-separated methods whose unregularized runs also get WiSE-FT rows "
        "(default: none)",
    )
    parser.add_argument("--wise-ft-alphas", help="the α grid of WiSE-FT (default: 0,0.1,...,1)")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs at once (default: 1; e.g. 8 on one GPU)"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write report.md and tradeoff.png from the runs already finished",
    )
    parser.add_argument("--quiet", action="store_true", help="only the final summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def _resolve_grid(args: argparse.Namespace) -> dict:
    grid = {
        "data": ["breastmnist"],
        "methods": ["full"],
        "regs": ["none", "rift"],
        "lams": [0.1, 1.0, 10.0],
        "seeds": [0, 1, 2],
        "wise_ft": [],
        "wise_ft_alphas": "0,0.1,...,1",
        "finetune": {},
        "dataset_finetune": {},
    }
    if args.grid:
        path = Path(args.grid)
        if not path.is_file():
            raise UserError(f"grid file {path} not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        unknown = set(loaded) - set(grid)
        if unknown:
            raise UserError(f"{path}: unknown keys {sorted(unknown)}; use {sorted(grid)}")
        grid.update(loaded)
    lists = (("data", str), ("methods", str), ("lams", float), ("seeds", int), ("wise_ft", str))
    for key, convert in lists:
        text = getattr(args, key)
        if text:
            grid[key] = [convert(v) for v in text.split(",") if v.strip()]
    if args.wise_ft_alphas:
        grid["wise_ft_alphas"] = args.wise_ft_alphas
    if isinstance(grid["wise_ft_alphas"], list):  # YAML may list the values
        grid["wise_ft_alphas"] = ",".join(str(a) for a in grid["wise_ft_alphas"])
    unknown = set(grid["wise_ft"]) - set(grid["methods"])
    if unknown:
        raise UserError(f"wise-ft methods {sorted(unknown)} are not among the grid's methods")
    if args.regs:
        grid["regs"] = [v for v in re.split(r"[;\s]+", args.regs) if v]
    return grid


def _finetune_flags(grid: dict, passthrough: Sequence[str], dataset: str) -> list[str]:
    """``finetune`` flags, then the dataset's own (``dataset_finetune``), then the command
    line's pass-through flags; a later value of a flag overrides an earlier one."""
    flags = []
    own = (grid["dataset_finetune"] or {}).get(dataset) or {}
    for key, value in {**grid["finetune"], **own}.items():
        flags += [f"--{key}"] + ([] if value is True else [str(value)])
    return flags + list(passthrough)


def _run(job: Job, passthrough: Sequence[str], log, report_only: bool = False) -> None:
    if report_only or job.record() is not None:
        return
    run = RunDir(job.folder)
    # continue an interrupted run; restart one that failed before its first checkpoint
    again = (
        ["--resume"] if run.has_checkpoints() else ["--overwrite"] if run.config.exists() else []
    )
    job.folder.mkdir(parents=True, exist_ok=True)
    with open(job.folder / "compare.log", "a") as handle:
        result = subprocess.run(
            job.command(passthrough) + again,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=os.environ,
        )
    status = "done" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    log(f"{status}: {job.folder}")


def run_compare(args: argparse.Namespace, passthrough: Sequence[str]) -> str:
    """Run (or continue) the grid, then write report.md and tradeoff.png; returns report.md."""
    out = Path(args.out)
    grid = _resolve_grid(args)
    flags = {d: _finetune_flags(grid, passthrough, d) for d in grid["data"]}
    unknown = set(grid["dataset_finetune"] or {}) - set(grid["data"])
    if unknown:
        raise UserError(f"dataset_finetune names datasets not in the grid: {sorted(unknown)}")
    variants = [parse_variant(text) for text in grid["regs"]]
    parser = finetune_parser()
    for dataset, dataset_flags in flags.items():  # refuse bad flags before running anything
        for method in grid["methods"]:
            for variant in variants:
                run_config_from_args(
                    parser.parse_args(
                        [*dataset_flags, "--data", dataset, "--method", method, *variant.flags]
                    )
                )
    log = (
        (lambda message: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    )

    def job(dataset, method, variant, lam, seed) -> Job:
        folder = run_folder(out, dataset, method, variant.folder, lam, seed)
        return Job(dataset, method, variant, lam, seed, folder)

    cells = [(d, m, v) for d in grid["data"] for m in grid["methods"] for v in variants]
    first_seed, seeds = grid["seeds"][0], grid["seeds"]
    selection = [
        job(d, m, v, lam, first_seed)
        for d, m, v in cells
        for lam in ([None] if v.name == "none" else grid["lams"])
    ]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        list(pool.map(lambda j: _run(j, flags[j.dataset], log, args.report_only), selection))

    chosen: dict[tuple, float | None] = {}
    for d, m, v in cells:
        records = [j.record() for j in selection if (j.dataset, j.method, j.variant) == (d, m, v)]
        records = [r for r in records if r is not None]
        if records:
            best = report.select_lambda(report.aggregate_runs(records))[0]
            chosen[(d, m, v)] = best["lam"]
    final = [job(d, m, v, chosen[(d, m, v)], s) for (d, m, v) in chosen for s in seeds]
    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        list(pool.map(lambda j: _run(j, flags[j.dataset], log, args.report_only), final))

    records = [r for r in (j.record() for j in final) if r is not None]
    records += _wise_ft_records(final, grid, first_seed, args, log)
    missing = [str(j.folder) for j in selection + final if j.record() is None]
    if not records:
        raise UserError(f"no run of the grid finished; see the compare.log files under {out}")
    groups = report.aggregate_runs(records)
    notes = [
        "Command: riftune " + " ".join(sys.argv[1:]) if sys.argv[1:] else "",
        f"λ chosen on validation AUC with seed {first_seed}; every chosen λ then ran seeds "
        f"{', '.join(map(str, seeds))}.",
    ]
    if grid["wise_ft"]:
        notes.append(
            "wise-ft (α=a): the unregularized run's backbone interpolated with the pretrained "
            f"one, θ = (1 − a)·θ₀ + a·θ, a from {grid['wise_ft_alphas']} chosen on validation "
            f"AUC with seed {first_seed}; test CKA, accuracy, AUC and ECE only."
        )
    if missing:
        notes.append(f"{len(missing)} runs did not finish: " + ", ".join(missing))
    text = report.compare_report_markdown(groups, lambda_key=None, notes=[n for n in notes if n])
    (out / "report.md").write_text(text)
    report.plot_tradeoff(groups, out / "tradeoff.png", lambda_key=None)
    (out / "runs.json").write_text(json.dumps(records, indent=1, sort_keys=True))
    return text


def _wise_ft_records(
    final: Sequence[Job], grid: dict, first_seed: int, args: argparse.Namespace, log
) -> list[dict]:
    """Run WiSE-FT on the finished unregularized runs of ``grid["wise_ft"]`` methods (skipping
    runs that have wise_ft.json) and return one record per run, at the α with the best
    validation AUC of the first seed's run (ties: the smaller α)."""
    jobs = [
        j
        for j in final
        if j.method in grid["wise_ft"] and j.variant.name == "none" and j.record() is not None
    ]

    def run(job: Job) -> None:
        if args.report_only or (job.folder / "wise_ft.json").is_file():
            return
        command = [sys.executable, "-m", "riftune", "wise-ft", "--run", str(job.folder),
                   "--alphas", grid["wise_ft_alphas"]]  # fmt: skip
        with open(job.folder / "compare.log", "a") as handle:
            result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
        log(("done" if result.returncode == 0 else "FAILED") + f": wise-ft {job.folder}")

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        list(pool.map(run, jobs))
    rows = {
        j: json.loads((j.folder / "wise_ft.json").read_text())["alphas"]
        for j in jobs
        if (j.folder / "wise_ft.json").is_file()
    }
    chosen = {  # (dataset, method) -> α, from the first seed's run
        (j.dataset, j.method): max(alphas, key=lambda row: (row["val.auc"], -row["alpha"]))["alpha"]
        for j, alphas in rows.items()
        if j.seed == first_seed
    }
    records = []
    for job, alphas in rows.items():
        alpha = chosen.get((job.dataset, job.method))
        if alpha is None:
            continue
        row = next(r for r in alphas if r["alpha"] == alpha)
        metrics = {k: v for k, v in row.items() if k.startswith(("val.", "test."))}
        records.append(
            {
                "dataset": job.dataset,
                "method": job.method,
                "reg": "wise-ft",
                "variant": f"α={alpha:g}",
                "lam": None,
                "seed": job.seed,
                **metrics,
            }
        )
    return records
