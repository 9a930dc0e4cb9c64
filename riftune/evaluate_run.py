"""``riftune evaluate --run DIR``: rebuild a finished run and re-evaluate its best checkpoint."""

from __future__ import annotations

from pathlib import Path

from riftune import checkpoint as ckpt
from riftune import config as config_module
from riftune import distributed
from riftune.engine import autocast_dtype, build_model_and_data
from riftune.errors import UserError
from riftune.evaluation import final_metrics
from riftune.run_dir import RunDir, write_json_atomic


def evaluate_run(run: str | Path, device: str = "auto", quiet: bool = False) -> dict:
    """Test and validation metrics of ``run``'s best checkpoint; also written to evaluation.json.

    The run is rebuilt from its config.yaml (same seed, data, backbone and method), so the
    result reproduces the ``test`` and ``val`` entries of its metrics.json.
    """
    run_dir = RunDir(Path(run))
    best = ckpt.checkpoint_path(run_dir.checkpoints, ckpt.BEST)
    if not best.is_file():
        raise UserError(f"{best} not found; is {run_dir.root} a finished riftune run?")
    stored = config_module.read_config(run_dir.config)
    args = config_module.namespace_from_config(stored, config_module.finetune_parser())
    args.device = device
    ctx = distributed.setup(device)
    amp_dtype = autocast_dtype(args.amp, ctx.device)
    model, data, pretrained, _ = build_model_and_data(args, ctx, amp_dtype)
    tensors, meta = ckpt.load_checkpoint(best)
    model.load_state_dict(ckpt.unflatten_state(tensors, meta)["model"])
    results, _ = final_metrics(model, data, pretrained, args, ctx, amp_dtype)
    if ctx.is_main:
        write_json_atomic(results, run_dir.root / "evaluation.json")
    return results
