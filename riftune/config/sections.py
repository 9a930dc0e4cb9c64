"""The sections of a run's configuration that belong to no registered component.

Data, backbone, training, evaluation and output each have one dataclass here; the finetuning
method's and the regularizer's own options are declared next to their code (``Options`` of each
registered class) and composed in :mod:`riftune.config.run`. Every default lives here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from riftune.errors import UserError
from riftune.models import DEFAULT_BACKBONE
from riftune.options import Section, non_negative, option, positive

DEFAULT_DATA = "breastmnist"


@dataclass
class DataConfig(Section):
    """Which images, at what size, and how many."""

    data: str = option(
        DEFAULT_DATA,
        "a MedMNIST 2D flag with optional size (breastmnist, breastmnist_64, pneumoniamnist, "
        "retinamnist_128, ...), a MedMNIST-format .npz path, imagefolder:PATH or csv:FILE",
    )
    data_root: str | None = option(
        None, "folder searched first for MedMNIST files (then $RIFTUNE_DATA, then ~/.medmnist)"
    )
    shots: int | None = option(
        None,
        "use K training images per class, drawn with --seed (low-resource runs)",
        check=positive,
        metavar="K",
    )
    img_size: int = option(128, "square image side", check=positive)


@dataclass
class ModelConfig(Section):
    """The pretrained backbone."""

    backbone: str = option(
        DEFAULT_BACKBONE,
        "efficientnet_lite0|1|2 (shipped ImageNet weights) or timm:NAME for any timm model",
    )
    pretrained: bool = option(
        True,
        "start from the pretrained weights; --no-pretrained starts from random weights "
        "(timm:NAME offline, or tests), and CKA is then to the random initialization",
    )


@dataclass
class TrainingConfig(Section):
    """The optimization: schedule, batch, precision, device, checkpoints."""

    seed: int = option(0, "seed for weights, data order, shots")
    epochs: int = option(10, "epochs", check=positive)
    batch_size: int = option(
        32, "global batch size, split evenly over torchrun processes", check=positive
    )
    lr: float = option(1e-4, "backbone learning rate", check=non_negative)
    head_lr: float = option(1e-3, "head learning rate", check=non_negative)
    weight_decay: float = option(0.01, "AdamW weight decay", check=non_negative)
    warmup_epochs: float = option(
        1.0, "linear warmup length before cosine decay, in epochs", check=non_negative
    )
    grad_clip: float = option(
        1.0, "clip the global gradient norm to this (0 disables)", check=non_negative
    )
    augment: bool = option(False, "random flips and crops of training images")
    freeze_bn: bool = option(
        False,
        "keep every BatchNorm layer in eval mode (pretrained running statistics) during "
        "training; its affine weights still learn if the method trains them",
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = option(
        "auto", "mixed precision: auto = bf16 on CUDA, off on the CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to train")
    checkpoint_every: int = option(
        0,
        "also checkpoint every N optimizer steps (0: at epoch ends only)",
        check=non_negative,
        metavar="N",
    )


@dataclass
class EvaluationConfig(Section):
    """What is measured after training (may change on --resume: it does not change training)."""

    eval_batch_size: int = option(128, "batch size for evaluation", check=positive)
    landscape_images: int = option(
        128,
        "training images (fixed by --seed, no augmentation) on which sharpness and the Hessian "
        "eigenvalue of the task loss are measured (0 skips both)",
        check=non_negative,
    )
    sharpness_rho: float = option(
        0.05, "radius of adaptive (ASAM) sharpness, relative to each weight (0 skips)",
        check=non_negative,
    )  # fmt: skip
    sharpness_steps: int = option(3, "ascent steps", check=positive)
    hessian_iters: int = option(
        10, "power iterations for the top Hessian eigenvalue (0 skips)", check=non_negative
    )
    transfer_data: str | None = option(
        None,
        "another dataset (same forms as --data): report k-NN and linear-probe accuracy of the "
        "finetuned vs the pretrained embeddings on it (retained generalizability)",
    )
    transfer_shots: int | None = option(
        None,
        "use K training images per class of --transfer-data (drawn with --seed) as the k-NN "
        "memory and the probe's training set; its test split is always used whole (default: all)",
        check=positive,
        metavar="K",
    )


@dataclass
class OutputConfig(Section):
    """Where the run goes and how it talks; never part of config.yaml."""

    out: str = option("runs/latest", "run folder")
    resume: bool = option(False, "continue the run in --out", negatable=False)
    overwrite: bool = option(
        False, "replace a finished or unfinished run in --out", negatable=False
    )
    quiet: bool = option(False, "no progress output", negatable=False)
    debug: bool = option(False, "show tracebacks", negatable=False)

    def check(self) -> None:
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other; pass only one")
