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

from riftune.commands.evaluate import load_finished_run
from riftune.data import eval_loader
from riftune.engine.build import build_pretrained_classifier, run_channels_last, to_device
from riftune.engine.evaluation import evaluate_split
from riftune.errors import UserError
from riftune.runs.folder import run_lock, write_json_atomic


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
    """Evaluate θ_α for each α on the run's validation and test splits (validation only for a
    ``--cv-folds`` run); writes wise_ft.json."""
    r = load_finished_run(run, device)
    ctx, amp_dtype, model = r.ctx, r.amp_dtype, r.model
    finetuned_state = r.method.merged_backbone_state(model)

    plain = build_pretrained_classifier(r.config)
    pretrained_state = plain.backbone.state_dict()
    plain.head = model.head
    to_device(plain, ctx.device, run_channels_last(r.config.training, plain))

    rows = []
    for alpha in alphas:
        plain.backbone.load_state_dict(interpolate(pretrained_state, finetuned_state, alpha))
        row: dict = {"alpha": alpha}
        for name, split, reference in (
            ("val", r.data.val, r.pretrained.val),
            ("test", r.data.test, r.pretrained.test),
        ):
            if split is None:  # a cross-validation fold run has no test split
                continue
            loader = eval_loader(split, r.config.evaluation.eval_batch_size, ctx)
            result = evaluate_split(plain, loader, reference, ctx, amp_dtype, r.data.multilabel)
            row.update(result.prefixed(f"{name}."))
        rows.append(row)
    if ctx.is_main:
        with run_lock(r.run_dir):  # one writer per run folder
            write_json_atomic({"alphas": rows}, r.run_dir.root / "wise_ft.json")
    return rows
