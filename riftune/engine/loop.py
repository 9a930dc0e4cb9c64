"""The training loop of ``riftune finetune``.

Data flows one way: run configuration -> data + backbone + finetuning method -> regularizer
(prepared once from the pretrained backbone) -> steps (embeddings -> head -> task loss + λ ·
penalty) -> evaluation -> run folder. Under torchrun every rank runs this; only rank 0 writes
and prints.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from riftune import distributed, report
from riftune.config import RunConfig, read_config, write_config
from riftune.engine.build import (
    autocast_dtype,
    build_model_and_data,
    build_training,
    run_channels_last,
)
from riftune.engine.checkpointer import Checkpointer, TrainState
from riftune.engine.evaluation import EvalResult, eval_loader, evaluate_split, final_metrics
from riftune.engine.outputs import LiveOutputs, budget_weight, write_evaluation_outputs
from riftune.engine.progress import Progress
from riftune.engine.selection import initial_best, is_better
from riftune.engine.signals import GracefulStop, Preempted
from riftune.engine.step import NonFiniteLossError
from riftune.engine.timing import PhaseTimer
from riftune.errors import UserError
from riftune.models.speed import thread_report
from riftune.runs.folder import RunDir, check_claim, claim, run_lock, write_json_atomic

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
    def _on_main(self, work) -> None:
        """Run ``work()`` on the main rank; its UserError reaches every rank."""
        error = None
        if self.ctx.is_main:
            try:
                work()
            except UserError as caught:
                error = str(caught)
        error = self.ctx.broadcast_object(error)
        if error is not None:
            raise UserError(error)

    def _preflight(self) -> None:
        """Refuse a run that could not start in its folder, before building anything."""
        out = self.config.output
        self._on_main(lambda: check_claim(self.run_dir, out.resume, out.overwrite))

    def _claim_run_dir(self) -> None:
        """Take the folder's writer lock (held until the run ends), claim it, write
        config.yaml; only now is anything written, so bad input leaves no folder behind."""
        out = self.config.output

        def claim_and_record() -> None:
            self.lock.enter_context(run_lock(self.run_dir))
            claim(self.run_dir, resume=out.resume, overwrite=out.overwrite)
            if out.resume:
                self._check_same_config()
            else:
                write_config(self.config, self.run_dir.config)

        self._on_main(claim_and_record)

    def _check_same_config(self) -> None:
        """A resumed run must train as the interrupted one did (its convolution weights in the
        same layout, however ``--channels-last`` says it); evaluation options may change."""
        stored_config = read_config(self.run_dir.config)
        stored, now = stored_config.training_part(), self.config.training_part()
        changed = sorted(
            f"{section}.{key}"
            for section in stored.keys() | now.keys()
            if isinstance(stored.get(section, {}), dict)
            for key in stored.get(section, {}).keys() | now.get(section, {}).keys()
            if stored.get(section, {}).get(key) != now.get(section, {}).get(key)
        )
        layouts = [run_channels_last(c.training, self.model) for c in (stored_config, self.config)]
        if layouts[0] != layouts[1]:
            changed.append(
                f"training.channels_last (give --channels-last {'on' if layouts[0] else 'off'})"
            )
        if changed:
            raise UserError(
                f"--resume needs the training options of the interrupted run; these differ: "
                f"{', '.join(changed)} (see {self.run_dir.config})"
            )

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
        self.budget = budget_weight(self.config)
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
        if self.ctx.is_distributed and names != self._trainable_names:
            self.training.step.forward_model = DistributedDataParallel(
                self.model,
                device_ids=[self.ctx.device.index] if self.ctx.device.type == "cuda" else None,
                broadcast_buffers=False,
            )
        self._trainable_names = names

    def _stateful(self) -> dict:
        """What a checkpoint holds besides the model (the budget's λ and running mean too)."""
        budget = {"budget": self.budget} if self.budget else {}
        return self.training.stateful() | budget | {"timing": self.timer}

    def _save(self) -> None:
        with self.timer.phase("checkpointing"):
            wall = self.state.wall_seconds + (time.perf_counter() - self._started)
            self.checkpointer.save(self.state, wall, self.model, self._stateful())
        self._saved_at = time.perf_counter()

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
            s.epoch_sums = {"loss": 0.0, "task": 0.0, "reg": 0.0}
        sums = s.epoch_sums
        bar = self.progress.bar(
            self.steps_per_epoch, initial=s.step_in_epoch, desc=f"epoch {epoch + 1}"
        )
        every = self.config.training.checkpoint_every
        tick = start = time.perf_counter()
        for images, labels, indices in t.loader:
            s.data_ms.append((time.perf_counter() - tick) * 1000.0)
            try:
                losses = self._global_mean(t.step(images, labels, indices))
            except NonFiniteLossError:
                self.checkpointer.flush_best()
                raise NonFiniteLossError(
                    f"loss became non-finite at step {s.global_step + 1} (epoch {epoch + 1}); "
                    f"lower --lr or --lam. {self.checkpointer.kept()}"
                ) from None
            now = time.perf_counter()
            s.step_ms.append((now - tick) * 1000.0)
            s.global_step += 1
            s.step_in_epoch += 1
            row = {"step": s.global_step, **losses, "lr": t.scheduler.get_last_lr()[0]}
            if self.budget is not None:  # λ of this step, then the dual step for the next
                row |= {"lam": t.step.lam, "reg_mean": self.budget.update(losses["reg"])}
                row["reg_mean"], t.step.lam = self.budget.running, self.budget.value
            s.steps.append(row)
            self.outputs.step(row)
            for key in sums:
                sums[key] += losses[key]
            bar.update(loss=losses["loss"])
            mid_epoch = s.step_in_epoch < self.steps_per_epoch
            if every and s.global_step % every == 0 and mid_epoch:
                self.timer.add("train_steps", time.perf_counter() - start)
                self._save()
                start = time.perf_counter()
            if mid_epoch and self.stop.should_stop(self.ctx):
                self.timer.add("train_steps", time.perf_counter() - start)
                self._stop_here()
            tick = time.perf_counter()
        self.timer.add("train_steps", time.perf_counter() - start)
        bar.close()
        return {
            f"train_{k if k == 'loss' else k + '_loss'}": v / max(s.step_in_epoch, 1)
            for k, v in sums.items()
        }

    def _stop_here(self) -> None:
        """Checkpoint this step boundary and stop the run (a signal asked for it)."""
        self._save()
        self.ctx.barrier()  # torchrun ends the others as soon as one rank exits
        raise Preempted(self.stop.signal_name, self.state.global_step, self.run_dir.checkpoints)

    def _global_mean(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Losses of the global batch: the mean over ranks of each rank's (equal-sized) batch."""
        stacked = torch.stack([losses[k].float() for k in sorted(losses)])
        if self.ctx.is_distributed:
            torch.distributed.all_reduce(stacked)
            stacked /= self.ctx.world_size
        return dict(zip(sorted(losses), stacked.tolist(), strict=True))

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
        self._preflight()
        self._build()
        self._claim_run_dir()
        self.state = TrainState(best_value=initial_best(self.config.training.select_on))
        if self.config.output.resume:
            built = {phase: self.timer.seconds(phase) for phase in BUILD_PHASES}  # this session's
            self.state, name = self.checkpointer.restore(
                self.model, self._stateful(), optional=("timing",)
            )
            for phase, seconds in built.items():  # the restore replaced the totals
                self.timer.add(phase, seconds)
            if self.budget is not None:
                self.training.step.lam = self.budget.value
            self.progress.log(
                f"resumed from {name} at epoch {self.state.epoch + 1}, step "
                f"{self.state.step_in_epoch}"
            )
        s, epochs = self.state, self.config.training.epochs
        self._saved_at = time.perf_counter()
        self.outputs = LiveOutputs(self.run_dir, self.config, self.ctx, s)
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
            if self.budget is not None:
                row["lam"] = self.training.step.lam
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
            self.model, self.data, self.pretrained, self.config, self.ctx, self.amp_dtype,
            self.timer,
        )  # fmt: skip
        # the figures and the last line show test, or validation in a cross-validation fold run
        shown, shown_name = (final.val, "val") if final.test is None else (final.test, "test")
        if self.ctx.is_main:
            with self.timer.phase("figures"):
                self.outputs.close(final.metrics)
                report.plot_training(s.history, self.run_dir.training_plot)
                write_evaluation_outputs(self.run_dir, final, self.data)
                labels, names = shown.collected.labels, self.data.class_names
                if self.data.multilabel:  # colour by how many labels an image has
                    labels = labels.sum(1)
                    names = [f"{k} positive labels" for k in range(self.data.num_classes + 1)]
                report.plot_embeddings(
                    getattr(self.pretrained, shown_name).embeddings.numpy(),
                    shown.collected.embeddings.numpy(),
                    labels.numpy(),
                    self.run_dir.embeddings_plot,
                    class_names=names,
                    cka=shown.cka,
                )
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
