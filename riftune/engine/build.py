"""Assembling a run from its configuration: model and data, then what trains them.

``riftune finetune``, ``evaluate``, ``wise-ft`` and ``bench`` all build through these functions,
so the bench times exactly the step that ``finetune`` runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from riftune import distributed, tuning
from riftune.config import RunConfig
from riftune.config.sections import TrainingConfig
from riftune.data import BatchLoader, DatasetSplits, GlobalBatchSampler, eval_loader, load_dataset
from riftune.data.sampling import train_batch_sampler
from riftune.engine.ddp import wrap_model
from riftune.engine.evaluation import PretrainedEmbeddings, pretrained_embeddings
from riftune.engine.losses import class_weights
from riftune.engine.schedule import warmup_cosine
from riftune.engine.step import Teacher, TrainStep
from riftune.engine.weight import ConstantWeight, DualAscentWeight, LossWeight
from riftune.errors import UserError
from riftune.models import build_classifier
from riftune.models.classifier import Classifier
from riftune.models.speed import (
    compiled_training_forward,
    to_channels_last,
    trains_batchnorm,
    use_channels_last,
    use_compile,
)
from riftune.optim.ftp import FTPAdamW
from riftune.optim.spd import SPDAdamW, spd_anchors, spd_param_groups
from riftune.regularizers import PretrainedView, Regularizer


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None: full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def build_pretrained_classifier(config: RunConfig, num_classes: int = 1) -> Classifier:
    """The configured backbone with its starting weights (``--pretrained-file``'s when given)
    and a new head: the model a run trains, and every pretrained reference it compares with."""
    return build_classifier(
        config.model.backbone,
        num_classes=num_classes,
        pretrained=config.model.pretrained,
        img_size=config.data.img_size,
        pretrained_file=config.model.pretrained_file,
    )


def build_model_and_data(
    config: RunConfig, ctx: distributed.DistributedContext, amp_dtype: torch.dtype | None
) -> tuple[Classifier, DatasetSplits, PretrainedEmbeddings, tuning.FinetuningMethod]:
    """Backbone + head, data, pretrained embeddings of every split, and the applied method.

    A ``--cv-folds`` or ``--no-test-split`` run has no test split (``data.test`` and
    ``pretrained.test`` are None).

    The pretrained embeddings are computed before the method changes the backbone. Seeded, so
    ``riftune evaluate`` rebuilds exactly what ``finetune`` trained.
    """
    seed = config.training.seed
    if not config.data.reads_test and config.evaluation.robustness:
        raise UserError(
            "--robustness evaluates on the test split, which a --cv-folds or --no-test-split "
            "run never reads; drop one of them"
        )
    torch.manual_seed(seed)
    model = build_pretrained_classifier(config)
    norm = model.pretrained_cfg
    data = load_dataset(
        config.data.data,
        data_root=config.data.data_root,
        img_size=config.data.img_size,
        mean=tuple(norm["mean"]),
        std=tuple(norm["std"]),
        shots=config.data.shots,
        seed=seed,
        augment=config.training.augment,
        group_column=config.data.group_column,
        label_columns=config.data.label_columns.split(",") if config.data.label_columns else None,
        cv=config.data.cross_validation,
        test=config.data.test_split,
    )
    if ctx.device.type == "cuda":  # images live on the GPU: batches never cross the host
        data = dataclasses.replace(
            data,
            **{split: getattr(data, split).to(ctx.device) for split in data.present},
        )
    torch.manual_seed(seed)
    model.reset_head(data.num_classes)
    channels_last = run_channels_last(config.training, model)
    to_device(model, ctx.device, channels_last)
    batch = config.evaluation.eval_batch_size
    pretrained = pretrained_embeddings(model, data, batch, ctx, amp_dtype)
    method = config.method.build()
    method.apply(model)
    to_device(model, ctx.device, channels_last)  # the method's new weights too
    return model, data, pretrained, method


def run_channels_last(train: TrainingConfig, model: torch.nn.Module) -> bool:
    """Whether a run with these training options stores ``model``'s convolution weights
    channels last (``--channels-last``, resolved against ``--freeze-bn``)."""
    return use_channels_last(train.channels_last, model, train.freeze_bn)


def to_device(model: Classifier, device: torch.device, channels_last: bool) -> None:
    """Move ``model`` to ``device``, its convolution weights channels last if asked (in place:
    parameters keep their identity)."""
    model.to(device)
    if channels_last:
        to_channels_last(model)


def build_teacher(
    reg: Regularizer, method: tuning.FinetuningMethod, model: Classifier
) -> Teacher | None:
    """The per-step pretrained pass, when the regularizer asks for one."""
    if reg.reference != "teacher" and not reg.needs_feature_maps:
        return None
    has_switch = method.pretrained_forward(model) is not None
    return Teacher(
        model,
        (lambda: method.pretrained_forward(model)) if has_switch else None,
        feature_layers=reg.feature_layers if reg.needs_feature_maps else None,
    )


def build_loss_weight(config: RunConfig) -> LossWeight:
    """λ's schedule for the train step: dual ascent under the run's similarity budget, else
    the fixed ``--lam``."""
    if not config.budget.active:
        return ConstantWeight(config.regularizer.weight)
    budget = config.budget
    return DualAscentWeight(
        config.epsilon, budget.lr, ema=budget.ema, mode=budget.mode, initial=config.initial_lam
    )


def build_optimizer(
    method: tuning.FinetuningMethod,
    model: Classifier,
    reg: Regularizer,
    lr: float,
    head_lr: float,
    weight_decay: float,
    strength: float,
) -> torch.optim.AdamW:
    """AdamW over the method's groups and the regularizer's own parameters (no decay); with
    an optimizer-side regularizer its optimizer, of strength ``strength`` (``--lam``): with
    ``--reg spd`` Selective Projection Decay (λ), with ``--reg ftp`` Fast Trainable Projection
    (κ), anchored at the parameters'
    values now (call it before any update or checkpoint load)."""
    reg_lr = head_lr if reg.param_lr is None else reg.param_lr
    groups = method.param_groups(model, backbone_lr=lr, head_lr=head_lr) + [
        {"params": list(reg.parameters()), "lr": reg_lr, "weight_decay": 0.0}
    ]
    if reg.optimizer == "spd":
        anchors = spd_anchors(model, method)
        return SPDAdamW(
            spd_param_groups(groups, anchors), anchors, spd_lam=strength, lr=lr,
            weight_decay=weight_decay,
        )  # fmt: skip
    if reg.optimizer == "ftp":
        anchors = spd_anchors(model, method)
        return FTPAdamW(
            spd_param_groups(groups, anchors), anchors, ftp_k=strength, lr=lr,
            weight_decay=weight_decay,
        )  # fmt: skip
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)


@dataclass
class Training:
    """What trains the model: the regularizer, optimizer, schedule, batches and step."""

    regularizer: Regularizer
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    sampler: GlobalBatchSampler
    loader: BatchLoader
    step: TrainStep

    def stateful(self) -> dict[str, object]:
        """The objects whose ``state_dict`` a checkpoint holds, by their checkpoint key (the
        step's λ schedule under its own key, ``budget``, when it has a state)."""
        weight = self.step.weight
        keep_weight = weight is not None and weight.checkpoint_key is not None
        return {
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
            "regularizer": self.regularizer,
        } | ({weight.checkpoint_key: weight} if keep_weight else {})


def build_training(
    config: RunConfig,
    ctx: distributed.DistributedContext,
    model: Classifier,
    data: DatasetSplits,
    pretrained: PretrainedEmbeddings,
    method: tuning.FinetuningMethod,
    amp_dtype: torch.dtype | None,
) -> Training:
    """The regularizer (prepared from the pretrained model) and everything the loop steps."""
    train, device = config.training, ctx.device
    reg = config.regularizer.build(model.num_features)
    batch = config.evaluation.eval_batch_size
    reg.prepare(
        PretrainedView(
            model=model,
            train_embeddings=pretrained.train.embeddings,
            train_labels=pretrained.train.labels,
            train_batches=lambda: eval_loader(data.train, batch, ctx),
            backbone_weights=method.backbone_weights,
        )
    )
    reg.to(device)
    teacher = build_teacher(reg, method, model)
    cache = pretrained.train.embeddings.to(device) if reg.reference == "cache" else None
    distributed.synchronize_batchnorm(model)
    optimizer = build_optimizer(
        method, model, reg, train.lr, train.head_lr, train.weight_decay,
        strength=config.regularizer.weight,
    )  # fmt: skip
    sampler = train_batch_sampler(
        train.sampler,
        data.train.labels,
        train.batch_size,
        seed=train.seed,
        world_size=ctx.world_size,
        rank=ctx.rank,
    )
    steps_per_epoch = sampler.steps_per_epoch
    scheduler = warmup_cosine(
        optimizer, round(train.warmup_epochs * steps_per_epoch), steps_per_epoch * train.epochs
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step = TrainStep(
        model,
        reg,
        optimizer,
        scheduler,
        scaler,
        ctx,
        weight=build_loss_weight(config).to(device) if reg.has_penalty else None,
        grad_clip=train.grad_clip,
        amp_dtype=amp_dtype,
        reference_cache=cache,
        teacher=teacher,
        multilabel=data.multilabel,
        class_weights=class_weights(train.class_weights, data.train.labels, data.num_classes),
        backbone_weights=method.backbone_weights,
        micro_batches=local_micro_batches(train, model, ctx.world_size),
    )
    return Training(
        reg, optimizer, scheduler, scaler, sampler, BatchLoader(data.train, sampler), step
    )


def training_forward(
    model: Classifier, ctx: distributed.DistributedContext, train: TrainingConfig
) -> torch.nn.Module:
    """What the train step's forward pass calls: ``model``, in DistributedDataParallel under
    torchrun (over the parameters that train now: build it again when they change), compiled
    when ``--compile`` says so. Both share ``model``'s parameters."""
    forward = wrap_model(model, ctx) if ctx.is_distributed else model
    if use_compile(train.compile, ctx.device):
        micro = local_micro_batches(train, model, ctx.world_size)
        forward = compiled_training_forward(forward, ctx.device, micro)
    return forward


def local_micro_batches(train: TrainingConfig, model: torch.nn.Module, world_size: int) -> int:
    """The micro-batches each process runs per step: ``--micro-batches`` M over the processes.

    Raises:
        UserError: M is not a multiple of the process count, or BatchNorm trains (its batch
            statistics would be those of a micro-batch in one process and of the global batch
            under torchrun's synchronized BatchNorm).
    """
    micro = train.micro_batches
    if micro == 1:
        return 1
    if micro % world_size:
        raise UserError(f"--micro-batches {micro} is not a multiple of the {world_size} processes")
    if trains_batchnorm(model, train.freeze_bn):
        raise UserError(f"--micro-batches {micro} needs frozen BatchNorm; drop --no-freeze-bn")
    return micro // world_size
