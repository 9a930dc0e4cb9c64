"""`riftune finetune` at a git revision against the working tree, whole runs interleaved.

Checks REV out into a temporary worktree and runs the same finetune command ROUNDS times with
each code, alternating (old, new, new, old, ...), so the machine's drift hits both alike. Reads
each run's metrics.json: training throughput (``train_images_per_s``), the run's wall time and
its phases (``timing``), and the process's own wall time (imports included). Prints the medians
over rounds and new/old ratios:

    python benchmarks/finetune_before_after.py REV [--rounds 3] [--out FILE] -- [finetune flags]

The finetune flags default to ``--data breastmnist`` (the default recipe); RIFTUNE_DATA and
OMP_NUM_THREADS are passed through.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(code: Path, flags: list[str], out: Path) -> dict:
    """One finetune run of the riftune in ``code``; its metrics plus ``process_seconds``."""
    env = dict(os.environ, PYTHONPATH=str(code))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "riftune", "finetune", *flags, "--out", str(out), "--overwrite",
         "--quiet"],
        check=True, env=env, cwd=code,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    return json.loads((out / "metrics.json").read_text()) | {"process_seconds": seconds}


def outside_share(metrics: dict, wall_key: str) -> float:
    """The share of a wall time spent outside the training steps."""
    wall = metrics[wall_key]
    return (wall - metrics["timing"]["train_steps"]) / wall


def summary(runs: dict[str, list[dict]]) -> str:
    rows = [
        ("training images/s", lambda m: m["train_images_per_s"]),
        ("run wall s (metrics.json)", lambda m: m["wall_seconds"]),
        ("process wall s (imports too)", lambda m: m["process_seconds"]),
        ("outside the training steps, of the run", lambda m: outside_share(m, "wall_seconds")),
        ("outside the training steps, of the process",
         lambda m: outside_share(m, "process_seconds")),
    ]  # fmt: skip
    phases = sorted({p for m in runs["old"] + runs["new"] for p in m["timing"]})
    rows += [(f"phase {p} s", lambda m, p=p: m["timing"].get(p, 0.0)) for p in phases]
    lines = [
        "| measure | old (median) | new (median) | new / old (medians) | new / old per round |",
        "|---|---:|---:|---:|---|",
    ]
    for name, value in rows:
        old = statistics.median(value(m) for m in runs["old"])
        new = statistics.median(value(m) for m in runs["new"])
        ratio = f"{new / old:.3f}" if old else "–"
        rounds = ", ".join(
            f"{value(n) / value(o):.2f}" if value(o) else "–"
            for o, n in zip(runs["old"], runs["new"], strict=True)
        )
        lines.append(f"| {name} | {old:.3f} | {new:.3f} | {ratio} | {rounds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", help="git revision to compare with, e.g. a14142e")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the table and every run's figures here")
    parser.add_argument(
        "--summarize", metavar="FILE", help="only print the table of an earlier --out FILE"
    )
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    flags = argv[cut + 1 :] or ["--data", "breastmnist"]
    if args.summarize:
        text = Path(args.summarize).read_text()
        print(summary(json.loads(text[text.index("{") :])))
        return
    work = Path(tempfile.mkdtemp(prefix="before_after_"))
    old_code = work / "old"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(old_code), args.rev],
        check=True, cwd=REPO, capture_output=True,
    )  # fmt: skip
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    try:
        for round_ in range(args.rounds):
            order = ["old", "new"] if round_ % 2 == 0 else ["new", "old"]
            for which in order:
                code = old_code if which == "old" else REPO
                runs[which].append(run(code, flags, work / f"{which}{round_}"))
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(old_code)], cwd=REPO, check=False
        )
    text = (
        f"# python benchmarks/finetune_before_after.py {args.rev} --rounds {args.rounds} -- "
        f"{' '.join(flags)}\n# OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n{summary(runs)}\n"
    )
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n" + json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
