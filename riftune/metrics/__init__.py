"""Metrics: representation similarity, classification, calibration, sharpness, transfer,
robustness to corrupted images.

Every metric is a plain function of tensors (or of a model and batches); :class:`StreamingCKA`
also accumulates over batches. Whole-split metrics expect the whole split, which
:func:`collect` gathers across ranks under ``torch.distributed``; the streaming and
model-based ones (StreamingCKA, sharpness, hessian_top_eigenvalue) reduce across ranks
themselves.

Metrics import only :mod:`riftune.data`, :mod:`riftune.models` and
:mod:`riftune.distributed`; they know nothing of runs, configurations or regularizers.
"""

from riftune.metrics.bootstrap import bootstrap_ci
from riftune.metrics.calibration import expected_calibration_error
from riftune.metrics.classification import (
    accuracy,
    auc,
    multilabel_accuracy,
    multilabel_auc,
    task_metrics,
)
from riftune.metrics.embeddings import Collected, collect, collect_embeddings
from riftune.metrics.hessian import hessian_top_eigenvalue
from riftune.metrics.robustness import corrupt, robustness_metrics
from riftune.metrics.sharpness import sharpness
from riftune.metrics.similarity import StreamingCKA, linear_cka
from riftune.metrics.transfer import knn_accuracy, linear_probe_accuracy

__all__ = [
    "Collected",
    "StreamingCKA",
    "accuracy",
    "auc",
    "bootstrap_ci",
    "collect",
    "collect_embeddings",
    "corrupt",
    "expected_calibration_error",
    "hessian_top_eigenvalue",
    "knn_accuracy",
    "linear_cka",
    "linear_probe_accuracy",
    "multilabel_accuracy",
    "multilabel_auc",
    "robustness_metrics",
    "sharpness",
    "task_metrics",
]
