"""``riftune wise-ft``: weight-space ensembles of the pretrained and the finetuned backbone.

WiSE-FT (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models",
https://arxiv.org/abs/2109.01903): for α ∈ [0, 1] the backbone weights are

    θ_α = (1 − α)·θ_pretrained + α·θ_finetuned

(every floating-point tensor of the backbone, BatchNorm running statistics included); the
finetuned head is kept. α = 0 is the pretrained backbone, α = 1 the finetuned one. Methods that
add parameters the pretrained backbone lacks (VPT prompts, AdaptFormer adapters) cannot be
interpolated this way; LoRA is merged into the base weights first.
"""

from __future__ import annotations

from pathlib import Path

import torch

from riftune import checkpoint as ckpt
from riftune import config as config_module
from riftune import distributed
from riftune.engine import autocast_dtype, build_model_and_data
from riftune.errors import UserError
from riftune.evaluation import eval_loader, evaluate_split
from riftune.models import build_classifier
from riftune.run_dir import RunDir, write_json_atomic


def interpolate(
    pretrained: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """(1 − α)·pretrained + α·finetuned for floating tensors; others (counters) from finetuned."""
    if pretrained.keys() != finetuned.keys():
        missing = sorted(pretrained.keys() ^ finetuned.keys())[:3]
        raise ValueError(f"backbones differ in their tensors (e.g. {missing}); cannot interpolate")
    return {
        key: torch.lerp(pretrained[key].to(value.dtype), value, alpha)
        if value.is_floating_point()
        else value.clone()
        for key, value in finetuned.items()
    }


def parse_alphas(text: str) -> list[float]:
    """``"0,0.1,...,1"`` with an optional ``...`` that continues the step: [0, 0.1, ..., 1]."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    values: list[float] = []
    for index, part in enumerate(parts):
        if part == "...":
            if len(values) < 2 or index + 1 >= len(parts):
                raise UserError("--alphas: '...' needs two values before it and one after")
            step, end = values[-1] - values[-2], float(parts[index + 1])
            count = round((end - values[-1]) / step)
            values += [round(values[-1] + step * (i + 1), 10) for i in range(count - 1)]
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise UserError(f"--alphas: {part!r} is not a number") from None
    if not values or any(not 0.0 <= a <= 1.0 for a in values):
        raise UserError("--alphas takes numbers between 0 and 1, e.g. 0,0.25,0.5,0.75,1")
    return sorted(set(values))


def wise_ft(run: str | Path, alphas: list[float], device: str = "auto") -> list[dict]:
    """Evaluate θ_α for each α on the run's validation and test splits; writes wise_ft.json."""
    run_dir = RunDir(Path(run))
    best = ckpt.checkpoint_path(run_dir.checkpoints, ckpt.BEST)
    if not best.is_file():
        raise UserError(f"{best} not found; is {run_dir.root} a finished riftune run?")
    args = config_module.namespace_from_config(
        config_module.read_config(run_dir.config), config_module.finetune_parser()
    )
    ctx = distributed.setup(device)
    amp_dtype = autocast_dtype(args.amp, ctx.device)
    model, data, pretrained, method = build_model_and_data(args, ctx, amp_dtype)
    tensors, meta = ckpt.load_checkpoint(best)
    model.load_state_dict(ckpt.unflatten_state(tensors, meta)["model"])
    finetuned_state = method.merged_backbone_state(model)

    plain = build_classifier(
        args.backbone, num_classes=1, pretrained=not args.no_pretrained, img_size=args.img_size
    )
    pretrained_state = plain.backbone.state_dict()
    plain.head = model.head
    plain.to(ctx.device)

    rows = []
    for alpha in alphas:
        plain.backbone.load_state_dict(interpolate(pretrained_state, finetuned_state, alpha))
        row: dict = {"alpha": alpha}
        for name, split, reference in (
            ("val", data.val, pretrained.val),
            ("test", data.test, pretrained.test),
        ):
            loader = eval_loader(split, args.eval_batch_size, ctx)
            result = evaluate_split(plain, loader, reference, ctx, amp_dtype)
            row.update(result.prefixed(f"{name}."))
        rows.append(row)
    if ctx.is_main:
        write_json_atomic({"alphas": rows}, run_dir.root / "wise_ft.json")
    return rows
