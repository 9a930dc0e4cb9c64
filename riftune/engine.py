"""The training loop of ``riftune finetune``.

Data flows one way: flags -> data + backbone + finetuning method -> regularizer (prepared once
from the pretrained backbone) -> steps (embeddings -> head -> task loss + lam * penalty) ->
evaluation -> run folder. Under torchrun every rank runs this; only rank 0 writes and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from riftune import checkpoint as ckpt
from riftune import config as config_module
from riftune import distributed, regularizers, report, rng, tuning
from riftune.data import BatchLoader, GlobalBatchSampler, load_dataset
from riftune.errors import UserError
from riftune.evaluation import (
    EvalResult,
    PretrainedEmbeddings,
    eval_loader,
    evaluate_split,
    final_metrics,
    pretrained_embeddings,
)
from riftune.models import build_classifier
from riftune.models.classifier import Classifier
from riftune.progress import Progress
from riftune.regularizers import PretrainedView
from riftune.run_dir import RunDir, claim, write_json_atomic
from riftune.schedule import warmup_cosine
from riftune.step import NonFiniteLossError, Teacher, TrainStep


@dataclass
class TrainState:
    """What advances during training and must survive a crash, besides the tensors."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done within the current epoch
    global_step: int = 0
    best_val_auc: float = float("-inf")
    best_epoch: int = -1
    wall_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)  # per step, waiting for its batch included
    data_ms: list[float] = field(default_factory=list)  # per step, waiting for its batch
    epoch_sums: dict[str, float] = field(default_factory=dict)  # running loss sums this epoch
    steps: list[dict] = field(default_factory=list)  # per-step losses and learning rate


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None: full precision)."""
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16":
        return torch.float16
    return torch.bfloat16


def build_model_and_data(
    args: argparse.Namespace, ctx: distributed.DistributedContext, amp_dtype: torch.dtype | None
) -> tuple[Classifier, object, PretrainedEmbeddings, tuning.FinetuningMethod]:
    """Backbone + head, data, pretrained embeddings of every split, and the applied method.

    The pretrained embeddings are computed before the method changes the backbone. Seeded, so
    ``riftune evaluate`` rebuilds exactly what ``finetune`` trained.
    """
    torch.manual_seed(args.seed)
    model = build_classifier(
        args.backbone, num_classes=1, pretrained=not args.no_pretrained, img_size=args.img_size
    )
    cfg = model.pretrained_cfg
    data = load_dataset(
        args.data,
        data_root=args.data_root,
        img_size=args.img_size,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        shots=args.shots,
        seed=args.seed,
        augment=args.augment,
    )
    if ctx.device.type == "cuda":  # images live on the GPU: batches never cross the host
        data = dataclasses.replace(
            data,
            **{split: getattr(data, split).to(ctx.device) for split in ("train", "val", "test")},
        )
    torch.manual_seed(args.seed)
    model.reset_head(data.num_classes)
    model.to(ctx.device)
    pretrained = pretrained_embeddings(model, data, args.eval_batch_size, ctx, amp_dtype)
    method = tuning.get(args.method).from_args(args)
    method.apply(model)
    model.to(ctx.device)
    return model, data, pretrained, method


class Finetuner:
    """One finetuning run: build everything from flags, train, evaluate, write the run folder."""

    def __init__(self, args: argparse.Namespace, ctx: distributed.DistributedContext):
        self.args = args
        self.ctx = ctx
        self.run_dir = RunDir(Path(args.out))
        self.progress = Progress(enabled=ctx.is_main and not args.quiet)
        self.amp_dtype = autocast_dtype(args.amp, ctx.device)
        self.config = config_module.resolved(args)

    # ----------------------------------------------------------------------------- set-up
    def _claim_run_dir(self) -> None:
        error = None
        if self.ctx.is_main:
            try:
                claim(self.run_dir, resume=self.args.resume, overwrite=self.args.overwrite)
                if self.args.resume:
                    self._check_same_config()
                else:
                    config_module.write_config(self.config, self.run_dir.config)
            except UserError as caught:
                error = str(caught)
        error = self.ctx.broadcast_object(error)
        if error is not None:
            raise UserError(error)

    def _check_same_config(self) -> None:
        stored = config_module.read_config(self.run_dir.config)
        changed = sorted(
            k for k in set(stored) | set(self.config) if stored.get(k) != self.config.get(k)
        )
        if changed:
            raise UserError(
                f"--resume needs the flags of the interrupted run; these differ: {', '.join(changed)} "
                f"(see {self.run_dir.config})"
            )

    def _build(self) -> None:
        args, device = self.args, self.ctx.device
        self.model, self.data, self.pretrained, self.method = build_model_and_data(
            args, self.ctx, self.amp_dtype
        )
        model = self.model
        self.reg = regularizers.get(args.reg).from_args(args, model.num_features)
        self.reg.prepare(
            PretrainedView(
                model=model,
                train_embeddings=self.pretrained.train.embeddings,
                train_labels=self.pretrained.train.labels,
                train_batches=lambda: eval_loader(self.data.train, args.eval_batch_size, self.ctx),
            )
        )
        self.reg.to(device)
        needs_teacher = self.reg.reference == "teacher" or self.reg.needs_feature_maps
        teacher = None
        if needs_teacher:
            has_switch = self.method.pretrained_forward(model) is not None
            teacher = Teacher(
                model,
                (lambda: self.method.pretrained_forward(model)) if has_switch else None,
                feature_layers=self.reg.feature_layers if self.reg.needs_feature_maps else None,
            )
        cache = (
            self.pretrained.train.embeddings.to(device) if self.reg.reference == "cache" else None
        )
        distributed.synchronize_batchnorm(model)

        reg_lr = args.head_lr if self.reg.param_lr is None else self.reg.param_lr
        self.optimizer = torch.optim.AdamW(
            self.method.param_groups(model, backbone_lr=args.lr, head_lr=args.head_lr)
            + [{"params": list(self.reg.parameters()), "lr": reg_lr, "weight_decay": 0.0}],
            lr=args.lr,
            weight_decay=args.weight_decay,
        )
        self.sampler = GlobalBatchSampler(
            len(self.data.train),
            args.batch_size,
            seed=args.seed,
            world_size=self.ctx.world_size,
            rank=self.ctx.rank,
        )
        self.loader = BatchLoader(self.data.train, self.sampler)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        total_steps = self.steps_per_epoch * args.epochs
        self.scheduler = warmup_cosine(
            self.optimizer, round(args.warmup_epochs * self.steps_per_epoch), total_steps
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.step = TrainStep(
            model,
            self.reg,
            self.optimizer,
            self.scheduler,
            self.scaler,
            self.ctx,
            lam=args.lam,
            grad_clip=args.grad_clip,
            amp_dtype=self.amp_dtype,
            reference_cache=cache,
            teacher=teacher,
        )
        self.val_loader = eval_loader(self.data.val, args.eval_batch_size, self.ctx)
        self._trainable_names: tuple[str, ...] = ()

    # ------------------------------------------------------------------------------ steps
    def _configure_epoch(self, epoch: int) -> None:
        """Train/eval modes and trainable parameters for this epoch; re-wrap DDP if they changed."""
        self.model.train()
        self.method.configure(self.model, epoch, self.args.epochs)
        if self.args.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        names = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        if self.ctx.is_distributed and names != self._trainable_names:
            self.step.forward_model = DistributedDataParallel(
                self.model,
                device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self._trainable_names = names

    # ------------------------------------------------------------------------- checkpoints
    def _state_dicts(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "regularizer": self.reg.state_dict(),
            "rng": rng.capture_rng_state(),
        }

    def _save(self) -> None:
        """Checkpoint everything needed to continue exactly; keep the newest two."""
        if not self.ctx.is_main:
            return
        s = self._state
        meta_state = {
            "epoch": s.epoch,
            "step_in_epoch": s.step_in_epoch,
            "global_step": s.global_step,
            "best_val_auc": s.best_val_auc,
            "best_epoch": s.best_epoch,
            "wall_seconds": s.wall_seconds + (time.perf_counter() - self._started),
            "history": s.history,
            "step_ms": s.step_ms,
            "data_ms": s.data_ms,
            "epoch_sums": s.epoch_sums,
            "steps": s.steps,
        }
        tensors, meta = ckpt.flatten_state({"state": meta_state, **self._state_dicts()})
        name = f"step-{self._state.global_step:08d}"
        ckpt.save_checkpoint(self.run_dir.checkpoints, name, tensors, meta)
        ckpt.rotate_checkpoints(self.run_dir.checkpoints, keep=2)

    def _save_best(self) -> None:
        if not self.ctx.is_main:
            return
        tensors, meta = ckpt.flatten_state({"model": self.model.state_dict()})
        meta["epoch"] = self._state.epoch
        ckpt.save_checkpoint(self.run_dir.checkpoints, ckpt.BEST, tensors, meta)

    def _restore(self) -> None:
        path = ckpt.latest_valid_checkpoint(self.run_dir.checkpoints)
        if path is None:
            raise UserError(
                f"no valid checkpoint in {self.run_dir.checkpoints} to resume from; "
                "start again with --overwrite"
            )
        tensors, meta = ckpt.load_checkpoint(path)
        state = ckpt.unflatten_state(tensors, meta)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.reg.load_state_dict(state["regularizer"])
        rng.restore_rng_state(state["rng"])
        s = state["state"]
        self._state = TrainState(
            epoch=s["epoch"],
            step_in_epoch=s["step_in_epoch"],
            global_step=s["global_step"],
            best_val_auc=s["best_val_auc"],
            best_epoch=s["best_epoch"],
            wall_seconds=s["wall_seconds"],
            history=list(s["history"]),
            step_ms=list(s["step_ms"]),
            data_ms=list(s.get("data_ms", [])),
            epoch_sums=dict(s["epoch_sums"]),
            steps=list(s["steps"]),
        )
        self.progress.log(
            f"resumed from {path.name} at epoch {s['epoch'] + 1}, step {s['step_in_epoch']}"
        )

    # ------------------------------------------------------------------------------- loop
    def _train_epoch(self, epoch: int) -> dict:
        s = self._state
        self._configure_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.set_start_step(s.step_in_epoch)
        self.data.train.set_epoch(epoch)
        if s.step_in_epoch == 0:
            s.epoch_sums = {"loss": 0.0, "task": 0.0, "reg": 0.0}
        sums = s.epoch_sums
        bar = self.progress.bar(
            self.steps_per_epoch, initial=s.step_in_epoch, desc=f"epoch {epoch + 1}"
        )
        tick = time.perf_counter()
        for images, labels, indices in self.loader:
            s.data_ms.append((time.perf_counter() - tick) * 1000.0)
            try:
                losses = self._global_mean(self.step(images, labels, indices))
            except NonFiniteLossError:
                raise NonFiniteLossError(
                    f"loss became non-finite at step {s.global_step + 1} (epoch {epoch + 1}); "
                    f"lower --lr or --lam. The last good checkpoint is kept in "
                    f"{self.run_dir.checkpoints}"
                ) from None
            now = time.perf_counter()
            s.step_ms.append((now - tick) * 1000.0)
            s.global_step += 1
            s.step_in_epoch += 1
            s.steps.append({"step": s.global_step, **losses, "lr": self.scheduler.get_last_lr()[0]})
            for key in sums:
                sums[key] += losses[key]
            bar.update(loss=losses["loss"])
            every = self.args.checkpoint_every
            if every and s.global_step % every == 0 and s.step_in_epoch < self.steps_per_epoch:
                self._save()
            tick = time.perf_counter()
        bar.close()
        return {
            f"train_{k if k == 'loss' else k + '_loss'}": v / max(s.step_in_epoch, 1)
            for k, v in sums.items()
        }

    def _global_mean(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Losses of the global batch: the mean over ranks of each rank's (equal-sized) batch."""
        stacked = torch.stack([losses[k].float() for k in sorted(losses)])
        if self.ctx.is_distributed:
            torch.distributed.all_reduce(stacked)
            stacked /= self.ctx.world_size
        return dict(zip(sorted(losses), stacked.tolist(), strict=True))

    def _validate(self) -> EvalResult:
        return evaluate_split(
            self.model, self.val_loader, self.pretrained.val, self.ctx, self.amp_dtype
        )

    def run(self) -> dict:
        self._claim_run_dir()
        self._started = time.perf_counter()
        self._build()
        self._state = TrainState()
        if self.args.resume:
            self._restore()
        s = self._state
        epochs_bar = self.progress.bar(self.args.epochs, initial=s.epoch, desc="epochs", leave=True)
        for epoch in range(s.epoch, self.args.epochs):
            train_losses = self._train_epoch(epoch)
            val = self._validate()
            s.epoch = epoch + 1
            s.step_in_epoch = 0
            row = {
                "epoch": epoch + 1,
                **train_losses,
                **val.prefixed("val_"),
                "lr": self.scheduler.get_last_lr()[0],
            }
            s.history.append(row)
            if val.auc > s.best_val_auc:
                s.best_val_auc, s.best_epoch = val.auc, epoch + 1
                self._save_best()
            self._save()
            epochs_bar.update(val_auc=val.auc, val_cka=val.cka)
            self.progress.log(
                f"epoch {epoch + 1}/{self.args.epochs}: loss {row['train_loss']:.4f} "
                f"val auc {val.auc:.4f} acc {val.acc:.4f} cka {val.cka:.4f}"
            )
        epochs_bar.close()
        return self._finish()

    def _finish(self) -> dict:
        """Evaluate the best-validation checkpoint on test and write the run's outputs."""
        s = self._state
        tensors, meta = ckpt.load_checkpoint(
            ckpt.checkpoint_path(self.run_dir.checkpoints, ckpt.BEST)
        )
        self.model.load_state_dict(ckpt.unflatten_state(tensors, meta)["model"])
        evaluation, test = final_metrics(
            self.model, self.data, self.pretrained, self.args, self.ctx, self.amp_dtype
        )
        metrics = {
            **evaluation,
            "best_epoch": s.best_epoch,
            "epochs": self.args.epochs,
            "wall_seconds": s.wall_seconds + (time.perf_counter() - self._started),
            **_throughput(s, self.args.batch_size),
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
        }
        if self.ctx.is_main:
            report.write_history_csv(s.history, self.run_dir.history)
            report.write_history_csv(s.steps, self.run_dir.steps)
            report.plot_training(s.history, self.run_dir.training_plot)
            report.plot_embeddings(
                self.pretrained.test.embeddings.numpy(),
                test.collected.embeddings.numpy(),
                test.collected.labels.numpy(),
                self.run_dir.embeddings_plot,
                class_names=self.data.class_names,
                cka=test.cka,
            )
            write_json_atomic(metrics, self.run_dir.metrics)
            self.progress.log(
                f"test acc {test.acc:.4f} auc {test.auc:.4f} cka {test.cka:.4f} "
                f"(best epoch {s.best_epoch}); results in {self.run_dir.root}"
            )
        return metrics


def finetune(args: argparse.Namespace) -> dict:
    """Run ``riftune finetune`` with parsed flags; returns metrics.json's content (all ranks)."""
    config_module.validate(args)
    ctx = distributed.setup(args.device)
    try:
        return Finetuner(args, ctx).run()
    finally:
        distributed.teardown()


def _throughput(state: TrainState, batch_size: int) -> dict[str, float]:
    """Median training step (ms, the wait for its batch included), the median wait for a batch
    (ms), and images per second of the global batch at the median step."""
    if not state.step_ms:
        return {"train_step_ms": float("nan")}
    step_ms = statistics.median(state.step_ms)
    return {
        "train_step_ms": step_ms,
        "train_data_ms": statistics.median(state.data_ms) if state.data_ms else float("nan"),
        "train_images_per_s": batch_size / (step_ms / 1000.0),
    }
