"""Running a finetuning: :mod:`~riftune.engine.build` assembles it from a
:class:`~riftune.config.RunConfig`, :mod:`~riftune.engine.run_claim` takes the run folder,
:mod:`~riftune.engine.loop` trains and evaluates (each :mod:`~riftune.engine.step` weighing
the penalty by its :mod:`~riftune.engine.weight` schedule, the one owner of λ, and
:mod:`~riftune.engine.step_log` reading the steps' losses back in chunks;
:mod:`~riftune.engine.ddp` under torchrun), and :mod:`~riftune.engine.checkpointer` saves and
restores its progress.

It may import everything below it (config, regularizers, optim, report, metrics, tuning,
data, models, runs); never :mod:`riftune.strength`, the commands or the CLI.
"""

from __future__ import annotations

from pathlib import Path

from riftune import distributed
from riftune.config import RunConfig, load_run_config
from riftune.engine.build import autocast_dtype, build_model_and_data, build_training
from riftune.engine.loop import Finetuner
from riftune.engine.step import NonFiniteLossError
from riftune.runs.signals import GracefulStop


def finetune(config: RunConfig | dict | str | Path) -> dict:
    """Run one finetuning and return its metrics (metrics.json's content, on every rank).

    Args:
        config: a :class:`~riftune.config.RunConfig`, its dict form (nested by section, as in
            config.yaml; missing keys take their defaults) or the path of a YAML file.

    Example::

        import riftune
        metrics = riftune.finetune({
            "data": {"data": "breastmnist", "img_size": 64},
            "regularizer": {"name": "rift", "lam": 1.0},
            "training": {"epochs": 2},
            "output": {"out": "runs/api", "overwrite": True},
        })
        print(metrics["test"]["auc"])
    """
    config = load_run_config(config)
    ctx = distributed.setup(config.training.device)
    try:
        with GracefulStop() as stop:  # SIGTERM/SIGINT: checkpoint at the next step, then stop
            return Finetuner(config, ctx, stop).run()
    finally:
        distributed.teardown()


__all__ = [
    "Finetuner",
    "NonFiniteLossError",
    "autocast_dtype",
    "build_model_and_data",
    "build_training",
    "finetune",
]
