"""Reports of runs and comparisons: history CSV, Markdown tables and matplotlib figures.

Reports import only :mod:`riftune.metrics`; they read records, not runs.
"""

from riftune.report.aggregate import (
    GROUP_KEYS,
    aggregate_runs,
    flatten_metrics,
    metric_mean,
    regularizer_label,
    select_lambda,
)
from riftune.report.figures import (
    pareto_front,
    pca_2d,
    plot_embeddings,
    plot_pareto,
    plot_tradeoff,
    plot_training,
)
from riftune.report.history import AppendingCSV, read_history_csv, write_history_csv
from riftune.report.tables import (
    COMPARE_COLUMNS,
    MetricColumn,
    compare_report_markdown,
    format_stat,
    relative_to_plain_table,
    summary_table,
)

__all__ = [
    "COMPARE_COLUMNS",
    "GROUP_KEYS",
    "AppendingCSV",
    "MetricColumn",
    "aggregate_runs",
    "compare_report_markdown",
    "flatten_metrics",
    "format_stat",
    "metric_mean",
    "pareto_front",
    "pca_2d",
    "plot_embeddings",
    "plot_pareto",
    "plot_tradeoff",
    "plot_training",
    "read_history_csv",
    "regularizer_label",
    "relative_to_plain_table",
    "select_lambda",
    "summary_table",
    "write_history_csv",
]
