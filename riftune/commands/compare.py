"""``riftune compare``: a resumable grid of finetuning runs, summarized in report.md.

The grid is datasets × training-set sizes × methods × regularizer variants × λ × seeds. λ is
chosen per (dataset, size, method, variant) on validation AUC only, as the best mean over the
first ``select_seeds`` seeds (default 1; a variant may set its own, and its own λ grid); the
chosen λ then runs with every seed. With ``wise_ft`` methods, the
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
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from riftune import report
from riftune.commands.grid import (
    RegularizerVariant,
    finetune_flags,
    parse_regularizer_entry,
    resolve_grid,
)
from riftune.config import finetune_parser, run_config_from_args
from riftune.errors import UserError
from riftune.runs.folder import RunDir, run_lock
from riftune.runs.launchers import (
    SLURM_FLAGS,
    GridJob,
    Launcher,
    LocalLauncher,
    add_launcher_arguments,
    slurm_launcher,
    slurm_settings,
)


def run_folder(
    out: Path,
    dataset: str,
    method: str,
    variant_folder: str,
    lam: float | None,
    seed: int,
    shots: int | None = None,
) -> Path:
    """Where a grid in ``out`` keeps one run: runs/DATASET[-Kshots]/METHOD/VARIANT/lamΛ|no-lam/
    seedS (the shots part only for a training set cut to K images per class)."""
    lam_part = "no-lam" if lam is None else f"lam{lam:g}"
    data_part = dataset if shots is None else f"{dataset}-{shots}shots"
    return out / "runs" / data_part / method / variant_folder / lam_part / f"seed{seed}"


@dataclass(frozen=True)
class Job:
    dataset: str
    method: str
    variant: RegularizerVariant
    lam: float | None
    seed: int
    folder: Path
    shots: int | None = None  # training images per class (None: the whole training set)

    @property
    def dataset_label(self) -> str:
        """The dataset as reports name it: ``breastmnist`` or ``breastmnist · 10 shots``."""
        return self.dataset if self.shots is None else f"{self.dataset} · {self.shots} shots"

    def command(self, passthrough: Sequence[str]) -> list[str]:
        lam = ["--lam", repr(self.lam)] if self.lam is not None else []
        shots = ["--shots", str(self.shots)] if self.shots is not None else []
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
            *shots,
        ]  # fmt: skip

    def record(self) -> dict | None:
        """The run record for report.aggregate_runs, or None while the run is unfinished."""
        metrics_path = self.folder / "metrics.json"
        if not metrics_path.is_file():
            return None
        try:
            metrics = json.loads(metrics_path.read_bytes())
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
            metrics = None
        if not isinstance(metrics, dict):
            raise UserError(f"{metrics_path} is damaged; remove {self.folder} to run it again")
        return {
            "dataset": self.dataset_label,
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
        "--shots",
        help="training-set sizes, comma-separated: K images per class (drawn with the seed: "
        "the same images for every method and regularizer) or 'all' (default: all)",
    )
    parser.add_argument(
        "--wise-ft",
        help="comma-separated methods whose unregularized runs also get WiSE-FT rows "
        "(default: none)",
    )
    parser.add_argument("--wise-ft-alphas", help="the α grid of WiSE-FT (default: 0,0.1,...,1)")
    add_launcher_arguments(parser)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write report.md, tradeoff.png and pareto.png from the runs already "
        "finished",
    )
    parser.add_argument("--quiet", action="store_true", help="only the final summary")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def make_launcher(args: argparse.Namespace, grid: dict, out: Path) -> Launcher:
    """The launcher of ``--launcher``; SLURM settings from the grid file's ``slurm:`` mapping
    (keys as :class:`~riftune.runs.launchers.SlurmLauncher`'s fields), then the ``--slurm-*`` flags."""
    given = slurm_settings(args)
    if args.launcher == "local":
        if given or grid["slurm"]:
            flags = {key: flag for flag, key in SLURM_FLAGS.items()}
            named = ", ".join("--" + flags[k].replace("_", "-") for k in given)
            raise UserError((named or "the grid's slurm:") + " needs --launcher slurm")
        return LocalLauncher(jobs=max(args.jobs, 1))
    return slurm_launcher(dict(grid["slurm"] or {}) | given, out / "slurm")


class GridStopped(Exception):
    """A signal stopped the grid; its runs checkpointed, and the same command continues it."""

    def __init__(self, signal_name: str):
        super().__init__(
            f"grid stopped by {signal_name}; rerun the same compare command to continue"
        )


def _launch(jobs: Sequence[Job], flags: dict, launcher: Launcher, log, report_only: bool):
    """Run the unfinished ``jobs`` (nothing with ``--report-only``); GridStopped on a signal."""
    if report_only:
        return
    grid_jobs = [
        GridJob(tuple(j.command(flags[j.dataset, j.shots])), j.folder)
        for j in jobs
        if j.record() is None
    ]
    for job in grid_jobs:
        job.folder.mkdir(parents=True, exist_ok=True)
    outcome = launcher.run(grid_jobs, log)
    if outcome.stopped_by:
        raise GridStopped(outcome.stopped_by)


def run_compare(args: argparse.Namespace, passthrough: Sequence[str]) -> str:
    """Run (or continue) the grid, then write report.md, tradeoff.png and pareto.png; returns
    report.md.

    One compare at a time per grid folder (its writer lock); GridStopped when a signal stopped
    the grid's runs.
    """
    out = Path(args.out)
    plan = _plan(args, passthrough, out)  # every cell checked before the folder is created
    with run_lock(RunDir(out)):
        return _compare(args, plan, out)


def _check_flags(grid: dict, flags: dict, variants: Sequence[RegularizerVariant]) -> None:
    """Refuse a bad finetune flag of any cell before running anything."""
    parser = finetune_parser()
    for (dataset, _), cell_flags in flags.items():
        for method in grid["methods"]:
            for variant in variants:
                run_config_from_args(
                    parser.parse_args(
                        [*cell_flags, "--data", dataset, "--method", method, *variant.flags]
                    )
                )


def _plan(
    args: argparse.Namespace, passthrough: Sequence[str], out: Path
) -> tuple[dict, dict, list[RegularizerVariant], Launcher]:
    """The grid, each (dataset, size)'s finetune flags, the variants and the launcher, every
    cell's configuration checked; nothing is created."""
    grid = resolve_grid(args)
    flags = {
        (d, k): finetune_flags(grid, passthrough, d, k) for d in grid["data"] for k in grid["shots"]
    }
    variants = [parse_regularizer_entry(entry) for entry in grid["regs"]]
    _check_flags(grid, flags, variants)
    return grid, flags, variants, make_launcher(args, grid, out)


def _compare(
    args: argparse.Namespace, plan: tuple[dict, dict, list[RegularizerVariant], Launcher], out: Path
) -> str:
    grid, flags, variants, launcher = plan
    log = (
        (lambda message: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    )

    def job(cell, lam, seed) -> Job:
        dataset, shots, method, variant = cell
        folder = run_folder(out, dataset, method, variant.folder, lam, seed, shots)
        return Job(dataset, method, variant, lam, seed, folder, shots)

    cells = [
        (d, k, m, v)
        for d in grid["data"]
        for k in grid["shots"]
        for m in grid["methods"]
        for v in variants
    ]
    seeds = grid["seeds"]

    def selection_seeds(variant: RegularizerVariant) -> list[int]:
        return seeds[: variant.select_seeds or grid["select_seeds"]]

    selection = {
        cell: [
            job(cell, lam, seed)
            for lam in cell[3].lam_grid(grid["lams"])
            for seed in selection_seeds(cell[3])
        ]
        for cell in cells
    }
    _launch([j for js in selection.values() for j in js], flags, launcher, log, args.report_only)

    chosen: dict[tuple, float | None] = {}
    for cell, jobs in selection.items():
        records = [r for r in (j.record() for j in jobs) if r is not None]
        if records:
            chosen[cell] = report.select_lambda(report.aggregate_runs(records))[0]["lam"]
    final = [job(cell, lam, s) for cell, lam in chosen.items() for s in seeds]
    _launch(final, flags, launcher, log, args.report_only)
    swept = [j for js in selection.values() for j in js if j not in final]

    records = [r for r in (j.record() for j in final) if r is not None]
    records += _wise_ft_records(final, grid, seeds[0], args, log)
    sweep_records = [r for r in (j.record() for j in swept) if r is not None]
    missing = [j for j in swept + final if j.record() is None]
    if not records:
        raise UserError(f"no run of the grid finished; see the compare.log files under {out}")
    groups = report.aggregate_runs(records)
    notes = ["Command: riftune " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""]
    swept_seeds = {len(selection_seeds(v)) for v in variants if len(v.lam_grid(grid["lams"])) > 1}
    if swept_seeds - {1}:
        counts = " or ".join(map(str, sorted(swept_seeds)))
        notes.append(
            f"λ chosen on the mean validation AUC of the first {counts} seeds of "
            f"{', '.join(map(str, seeds))}; every chosen λ then ran every seed."
        )
    else:
        notes.append(
            f"λ chosen on validation AUC with seed {seeds[0]}; every chosen λ then ran seeds "
            f"{', '.join(map(str, seeds))}."
        )
    if grid["wise_ft"]:
        notes.append(
            "wise-ft (α=a): the unregularized run's backbone interpolated with the pretrained "
            f"one, θ = (1 − a)·θ₀ + a·θ, a from {grid['wise_ft_alphas']} chosen on validation "
            f"AUC with seed {seeds[0]}; test CKA, accuracy, AUC and ECE only."
        )
    if missing:
        notes.append(_missing_note(missing, out))
    text = report.compare_report_markdown(
        groups,
        lambda_key=None,
        notes=[n for n in notes if n],
        # the defaults rule compares means over seeds: only for λ swept on more than one seed
        sweep=report.aggregate_runs(sweep_records + records) if swept_seeds - {1} else None,
    )
    (out / "report.md").write_text(text)
    report.plot_tradeoff(groups, out / "tradeoff.png", lambda_key=None)
    report.plot_pareto(groups, out / "pareto.png")
    all_records = [{**r, "chosen": True} for r in records]
    all_records += [{**r, "chosen": False} for r in sweep_records]
    (out / "runs.json").write_text(json.dumps(all_records, indent=1, sort_keys=True))
    return text


def _missing_note(missing: Sequence[Job], out: Path) -> str:
    """The runs that did not finish: their folders (relative to the grid) when few, else their
    number per dataset table."""
    if len(missing) <= 10:
        folders = ", ".join(str(j.folder.relative_to(out)) for j in missing)
        return f"{len(missing)} runs did not finish: {folders}"
    counts: dict[str, int] = {}
    for job in missing:
        counts[job.dataset_label] = counts.get(job.dataset_label, 0) + 1
    tables = "; ".join(f"{table}: {n}" for table, n in counts.items())
    return f"{len(missing)} runs did not finish ({tables}); the tables show what did"


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
        (j.dataset_label, j.method): max(alphas, key=lambda r: (r["val.auc"], -r["alpha"]))["alpha"]
        for j, alphas in rows.items()
        if j.seed == first_seed
    }
    records = []
    for job, alphas in rows.items():
        alpha = chosen.get((job.dataset_label, job.method))
        if alpha is None:
            continue
        row = next(r for r in alphas if r["alpha"] == alpha)
        metrics = {k: v for k, v in row.items() if k.startswith(("val.", "test."))}
        records.append(
            {
                "dataset": job.dataset_label,
                "method": job.method,
                "reg": "wise-ft",
                "variant": f"α={alpha:g}",
                "lam": None,
                "seed": job.seed,
                **metrics,
            }
        )
    return records
