"""``riftune evaluate --run DIR``: rebuild a finished run and re-evaluate its best checkpoint."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from riftune import distributed
from riftune.config import RunConfig, read_config
from riftune.data import DatasetSplits
from riftune.engine import autocast_dtype, build_model_and_data
from riftune.engine.build import build_pretrained_classifier
from riftune.engine.evaluation import PretrainedEmbeddings, final_metrics
from riftune.engine.outputs import write_evaluation_outputs
from riftune.errors import UserError
from riftune.models.classifier import Classifier
from riftune.runs import checkpoint_file as ckpt
from riftune.runs.folder import RunDir, write_json_atomic
from riftune.tuning import FinetuningMethod


@dataclass
class FinishedRun:
    """A finished run rebuilt from its config.yaml, with its best checkpoint loaded."""

    run_dir: RunDir
    config: RunConfig
    ctx: distributed.DistributedContext
    amp_dtype: torch.dtype | None
    model: Classifier
    data: DatasetSplits
    pretrained: PretrainedEmbeddings
    method: FinetuningMethod


def load_finished_run(run: str | Path, device: str = "auto") -> FinishedRun:
    """Rebuild ``run`` (same seed, data, backbone and method) and load its best checkpoint."""
    run_dir = RunDir(Path(run))
    best = ckpt.checkpoint_path(run_dir.checkpoints, ckpt.BEST)
    if not best.is_file():
        raise UserError(f"{best} not found; is {run_dir.root} a finished riftune run?")
    config = read_config(run_dir.config)
    ctx = distributed.setup(device)
    amp_dtype = autocast_dtype(config.training.amp, ctx.device)
    model, data, pretrained, method = build_model_and_data(config, ctx, amp_dtype)
    tensors, meta = ckpt.load_checkpoint(best)
    try:
        model.load_state_dict(ckpt.unflatten_state(tensors, meta)["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # another run's, or edited
        raise UserError(
            f"{best} does not hold the model {run_dir.config} describes "
            f"({type(error).__name__}); was config.yaml edited or the checkpoint copied?"
        ) from None
    return FinishedRun(run_dir, config, ctx, amp_dtype, model, data, pretrained, method)


def evaluate_run(run: str | Path, device: str = "auto") -> dict:
    """Test and validation metrics of ``run``'s best checkpoint; also written to evaluation.json.

    The result reproduces the ``test`` and ``val`` entries of the run's metrics.json.
    """
    r = load_finished_run(run, device)
    reference = functools.partial(build_pretrained_classifier, r.config)
    final = final_metrics(r.model, r.data, r.pretrained, reference, r.config, r.ctx, r.amp_dtype)
    if r.ctx.is_main:
        write_json_atomic(final.metrics, r.run_dir.root / "evaluation.json")
        write_evaluation_outputs(r.run_dir, final, r.data)
    return final.metrics
