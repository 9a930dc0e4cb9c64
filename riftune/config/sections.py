"""The sections of a run's configuration that belong to no registered component.

Data, backbone, training, evaluation and output each have one dataclass here; the finetuning
method's and the regularizer's own options are declared next to their code (``Options`` of each
registered class) and composed in :mod:`riftune.config.run`. Every default lives here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from riftune.data.folds import CrossValidation
from riftune.data.formats import forms_help, resolve
from riftune.errors import UserError
from riftune.models import DEFAULT_BACKBONE
from riftune.options import (
    Section,
    non_negative,
    option,
    positive,
    positive_finite,
    unit_interval,
)

DEFAULT_DATA = "breastmnist"


@dataclass
class DataConfig(Section):
    """Which images, at what size, and how many."""

    data: str = option(DEFAULT_DATA, forms_help())
    data_root: str | None = option(
        None, "folder searched first for MedMNIST files (then $RIFTUNE_DATA, then ~/.medmnist)"
    )
    shots: int | None = option(
        None,
        "use K training images per class, drawn with --seed (low-resource runs)",
        check=positive,
        metavar="K",
    )
    img_size: int = option(
        28,
        "square image side (28: chosen on BreastMNIST validation AUC, benchmarks/results/recipe; "
        "128 before 2026-12)",
        check=positive,
    )
    group_column: str | None = option(
        None,
        "csv: rows with the same value in this column (a patient, a lesion) stay in one split "
        "when the CSV has no split column",
        metavar="COL",
    )
    label_columns: str | None = option(
        None,
        "csv: comma-separated 0/1 columns of a multi-label table (one binary task each)",
        metavar="A,B,C",
    )
    cv_folds: int | None = option(
        None,
        "cross-validation (the trials of riftune tune): pool train (after --shots) and val, cut "
        "the pool into K folds stratified by class (whole groups with --group-column), "
        "validate on fold --cv-fold and train on the rest. The test split is never read: no "
        "test metrics, no --robustness",
        metavar="K",
    )
    cv_fold: int = option(0, "with --cv-folds, the fold that validates, 0..K-1", metavar="I")
    cv_seed: int = option(
        0, "with --cv-folds, the seed of the folds (not the training seed)", metavar="S"
    )
    test_split: bool = option(
        True,
        "read and evaluate the test split; --no-test-split leaves it unread (riftune tune's "
        "seed trials: no test metrics, no --robustness)",
    )

    def check(self) -> None:
        for name in ("group_column", "label_columns"):
            if getattr(self, name) and not resolve(self.data).format.table_columns:
                raise UserError(f"--{name.replace('_', '-')} applies to csv:FILE data only")
        if self.cv_folds is None and (self.cv_fold, self.cv_seed) != (0, 0):
            raise UserError("--cv-fold and --cv-seed choose a fold of --cv-folds K; give K")
        if self.cv_folds is not None:
            CrossValidation(self.cv_folds, self.cv_fold, self.cv_seed)  # checks K and the fold

    @property
    def reads_test(self) -> bool:
        """Whether the run reads the test split (not under --cv-folds or --no-test-split)."""
        return self.test_split and self.cv_folds is None

    @property
    def cross_validation(self) -> CrossValidation | None:
        """The fold this run trains and validates on, or ``None`` (train, val and test as given)."""
        if self.cv_folds is None:
            return None
        return CrossValidation(self.cv_folds, self.cv_fold, self.cv_seed)


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
    pretrained_file: str | None = option(
        None,
        "start the backbone from a local safetensors or torch state dict (a backbone, a timm "
        "model or a riftune export; the classifier is ignored) instead of its named weights",
        metavar="PATH",
    )

    def check(self) -> None:
        if self.pretrained_file and not self.pretrained:
            raise UserError("--pretrained-file and --no-pretrained contradict each other")


@dataclass
class TrainingConfig(Section):
    """The optimization: schedule, batch, precision, device, checkpoints."""

    seed: int = option(0, "seed for weights, data order, shots")
    epochs: int = option(20, "epochs (10 before 2026-12)", check=positive)
    batch_size: int = option(
        32, "global batch size, split evenly over torchrun processes", check=positive
    )
    micro_batches: int = option(
        1,
        "cut each global batch into M equal micro-batches whose gradients are summed (M a "
        "multiple of the torchrun process count): with the same M, 1, 2 or M processes compute "
        "the same sums in the same order, so a run gives the same result on any of them "
        "with the same intra-op threads per process (docs/grids.md). Needs a regularizer "
        "without batch statistics (none, l2sp, spd, ftp, delta, ldifs, feature-distill)",
        check=positive,
        metavar="M",
    )
    lr: float = option(3e-4, "backbone learning rate (1e-4 before 2026-12)", check=non_negative)
    head_lr: float = option(1e-3, "head learning rate", check=non_negative)
    weight_decay: float = option(0.01, "AdamW weight decay", check=non_negative)
    warmup_epochs: float = option(
        1.0, "linear warmup length before cosine decay, in epochs", check=non_negative
    )
    grad_clip: float = option(
        1.0, "clip the global gradient norm to this (0 disables)", check=non_negative
    )
    augment: bool = option(
        True,
        "random flips and crops of training images (off before 2026-12; --no-augment turns it off)",
    )
    freeze_bn: bool = option(
        True,
        "keep every BatchNorm layer in eval mode (pretrained running statistics) during "
        "training, also for methods that train the backbone (full, lp-ft); its affine weights "
        "still learn if the method trains them. --no-freeze-bn: train-mode BatchNorm (the "
        "default before 2026-12; on the CPU grid it cost plain full finetuning 11-19 AUC "
        "points, RESULTS-earlier.md)",
    )
    amp: Literal["auto", "bf16", "fp16", "off"] = option(
        "auto", "mixed precision: auto = bf16 on CUDA, off on the CPU"
    )
    device: Literal["auto", "cpu", "cuda"] = option("auto", "where to train")
    channels_last: Literal["auto", "on", "off"] = option(
        "auto",
        "store the model's convolution weights channels last (NHWC), the layout oneDNN and "
        "cuDNN convolve fastest (2.2-3.0x the training throughput of the default recipe on a "
        "2-core CPU, BENCHMARKS.md); auto = on unless BatchNorm trains (--no-freeze-bn), where "
        "the CPU's channels-last BatchNorm backward lost precision (tests/models/test_speed.py). "
        "Same values, another order of sums (off before 2026-12)",
    )
    compile: Literal["auto", "on", "off"] = option(
        "auto",
        "torch.compile the training step's forward and backward (on CUDA with CUDA graphs); "
        "auto = on only where BENCHMARKS.md measured it faster (nowhere yet: slower on the "
        "2-core CPU, unmeasured on a GPU). The first step compiles (tens of seconds on a CPU)",
    )
    checkpoint_every: int = option(
        0,
        "also checkpoint every N optimizer steps (0: at epoch ends only)",
        check=non_negative,
        metavar="N",
    )
    checkpoint_seconds: float = option(
        60.0,
        "at an epoch end, write a progress checkpoint only when S seconds have passed since "
        "the last one (0: every epoch end, the behaviour before 2026-12); the last epoch, a "
        "stop signal and --checkpoint-every always write one, so a crash (not a signal) loses "
        "at most the epochs of S seconds. Does not change what is trained",
        check=non_negative,
        metavar="S",
    )
    class_weights: Literal["none", "balanced"] = option(
        "none",
        "weigh the task loss by class: balanced = N / (C · n_c) (multi-label: each label's "
        "positives by negatives / positives)",
    )
    sampler: Literal["plain", "balanced"] = option(
        "plain", "balanced: draw every class equally often (with replacement)"
    )
    select_on: Literal["auc", "acc", "loss"] = option(
        "auc", "the validation metric that selects the checkpoint evaluated on test"
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
        0,
        "power iterations for the top Hessian eigenvalue (0 skips; 10 was the default before "
        "2026-12, when it took a third of a default run on a CPU)",
        check=non_negative,
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
    robustness: bool = option(
        False,
        "also evaluate the selected checkpoint on the test split under 6 corruptions x 3 "
        "severities (MedMNIST-C / ImageNet-C style): the 'robust' block of metrics.json",
    )
    bootstrap_resamples: int = option(
        1000,
        "bootstrap resamples for the 95% confidence intervals of accuracy and AUC (0 skips)",
        check=non_negative,
    )


@dataclass
class BudgetConfig(Section):
    """A similarity budget: λ found by dual ascent so that the penalty stays within ε."""

    flag_prefix: ClassVar[str] = "budget"
    budget: float | None = option(
        None,
        "keep the running mean of the penalty within EPS instead of weighting it by a fixed "
        "--lam: λ becomes a Lagrange multiplier updated every step. EPS is the penalty's "
        "value: for paired rift 2 - 2·similarity, for cka 1 - CKA, for feature-distill the "
        "mean squared embedding distance",
        flag="--budget",
        check=non_negative,
        metavar="EPS",
    )
    target_similarity: float | None = option(
        None,
        "the budget as a similarity to keep: rift with --rift-match paired (EPS = 2 - 2·S) or "
        "cka (EPS = 1 - S)",
        flag="--target-similarity",
        check=unit_interval,
        metavar="S",
    )
    lr: float = option(0.5, "the dual step size of λ", check=positive_finite)
    ema: float = option(
        0.9,
        "weight of the past in the running mean of the penalty, in [0, 1)",
        check=lambda v: None if 0 <= v < 1 else "must be in [0, 1)",
    )
    mode: Literal["additive", "geco"] = option(
        "additive",
        "additive: λ + lr·(mean − EPS), from 0; geco: λ·exp(lr·(mean − EPS)), from --lam",
    )

    @property
    def active(self) -> bool:
        return self.budget is not None or self.target_similarity is not None

    def check(self) -> None:
        if self.budget is not None and self.target_similarity is not None:
            raise UserError("--budget and --target-similarity say the same thing; pass one")


LOGGERS = ("tensorboard", "wandb", "mlflow")
"""The trackers ``--logger`` names (:mod:`riftune.engine.loggers`)."""


def _unknown_loggers(value: str | None) -> str | None:
    names = [n.strip() for n in (value or "").split(",")]
    unknown = [n for n in names if n not in LOGGERS]
    if value is not None and unknown:
        return f"unknown tracker {unknown[0]!r}; choose from {', '.join(LOGGERS)}"
    return None


@dataclass
class OutputConfig(Section):
    """Where the run goes and how it talks; never part of config.yaml."""

    out: str = option("runs/latest", "run folder")
    resume: bool = option(False, "continue the run in --out", negatable=False)
    overwrite: bool = option(
        False, "replace a finished or unfinished run in --out", negatable=False
    )
    quiet: bool = option(False, "no progress output", negatable=False)
    tensorboard: bool = option(
        False,
        "also log losses and metrics to TensorBoard in OUT/tensorboard "
        "(pip install 'riftune[tensorboard]'); the same as --logger tensorboard",
        negatable=False,
    )
    logger: str | None = option(
        None,
        "also log the configuration, every step's and epoch's values and the test scores to "
        "these trackers, comma-separated: tensorboard (OUT/tensorboard), wandb (OUT/wandb; "
        "$WANDB_PROJECT, WANDB_MODE=offline), mlflow ($MLFLOW_TRACKING_URI, else a file store "
        "in OUT/mlruns); pip install 'riftune[NAME]'",
        check=_unknown_loggers,
        metavar="NAMES",
    )
    debug: bool = option(False, "show tracebacks", negatable=False)

    @property
    def loggers(self) -> tuple[str, ...]:
        """The trackers to log to: ``--logger``'s names, and tensorboard with
        ``--tensorboard``, each once, in the order given."""
        names = [n.strip() for n in (self.logger or "").split(",") if n.strip()]
        return tuple(dict.fromkeys(names + (["tensorboard"] if self.tensorboard else [])))

    def check(self) -> None:
        if self.resume and self.overwrite:
            raise UserError("--resume and --overwrite contradict each other; pass only one")


SECTIONS: dict[str, type[Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainingConfig,
    "evaluation": EvaluationConfig,
    "budget": BudgetConfig,
}
"""The sections that belong to no component, by their key in the YAML form (``output`` is
not written there)."""
