"""riftune: finetune pretrained vision models while keeping their pretrained representations.

``riftune.RIFT`` is the regularizer (a drop-in loss for your own training loop);
``riftune.metrics`` has CKA and the evaluation metrics; ``riftune.finetune(config)`` runs what
``riftune finetune`` (the CLI) runs.
"""

from riftune.regularizers.rift import RIFT


def finetune(config) -> dict:
    """Run one finetuning from a :class:`riftune.config.RunConfig`, its dict form or a YAML
    path; returns the metrics (see :func:`riftune.engine.finetune`)."""
    from riftune.engine import finetune as run

    return run(config)


__all__ = ["RIFT", "finetune"]
__version__ = "0.1.0"
