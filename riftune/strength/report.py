"""The report of a ``riftune tune`` study: ``report.md`` (every candidate's estimates, the
choice and why, the setup and cost) and ``tune.png`` (AUC against drift with error bars)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from matplotlib.figure import Figure

from riftune.report.markdown import MISSING, markdown_table
from riftune.strength.rule import Choice, Estimate

FIGURE = "tune.png"
REPORT = "report.md"
_DPI = 150


def write_report(out: Path, choice: Choice, context: Mapping[str, object]) -> list[Path]:
    """Write ``out/report.md`` and ``out/tune.png`` for ``choice``.

    Args:
        out: the study folder (created if missing).
        choice: the rule's result (:func:`riftune.strength.rule.choose`), plain's estimate first.
        context: what the study ran, shown as a list in insertion order: e.g. ``data``,
            ``method``, ``folds``, ``tolerance``, and ``cost`` (wall time, trials run and
            pruned, single-run equivalents). A nested mapping is shown as ``key value``
            pairs on one line; floats with 4 significant digits.

    Returns:
        The two files written.
    """
    out.mkdir(parents=True, exist_ok=True)
    figure = out / FIGURE
    plot_choice(choice, figure)
    report = out / REPORT
    report.write_text(report_markdown(choice, context))
    return [report, figure]


def report_markdown(choice: Choice, context: Mapping[str, object]) -> str:
    """The text of ``report.md``: the choice, the rule, the table, the setup, the figure."""
    folds = choice.estimates[0].n
    rows = [_row(e, folds, e.name == choice.chosen) for e in choice.estimates]
    table = markdown_table(
        ["candidate", "folds", "mean AUC ± se", "drift ± se", "AUC − plain ± se",
         "lower bound", "qualifies", "why"],
        rows,
        [False, True, True, True, True, True, False, False],
    )  # fmt: skip
    setup = "\n".join(f"- {key}: {_show(value)}" for key, value in context.items())
    return (
        "\n\n".join(
            [
                f"# riftune tune: {choice.chosen}",
                f"**Chosen: {choice.chosen}.** {choice.explanation}",
                "## The rule\n\n" + rule_sentences(choice.tolerance, choice.z),
                "## Candidates\n\nValidation estimates over the folds each candidate ran "
                "(paired with plain finetuning's on the same folds); drift = 1 − CKA to the "
                "pretrained model.\n\n" + table,
                "## Setup and cost\n\n" + (setup or MISSING),
                f"![validation AUC against drift]({FIGURE})",
            ]
        )
        + "\n"
    )


def rule_sentences(tolerance: float, z: float) -> str:
    """The rule in two sentences, with its tolerance (AUC units) and z."""
    return (
        f"A candidate qualifies when it ran on all of plain finetuning's folds and its paired "
        f"AUC difference to plain finetuning, mean − {z:g} × standard error, is at least "
        f"−{100 * tolerance:g} AUC points. Among the qualifying candidates and plain "
        "finetuning itself, the one with the lowest drift (1 − CKA to the pretrained model) "
        "is chosen, so plain finetuning is the answer when nothing qualifies."
    )


def plot_choice(choice: Choice, path: Path) -> None:
    """Write the figure: mean validation AUC against drift, ± one standard error each way.

    Plain finetuning is a black square, qualifying candidates filled circles, the others
    hollow (pruned ones grey), and the chosen one ringed.
    """
    fig = Figure(figsize=(6.4, 4.8), layout="constrained")
    ax = fig.subplots()
    folds = choice.estimates[0].n
    for index, est in enumerate(choice.estimates):
        if math.isnan(est.mean_auc):
            continue
        is_plain, pruned = index == 0, est.n < folds
        colour = "black" if is_plain else "0.6" if pruned else f"C{index % 10}"
        ax.errorbar(
            est.drift,
            est.mean_auc,
            xerr=_finite(est.drift_se),
            yerr=_finite(est.auc_se),
            marker="s" if is_plain else "o",
            markersize=7,
            color=colour,
            markerfacecolor=colour if est.qualifies else "white",
            capsize=3,
            linestyle="none",
            label=est.name + (f" (pruned, {est.n}/{folds} folds)" if pruned else ""),
        )
        if est.name == choice.chosen:
            ax.plot(est.drift, est.mean_auc, marker="o", markersize=17, color=colour,
                    markerfacecolor="none", linestyle="none", label=f"chosen: {est.name}")  # fmt: skip
    ax.set(
        xlabel="drift (1 − validation CKA to the pretrained model)",
        ylabel="mean validation AUC",
        title=f"riftune tune: {choice.chosen} (hollow: did not qualify)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=_DPI)


def _row(est: Estimate, folds: int, chosen: bool) -> list[str]:
    pruned = est.n < folds
    return [
        f"**{est.name}** (chosen)" if chosen else est.name,
        f"{est.n}/{folds}" + (" pruned" if pruned else ""),
        _pm(est.mean_auc, est.auc_se),
        _pm(est.drift, est.drift_se),
        _pm(est.diff_mean, est.diff_se, signed=True),
        MISSING if math.isnan(est.lower_bound) else f"{est.lower_bound:+.4f}",
        "yes" if est.qualifies else "no",
        est.reason,
    ]


def _pm(value: float, se: float, signed: bool = False) -> str:
    if math.isnan(value):
        return MISSING
    shown = f"{value:+.4f}" if signed else f"{value:.4f}"
    return shown if math.isnan(se) else f"{shown} ± {se:.4f}"


def _finite(se: float) -> float:
    return 0.0 if math.isnan(se) else se


def _show(value: object) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_show(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
