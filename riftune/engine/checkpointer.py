"""Saving and restoring a run's progress: one :class:`TrainState`, declared once.

A progress checkpoint holds ``state`` (the :class:`TrainState` fields), the ``model``, the
``state_dict`` of every object :meth:`Training.stateful` lists, and the RNG states; ``best``
holds the model alone. The best model is kept in memory when validation picks it and written
just before the next progress checkpoint (or when training stops on a non-finite loss). A
crash between those two writes leaves a best model newer than the newest progress checkpoint;
the resumed run replays those epochs and writes it again (on the CPU bit for bit), and the end
of a run checks that the best model it evaluates is the one its validation chose. Files,
checksums and atomic writes are :mod:`riftune.runs.checkpoint_file`'s job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from riftune.distributed import DistributedContext
from riftune.errors import UserError
from riftune.runs import checkpoint_file as ckpt
from riftune.runs import rng_state as rng
from riftune.runs.folder import RunDir

KEEP = 2
"""Progress checkpoints kept (the newest ones)."""


@dataclass
class TrainState:
    """What advances during training and must survive a crash, besides the tensors."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done within the current epoch
    global_step: int = 0
    best_value: float = float("-inf")  # of the --select-on metric at best_epoch
    best_epoch: int = -1
    wall_seconds: float = 0.0  # of the earlier sessions of this run
    history: list[dict] = field(default_factory=list)
    step_ms: list[float] = field(default_factory=list)  # per step, waiting for its batch included
    data_ms: list[float] = field(default_factory=list)  # per step, waiting for its batch
    epoch_sums: dict[str, float] = field(default_factory=dict)  # running loss sums this epoch
    steps: list[dict] = field(default_factory=list)  # per-step losses and learning rate

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TrainState:
        """From a checkpoint's ``state``; fields an older checkpoint lacks keep their default."""
        names = {f.name for f in dataclasses.fields(cls)}
        meta = dict(meta)
        if "best_val_auc" in meta:  # checkpoints before --select-on selected on AUC
            meta["best_value"] = meta.pop("best_val_auc")
        return cls(**{k: v for k, v in meta.items() if k in names})


class Checkpointer:
    """Writes (on the main rank only) and reads the checkpoints of one run folder."""

    def __init__(self, run_dir: RunDir, ctx: DistributedContext):
        self.directory = run_dir.checkpoints
        self.ctx = ctx
        self._best: tuple[dict, dict] | None = None  # (tensors, meta) not yet on disk

    def save(self, state: TrainState, wall_seconds: float, model, stateful: dict) -> None:
        """A progress checkpoint of everything needed to continue exactly, after the best
        model kept since the last one; keeps the newest :data:`KEEP`. ``wall_seconds``: the
        run's total so far (this session included)."""
        if not self.ctx.is_main:
            return
        self.flush_best()
        meta_state = dataclasses.asdict(state) | {"wall_seconds": wall_seconds}
        tensors, meta = ckpt.flatten_state(
            {
                "state": meta_state,
                "model": model.state_dict(),
                **{key: obj.state_dict() for key, obj in stateful.items()},
                "rng": rng.capture_rng_state(),
            }
        )
        ckpt.save_checkpoint(self.directory, f"step-{state.global_step:08d}", tensors, meta)
        ckpt.rotate_checkpoints(self.directory, keep=KEEP)

    def keep_best(self, model, epoch: int) -> None:
        """Copy ``model``'s weights as the best so far; the next :meth:`save` writes them."""
        if not self.ctx.is_main:
            return
        weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        tensors, meta = ckpt.flatten_state({"model": weights})
        meta["epoch"] = epoch
        self._best = (tensors, meta)

    def restore(
        self, model, stateful: dict, optional: tuple[str, ...] = ()
    ) -> tuple[TrainState, str]:
        """Load the newest valid progress checkpoint into ``model`` and ``stateful``; returns
        its state and its file name. Keys in ``optional`` may be missing from checkpoints of
        older versions (their objects keep their fresh state)."""
        path = ckpt.latest_valid_checkpoint(self.directory)
        if path is None:
            raise UserError(
                f"no valid checkpoint in {self.directory} to resume from; start again with "
                "--overwrite"
            )
        tensors, meta = ckpt.load_checkpoint(path)
        state = ckpt.unflatten_state(tensors, meta)
        model.load_state_dict(state["model"])
        for key, obj in stateful.items():
            if key in state or key not in optional:
                obj.load_state_dict(state[key])
        rng.restore_rng_state(state["rng"])
        return TrainState.from_meta(state["state"]), path.name

    def flush_best(self) -> None:
        """Write the best model kept since the last progress checkpoint, if any."""
        if self.ctx.is_main and self._best is not None:
            ckpt.save_checkpoint(self.directory, ckpt.BEST, *self._best)
            self._best = None

    def kept(self) -> str:
        """What the checkpoint folder holds, for messages."""
        names = sorted(p.name for p in self.directory.glob(f"*{ckpt.SUFFIX}"))
        if not names:
            return f"no checkpoint was written to {self.directory}"
        return f"{self.directory} holds {', '.join(names)}"

    def load_best(self, model, epoch: int) -> None:
        """Load the best model into ``model``, after checking it is the one of ``epoch``.

        Raises:
            UserError: the file holds another epoch's model (a crash between the best and the
                progress checkpoint's writes, replayed differently on a nondeterministic GPU).
        """
        tensors, meta = ckpt.load_checkpoint(ckpt.checkpoint_path(self.directory, ckpt.BEST))
        if meta.get("epoch", epoch) != epoch:
            raise UserError(
                f"{self.directory}/{ckpt.BEST}{ckpt.SUFFIX} holds epoch {meta['epoch']}'s model "
                f"but validation chose epoch {epoch}; evaluate that epoch by rerunning with "
                "--overwrite"
            )
        model.load_state_dict(ckpt.unflatten_state(tensors, meta)["model"])
