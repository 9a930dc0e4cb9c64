"""The training loop of ``riftune finetune``.

Data flows one way: run configuration -> data + backbone + finetuning method -> regularizer
(prepared once from the pretrained backbone) -> steps (embeddings -> head -> task loss + λ ·
penalty) -> evaluation -> run folder. Under torchrun every rank runs this; only rank 0 writes
and prints.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from pathlib import Path

from riftune import distributed
from riftune.config import RunConfig
from riftune.data import eval_loader
from riftune.engine.build import (
    autocast_dtype,
    build_model_and_data,
    build_pretrained_classifier,
    build_training,
    run_channels_last,
    training_forward,
)
from riftune.engine.checkpointer import Checkpointer, TrainState
from riftune.engine.evaluation import EvalResult, evaluate_split, final_metrics
from riftune.engine.outputs import LiveOutputs, write_evaluation_outputs, write_figures
from riftune.engine.progress import Progress
from riftune.engine.run_claim import claim_run_dir, preflight
from riftune.engine.selection import initial_best, is_better
from riftune.engine.step import NonFiniteLossError
from riftune.engine.step_log import LOSSES, StepLog
from riftune.engine.timing import PhaseTimer
from riftune.models.speed import thread_report
from riftune.runs.folder import RunDir, write_json_atomic
from riftune.runs.signals import GracefulStop, Preempted

#: the phases of building a run, timed anew by every attempt (a resume adds them)
BUILD_PHASES = ("reference_pass", "regularizer_setup")


class Finetuner:
    """One finetuning run: build everything from its configuration, train, evaluate, write."""

    def __init__(
        self,
        config: RunConfig,
        ctx: distributed.DistributedContext,
        stop: GracefulStop | None = None,
    ):
        self.config = config
        self.ctx = ctx
        self.stop = stop or GracefulStop(signals=())
        self.lock = contextlib.ExitStack()
        self.run_dir = RunDir(Path(config.output.out))
        self.progress = Progress(enabled=ctx.is_main and not config.output.quiet)
        self.amp_dtype = autocast_dtype(config.training.amp, ctx.device)
        self.checkpointer = Checkpointer(self.run_dir, ctx)
        self.timer = PhaseTimer()
        self._trainable_names: tuple[str, ...] = ()

    # ----------------------------------------------------------------------------- set-up
    def _build(self) -> None:
        with self.timer.phase("reference_pass"):  # the data, the model, pretrained embeddings
            self.model, self.data, self.pretrained, self.method = build_model_and_data(
                self.config, self.ctx, self.amp_dtype
            )
        # the regularizer's preparation (RIFT's reference statistics, DELTA's channel
        # attention, L2-SP's snapshot), the teacher, the optimizer
        with self.timer.phase("regularizer_setup"):
            self.training = build_training(
                self.config, self.ctx, self.model, self.data, self.pretrained, self.method,
                self.amp_dtype,
            )  # fmt: skip
        self.steps_per_epoch = self.training.sampler.steps_per_epoch
        self.val_loader = eval_loader(
            self.data.val, self.config.evaluation.eval_batch_size, self.ctx
        )

    # ------------------------------------------------------------------------------ steps
    def _configure_epoch(self, epoch: int) -> None:
        """Train/eval modes and trainable parameters for this epoch; re-wrap DDP if they changed."""
        self.model.train()
        train = self.config.training
        self.method.configure(self.model, epoch, train.epochs, freeze_bn=train.freeze_bn)
        names = tuple(n for n, p in self.model.named_parameters() if p.requires_grad)
        if names != self._trainable_names:
            self.training.step.forward_model = training_forward(self.model, self.ctx, train)
        self._trainable_names = names

    def _stateful(self) -> dict:
        """What a checkpoint holds besides the model (the step's λ schedule among them)."""
        return self.training.stateful() | {"timing": self.timer}

    def _save(self) -> None:
        self._flush_steps()  # a checkpoint holds every step row up to its step
        with self.timer.phase("checkpointing"):
            wall = self.state.wall_seconds + (time.perf_counter() - self._started)
            self.checkpointer.save(self.state, wall, self.model, self._stateful())
        self._saved_at = time.perf_counter()

    def _flush_steps(self, bar=None) -> None:
        """Read the pending step rows back from the device and write them (see
        :mod:`~riftune.engine.step_log`); a diverged loss stops the run here, with the best model
        kept so far written."""
        try:
            last = self.step_log.flush()
        except NonFiniteLossError as error:
            self.checkpointer.flush_best()
            raise NonFiniteLossError(
                f"{error} (epoch {self.state.epoch + 1}); lower --lr or --lam. "
                f"{self.checkpointer.kept()}"
            ) from None
        if bar is not None and last is not None:
            bar.show(loss=last["loss"])

    def _checkpoint_due(self) -> bool:
        """Whether an epoch end should write a progress checkpoint: ``--checkpoint-seconds``
        have passed since the last one (or since this session started)."""
        return time.perf_counter() - self._saved_at >= self.config.training.checkpoint_seconds

    def _train_epoch(self, epoch: int) -> dict:
        s, t = self.state, self.training
        self._configure_epoch(epoch)
        t.sampler.set_epoch(epoch)
        t.sampler.set_start_step(s.step_in_epoch)
        self.data.train.set_epoch(epoch)
        if s.step_in_epoch == 0:
            s.epoch_sums = dict.fromkeys(LOSSES, 0.0)
        bar = self.progress.bar(
            self.steps_per_epoch, initial=s.step_in_epoch, desc=f"epoch {epoch + 1}"
        )
        every = self.config.training.checkpoint_every
        tick = start = time.perf_counter()
        for images, labels, indices in t.loader:
            s.data_ms.append((time.perf_counter() - tick) * 1000.0)
            losses = t.step(images, labels, indices)  # scalar tensors: nothing waits here
            now = time.perf_counter()
            s.step_ms.append((now - tick) * 1000.0)
            s.global_step += 1
            s.step_in_epoch += 1
            row = {"step": s.global_step, **losses, "lr": t.scheduler.get_last_lr()[0]}
            if t.step.weight is not None:  # under a budget: the λ of this step and D̄ after it
                row |= t.step.weight.step_log()
            if self.step_log.add(row):
                self._flush_steps(bar)
            bar.update()
            mid_epoch = s.step_in_epoch < self.steps_per_epoch
            if every and s.global_step % every == 0 and mid_epoch:
                self._flush_steps(bar)  # the device's queue is training time
                self.timer.add("train_steps", time.perf_counter() - start)
                self._save()
                start = time.perf_counter()
            if mid_epoch and self.stop.should_stop(self.ctx):
                self._flush_steps(bar)
                self.timer.add("train_steps", time.perf_counter() - start)
                self._stop_here()
            tick = time.perf_counter()
        self._flush_steps(bar)
        self.timer.add("train_steps", time.perf_counter() - start)
        bar.close()
        return {
            f"train_{k if k == 'loss' else k + '_loss'}": v / max(s.step_in_epoch, 1)
            for k, v in s.epoch_sums.items()
        }

    def _stop_here(self) -> None:
        """Checkpoint this step boundary and stop the run (a signal asked for it)."""
        self._save()
        self.ctx.barrier()  # torchrun ends the others as soon as one rank exits
        raise Preempted(self.stop.signal_name, self.state.global_step, self.run_dir.checkpoints)

    def _validate(self) -> EvalResult:
        with self.timer.phase("validation"):
            return evaluate_split(
                self.model, self.val_loader, self.pretrained.val, self.ctx, self.amp_dtype,
                self.data.multilabel,
            )  # fmt: skip

    def run(self) -> dict:
        try:
            return self._run()
        finally:
            self.lock.close()

    def _run(self) -> dict:
        self._started = time.perf_counter()
        preflight(self.run_dir, self.config, self.ctx)
        self._build()
        claim_run_dir(self.run_dir, self.config, self.model, self.ctx, self.lock)
        self.state = TrainState(best_value=initial_best(self.config.training.select_on))
        if self.config.output.resume:
            built = {phase: self.timer.seconds(phase) for phase in BUILD_PHASES}  # this session's
            self.state, name = self.checkpointer.restore(
                self.model, self._stateful(), optional=("timing",)
            )
            for phase, seconds in built.items():  # the restore replaced the totals
                self.timer.add(phase, seconds)
            self.progress.log(
                f"resumed from {name} at epoch {self.state.epoch + 1}, step "
                f"{self.state.step_in_epoch}"
            )
        s, epochs = self.state, self.config.training.epochs
        self._saved_at = time.perf_counter()
        self.outputs = LiveOutputs(self.run_dir, self.config, self.ctx, s)
        self.step_log = StepLog(s, self.outputs)
        epochs_bar = self.progress.bar(epochs, initial=s.epoch, desc="epochs", leave=True)
        for epoch in range(s.epoch, epochs):
            train_losses = self._train_epoch(epoch)
            val = self._validate()
            s.epoch = epoch + 1
            s.step_in_epoch = 0
            row = {
                "epoch": epoch + 1,
                **train_losses,
                **val.prefixed("val_"),
                "lr": self.training.scheduler.get_last_lr()[0],
            }
            if self.training.step.weight is not None:  # under a budget: λ now
                row |= {k: float(v) for k, v in self.training.step.weight.epoch_log().items()}
            s.history.append(row)
            self.outputs.epoch(row, s.global_step)
            select_on = self.config.training.select_on
            if is_better(select_on, getattr(val, select_on), s.best_value):
                s.best_value, s.best_epoch = getattr(val, select_on), epoch + 1
                with self.timer.phase("checkpointing"):
                    self.checkpointer.keep_best(self.model, s.epoch)
            stopping = s.epoch < epochs and self.stop.should_stop(self.ctx)
            if stopping or s.epoch == epochs or self._checkpoint_due():
                self._save()
            if stopping:
                self.ctx.barrier()
                raise Preempted(self.stop.signal_name, s.global_step, self.run_dir.checkpoints)
            epochs_bar.update(val_auc=val.auc, val_cka=val.cka)
            self.progress.log(
                f"epoch {epoch + 1}/{epochs}: loss {row['train_loss']:.4f} "
                f"val auc {val.auc:.4f} acc {val.acc:.4f} cka {val.cka:.4f}"
            )
        epochs_bar.close()
        return self._finish()

    def _finish(self) -> dict:
        """Evaluate the best-validation checkpoint on test and write the run's outputs."""
        s = self.state
        self.ctx.barrier()  # rank 0 may still be writing the best checkpoint
        self.checkpointer.load_best(self.model, s.best_epoch)
        final = final_metrics(
            self.model, self.data, self.pretrained,
            functools.partial(build_pretrained_classifier, self.config), self.config, self.ctx,
            self.amp_dtype, self.timer,
        )  # fmt: skip
        # the figures and the last line show test, or validation in a cross-validation fold run
        shown, shown_name = (final.val, "val") if final.test is None else (final.test, "test")
        if self.ctx.is_main:
            with self.timer.phase("figures"):
                self.outputs.close(final.metrics)
                write_figures(self.run_dir, s.history, final, self.pretrained, self.data)
                write_evaluation_outputs(self.run_dir, final, self.data)
        wall = s.wall_seconds + (time.perf_counter() - self._started)
        metrics = {
            **final.metrics,
            "selected_on": f"val_{self.config.training.select_on}",
            "best_epoch": s.best_epoch,
            "epochs": self.config.training.epochs,
            "wall_seconds": wall,
            "timing": self.timer.as_dict(),
            "threads": thread_report(),
            "channels_last": run_channels_last(self.config.training, self.model),
            **_throughput(s, self.config.training.batch_size),
            "world_size": self.ctx.world_size,
            "device": str(self.ctx.device),
        }
        if self.ctx.is_main:
            write_json_atomic(metrics, self.run_dir.metrics)
            self.progress.log(self.timer.summary(total=wall))
            self.progress.log(
                f"{shown_name} acc {shown.acc:.4f} auc {shown.auc:.4f} cka {shown.cka:.4f} "
                f"(best epoch {s.best_epoch}); results in {self.run_dir.root}"
            )
        return metrics


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
