"""RIFT (or any riftune regularizer) in the Hugging Face ``Trainer``: a drop-in subclass.

:class:`RegularizedTrainer` is ``transformers.Trainer`` with λ·penalty added to the training
loss in ``compute_loss``. Before training it fills the per-sample pretrained cache with one pass
of the still pretrained model over ``train_dataset``; after every optimizer step it updates λ
under a similarity budget; its logs (``Trainer.log``: the console, ``log_history`` and every
``report_to`` tracker) carry ``riftune_penalty`` (the mean since the last log) and
``riftune_lam``; each checkpoint folder gets ``riftune_regularization.pt`` (λ, the regularizer,
the cache), which ``train(resume_from_checkpoint=...)`` reads back. A callback alone could not
do it: ``TrainerCallback`` methods see the loss only after its backward pass.

The diff to an existing script (``pip install 'riftune[hf]'``; each training item is a dict
that also holds the sample's ``index`` 0..N−1 and the model's output holds ``embeddings``)::

    -from transformers import Trainer
    +from riftune.integrations import Regularization
    +from riftune.integrations.hf_trainer import RegularizedTrainer

    -trainer = Trainer(model=model, args=args, train_dataset=train)
    +rift = Regularization("rift", target_similarity=0.8)
    +trainer = RegularizedTrainer(model=model, args=args, train_dataset=train, regularization=rift)
     trainer.train()

The Trainer drops the batch fields that the model's ``forward`` does not name; the subclass adds
``index`` to the fields it keeps, and takes it out of the batch before the forward pass.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from riftune.errors import UserError
from riftune.integrations.regularization import Regularization

STATE_FILE = "riftune_regularization.pt"
"""The file in each checkpoint folder that holds λ, the regularizer and the cache."""


class RegularizedTrainer(Trainer):
    """``transformers.Trainer`` whose training loss adds a riftune regularizer's λ·penalty.

    Args:
        *args: what ``Trainer`` takes positionally.
        regularization: the regularizer, its λ and its cache.
        index_key: the batch field with each sample's training-set index (removed before the
            model's forward).
        embeddings_key: the model output field with the embeddings. Shape: (n, d).
        input_key: the batch field the model embeds in the pass that fills the cache.
        cache_batch_size: batch size of that pass.
        **kwargs: what ``Trainer`` takes by keyword.
    """

    def __init__(
        self,
        *args: Any,
        regularization: Regularization,
        index_key: str = "index",
        embeddings_key: str = "embeddings",
        input_key: str = "pixel_values",
        cache_batch_size: int = 128,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.regularization = regularization
        self.index_key, self.embeddings_key, self.input_key = index_key, embeddings_key, input_key
        self.cache_batch_size = cache_batch_size
        self._since_log: list[dict[str, float]] = []
        self.add_callback(_StepEnd(self))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> Any:
        """``Trainer.train``, after filling the cache (or reading it from the checkpoint)."""
        if resume_from_checkpoint:
            folder = resume_from_checkpoint
            if folder is True:
                folder = get_last_checkpoint(self.args.output_dir)
            if folder is None:
                raise UserError(f"no checkpoint in {self.args.output_dir} to resume from")
            path = Path(folder) / STATE_FILE
            if not path.is_file():
                raise UserError(f"{path} is missing: this checkpoint holds no riftune cache")
            self.regularization.load_extra_state(torch.load(path, weights_only=True))
        elif not self.regularization.ready:
            self._fill_cache()
        self.regularization.to(self.args.device)
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The Trainer's loss plus λ·penalty while training (evaluation leaves it out)."""
        indices = inputs.pop(self.index_key, None)
        if indices is None and model.training:
            raise KeyError(f"each training item must hold its index 0..N-1 as {self.index_key!r}")
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if model.training:
            term = self.regularization(
                outputs[self.embeddings_key], indices, self.accelerator.unwrap_model(model)
            )
            loss = loss + term / self._accumulation_divisor(num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """``Trainer.log``, with the mean penalty since the last training log and λ."""
        if "loss" in logs and self._since_log:
            penalties = [step["penalty"] for step in self._since_log]
            logs["riftune_penalty"] = sum(penalties) / len(penalties)
            logs["riftune_lam"] = self._since_log[-1]["lam"]
            self._since_log.clear()
        super().log(logs, start_time)

    def step_done(self) -> None:
        """After an optimizer step: λ's update, and the step's penalty and λ kept for the log."""
        logged = self.regularization.step_done()
        if logged:
            self._since_log.append(logged)

    def _set_signature_columns_if_needed(self) -> None:
        """The Trainer's kept columns (the model's forward arguments) and the index field."""
        super()._set_signature_columns_if_needed()
        if self.index_key not in self._signature_columns:
            self._signature_columns.append(self.index_key)

    def _accumulation_divisor(self, num_items_in_batch: torch.Tensor | int | None) -> int:
        """The Trainer divides an unscaled loss by the accumulation steps after compute_loss;
        a loss the model already normalized over the accumulated batch (``loss_is_scaled_for_ga``)
        is not divided, so the term, a per-batch mean, is divided here instead."""
        scaled = self.loss_is_scaled_for_ga
        if scaled is None:
            scaled = (
                self.model_accepts_loss_kwargs and num_items_in_batch is not None
            ) or self.compute_loss_func is not None
        return self.current_gradient_accumulation_steps if scaled else 1

    def _fill_cache(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        loader = DataLoader(
            self.train_dataset, batch_size=self.cache_batch_size, collate_fn=self.data_collator
        )

        def embed(images: torch.Tensor) -> torch.Tensor:
            return model(**{self.input_key: images})[self.embeddings_key]

        self.regularization.fill_cache(model, embed, self._triples(loader), self.args.device)

    def _triples(self, loader: DataLoader) -> Iterator[tuple[torch.Tensor, ...]]:
        """The dict batches as ``(images, labels, indices)``, what the cache pass reads."""
        for batch in loader:
            labels = batch.get("labels", torch.zeros(len(batch[self.index_key])))
            yield batch[self.input_key], labels, batch[self.index_key]


class _StepEnd(TrainerCallback):
    """Updates λ after each optimizer step and saves the riftune state with each checkpoint."""

    def __init__(self, trainer: RegularizedTrainer):
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.step_done()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        torch.save(self.trainer.regularization.extra_state(), os.path.join(folder, STATE_FILE))
