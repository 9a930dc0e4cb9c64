"""riftune: finetune pretrained vision models while keeping their pretrained representations.

``riftune.RIFT`` is the regularizer (a drop-in loss for your own training loop);
``riftune.metrics`` has CKA and the evaluation metrics; ``riftune.finetune(config)`` runs what
``riftune finetune`` (the CLI) runs, ``riftune.tune(settings)`` what ``riftune tune`` runs.
"""

import importlib.metadata

from riftune import tune  # the package, callable: riftune.tune(settings)
from riftune.regularizers.rift import RIFT

try:
    __version__ = importlib.metadata.version("riftune")  # the installed one's (pyproject.toml)
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def finetune(config) -> dict:
    """Run one finetuning from a :class:`riftune.config.RunConfig`, its dict form or a YAML
    path; returns the metrics (see :func:`riftune.engine.finetune`)."""
    from riftune.engine import finetune as run

    return run(config)


__all__ = ["RIFT", "finetune", "tune"]
