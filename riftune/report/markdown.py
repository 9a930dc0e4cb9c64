"""GitHub Markdown tables."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

MISSING = "–"


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool]
) -> str:
    """A GitHub Markdown table; ``|`` inside cells is escaped.

    Args:
        headers: the column titles.
        rows: the cells, already formatted, one sequence per row.
        right: per column, whether it is right-aligned.

    Returns:
        The table, lines joined by newlines, no trailing newline.
    """

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", r"\|") for c in cells) + " |"

    rule = ["---:" if r else "---" for r in right]
    return "\n".join([line(headers), "|" + "|".join(rule) + "|", *(line(r) for r in rows)])
