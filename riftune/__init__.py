"""riftune: finetune pretrained vision models while keeping their pretrained representations.

``riftune.RIFT`` is the regularizer (a drop-in loss for your own training loop);
``riftune.metrics`` has CKA and the evaluation metrics; ``riftune.finetune(config)`` runs what
``riftune finetune`` (the CLI) runs, ``riftune.tune(settings)`` what ``riftune tune`` runs.
"""

import importlib.metadata

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


def tune(settings) -> str:
    """Run or continue a ``riftune tune`` study from a mapping of its settings (the CLI's
    flags: ``out``, ``methods``, ``regularizers``, ``ladder``, ``budgets``, ``lams``,
    ``folds``, ``tolerance``, ... and ``finetune``, a mapping of the shared finetune flags),
    a YAML file of it or a :class:`riftune.strength.config.TuneConfig`; returns report.md's
    text (see :mod:`riftune.strength`)."""
    from riftune.commands.tune import run_tune
    from riftune.strength.config import TuneConfig

    if not isinstance(settings, TuneConfig):
        settings = TuneConfig.from_mapping(settings)
    return run_tune(settings)


__all__ = ["RIFT", "finetune", "tune"]
