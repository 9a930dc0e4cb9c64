"""``riftune export``: a finished run's best model as a plain timm state dict (safetensors).

The backbone's weights come from the finetuning method's ``merged_backbone_state`` (LoRA and
other peft adapters merged into the base weights), the run's head becomes the timm model's own
classifier, and a JSON file beside the weights says how to rebuild and feed the model::

    import json, timm, safetensors.torch
    info = json.load(open("model.json"))
    model = timm.create_model(info["architecture"], num_classes=info["num_classes"],
                              pretrained=False, **info["timm_kwargs"])
    model.load_state_dict(safetensors.torch.load_file("model.safetensors"))
    model.eval()  # logits equal to the run's model on images preprocessed as info describes

``timm_kwargs`` is empty for CNNs; ViTs get the ``img_size`` the run used. Runs whose method
adds parameters the timm architecture lacks (VPT prompts, AdaptFormer adapters) are refused.
"""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import timm
import torch
from torch import nn

from riftune.commands.evaluate import FinishedRun, load_finished_run
from riftune.errors import UserError
from riftune.runs.folder import write_json_atomic

FORMAT = "riftune-export/1"
SUFFIX = ".safetensors"
PREPROCESSING = (
    "decode as 8-bit, resize the whole image (no crop) to image_size x image_size with "
    "antialiased bilinear interpolation, grayscale repeated to RGB, scale to 0..1, then "
    "(x - mean) / std per channel"
)


def info_path(out_file: str | Path) -> Path:
    """Where :func:`export_run` puts the JSON of ``out_file``: ``model.safetensors`` ->
    ``model.json``."""
    return Path(out_file).with_suffix(".json")


def export_run(run_dir: str | Path, out_file: str | Path, device: str = "cpu") -> tuple[Path, Path]:
    """Write the run's best checkpoint as a plain timm model and its description.

    Args:
        run_dir: a finished run folder (``--out`` of ``riftune finetune``).
        out_file: the weights file to write, ending in ``.safetensors``; the JSON goes to
            :func:`info_path` (``architecture``, ``timm_kwargs``, ``num_classes``,
            ``class_names``, ``image_size``, ``mean``, ``std``, ``preprocessing``, and where
            the model came from).
        device: where the run is rebuilt (``cpu``, ``cuda`` or ``auto``).

    Returns:
        The weights file and the JSON file written.

    Raises:
        UserError: not a finished run, a bad ``out_file``, or a method (``vpt``,
            ``adaptformer``) whose added parameters a plain timm model cannot hold.
    """
    out_file = Path(out_file)
    if out_file.suffix != SUFFIX:
        raise UserError(f"--out {out_file} must end in {SUFFIX} (the weights are safetensors)")
    if out_file.is_dir():
        raise UserError(f"--out {out_file} is a folder; give a file name such as model{SUFFIX}")
    if not out_file.parent.is_dir():
        raise UserError(f"--out {out_file}: the folder {out_file.parent} does not exist")
    return export_loaded(load_finished_run(run_dir, device), out_file)


def export_loaded(run: FinishedRun, out_file: Path) -> tuple[Path, Path]:
    """:func:`export_run` with the run already rebuilt (:func:`load_finished_run`)."""
    info = export_info(run)
    model = _create(info)
    state = timm_state_dict(run, classifier=_classifier_name(model))
    model.load_state_dict(state, strict=True)
    _check_same_logits(run, model.eval())
    safetensors.torch.save_file(state, str(out_file), metadata={"format": "pt"})
    write_json_atomic(info, info_path(out_file))
    return out_file, info_path(out_file)


def timm_state_dict(run: FinishedRun, classifier: str) -> dict[str, torch.Tensor]:
    """The run's model under the keys of ``timm.create_model(arch, num_classes=k)``: the merged
    backbone, and the head as the timm classifier module named ``classifier`` (``classifier``
    for EfficientNet, ``head`` for ViTs, ``fc`` for ResNets); contiguous CPU copies."""
    try:
        backbone = run.method.merged_backbone_state(run.model)
    except UserError:
        raise UserError(
            f"cannot export a --method {run.config.method.name} run as a plain timm model: the "
            "parameters it adds have no place in the timm architecture; export runs of full, "
            "linear, bitfit, lora or lp-ft"
        ) from None
    head = {f"{classifier}.{k}": v for k, v in run.model.head.state_dict().items()}
    return {k: v.detach().cpu().contiguous().clone() for k, v in {**backbone, **head}.items()}


def export_info(run: FinishedRun) -> dict:
    """The JSON that says how to rebuild and feed the exported model."""
    cfg = run.model.pretrained_cfg
    architecture = str(cfg["architecture"])
    return {
        "format": FORMAT,
        "architecture": architecture,
        "timm_kwargs": _size_kwargs(architecture, run.config.data.img_size),
        "num_classes": run.data.num_classes,
        "class_names": run.data.class_names or [str(i) for i in range(run.data.num_classes)],
        "image_size": run.config.data.img_size,
        "mean": [float(v) for v in cfg["mean"]],
        "std": [float(v) for v in cfg["std"]],
        "preprocessing": PREPROCESSING,
        "source": {
            "run": str(run.run_dir.root.resolve()),
            "backbone": run.config.model.backbone,
            "method": run.config.method.name,
            "data": run.data.name,
            "weights": cfg.get("weights"),
        },
    }


def _create(info: dict) -> nn.Module:
    return timm.create_model(
        info["architecture"],
        pretrained=False,
        num_classes=info["num_classes"],
        **info["timm_kwargs"],
    )


def _size_kwargs(architecture: str, img_size: int) -> dict:
    """``{"img_size": S}`` for architectures built for an input size (ViTs), else ``{}``."""
    try:
        timm.create_model(architecture, pretrained=False, num_classes=0, img_size=img_size)
    except TypeError:
        return {}
    return {"img_size": img_size}


def _classifier_name(model: nn.Module) -> str:
    classifier = model.get_classifier()
    return next(name for name, module in model.named_modules() if module is classifier)


def _check_same_logits(run: FinishedRun, model: nn.Module) -> None:
    """Refuse to write an export whose logits differ from the run's on a few validation images
    (every run has them; a ``--cv-folds`` run has no test split)."""
    images, _, _ = run.data.val.batch(list(range(min(4, len(run.data.val)))))
    images = images.to(run.ctx.device)
    model.to(run.ctx.device)
    with torch.no_grad():
        run.model.eval()
        expected = run.model(images).logits
        got = model(images)
    if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4):
        error = float((got - expected).abs().max())
        raise RuntimeError(
            f"exported model's logits differ from the run's by {error:.3g}; please report this"
        )
    model.cpu()


def export_command(run: str, out: str, device: str = "cpu") -> int:
    """``riftune export --run DIR --out FILE [--device D]``: export and say what was written."""
    weights, info = export_run(run, out, device)
    print(f"wrote {weights} and {info}")
    return 0
