"""RIFT (or any riftune regularizer) in a PyTorch Lightning ``Trainer``: one callback.

:class:`RegularizerCallback` fills the per-sample pretrained cache with one pass of the still
pretrained model over the training set when training starts, updates λ after every optimizer
step under a similarity budget, logs ``riftune/penalty`` and ``riftune/lam`` with
``LightningModule.log`` and keeps λ, the regularizer and the cache in Lightning's checkpoints
(a resumed fit does not refill the cache from a finetuned model). Why a callback plus one call
in ``training_step`` rather than a callback alone or a mixin: Lightning's callbacks see the loss
(``on_before_backward``) but cannot return a changed one, and a mixin would take over hooks
(``on_train_start``, ``on_before_optimizer_step``) that the user's module may define itself.

The diff to an existing script (``pip install 'riftune[lightning]'``; the dataset yields
``(images, labels, index)`` and the model returns ``(logits, embeddings)``, as riftune's do)::

    +from riftune.integrations.lightning import RegularizerCallback

     class Finetune(L.LightningModule):
         def __init__(self):
             super().__init__()
             self.model = build_classifier("efficientnet_lite0", num_classes=2)
    +        self.rift = RegularizerCallback("rift", target_similarity=0.8)

         def training_step(self, batch, batch_idx):
             x, y, index = batch
             logits, z = self.model(x)
    -        return F.cross_entropy(logits, y)
    +        return F.cross_entropy(logits, y) + self.rift(self, z, index)

     module = Finetune()
    -trainer = L.Trainer(max_epochs=10)
    +trainer = L.Trainer(max_epochs=10, callbacks=[module.rift])
     trainer.fit(module, DataLoader(data.train, batch_size=32, shuffle=True))

The pass that fills the cache runs over the training loader's dataset in order, without
augmentation when the dataset has ``without_augmentation()`` (riftune's do), with ``embed``
(default: the ``embed`` method of the module or of its first submodule that has one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from riftune.integrations.regularization import Regularization
from riftune.regularizers import Regularizer


class RegularizerCallback(pl.Callback):
    """Adds λ·penalty of a riftune regularizer to a LightningModule's training loss.

    Args:
        regularizer: the regularizer's name or instance, as
            :class:`~riftune.integrations.regularization.Regularization` takes it.
        embed: ``(module, images) -> embeddings`` for the pass that fills the cache; default
            the ``embed`` method found on the module or its submodules.
        cache_batch_size: batch size of that pass.
        **kwargs: the rest of ``Regularization``'s arguments (``lam``, ``target_similarity``,
            the regularizer's options).
    """

    def __init__(
        self,
        regularizer: str | Regularizer = "rift",
        *,
        embed: Callable[[pl.LightningModule, torch.Tensor], torch.Tensor] | None = None,
        cache_batch_size: int = 128,
        **kwargs: Any,
    ):
        self.regularization = Regularization(regularizer, **kwargs)
        self.embed = embed
        self.cache_batch_size = cache_batch_size

    def __call__(
        self,
        module: pl.LightningModule,
        embeddings: torch.Tensor,
        indices: torch.Tensor,
        model: nn.Module | None = None,
    ) -> torch.Tensor:
        """λ·penalty of the batch, to add to the loss in ``training_step``.

        Args:
            module: the LightningModule (its ``log`` records penalty and λ).
            embeddings: the batch's finetuned embeddings. Shape: (n, d).
            indices: the samples' training-set indices. Shape: (n,).
            model: what L2-SP reads weights from (default: ``module``).
        """
        term = self.regularization(embeddings, indices, module if model is None else model)
        logged = {"penalty": self.regularization.last_penalty, "lam": self.regularization.lam}
        for name, value in logged.items():
            module.log(f"riftune/{name}", value, on_step=True, on_epoch=True, prog_bar=False)
        return term

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Fill the cache, unless a checkpoint restored it; either way on the module's device."""
        if self.regularization.ready:
            self.regularization.to(pl_module.device)
            return
        loader = trainer.train_dataloader
        dataset = loader.dataset
        if hasattr(dataset, "without_augmentation"):
            dataset = dataset.without_augmentation()
        in_order = DataLoader(
            dataset, batch_size=self.cache_batch_size, collate_fn=loader.collate_fn
        )
        embed = _embed_function(pl_module, self.embed)
        self.regularization.fill_cache(pl_module, embed, in_order, pl_module.device)

    def on_before_optimizer_step(self, *args: Any) -> None:
        # after the closure's backward passes, once per optimizer step
        self.regularization.step_done()

    def state_dict(self) -> dict[str, Any]:
        """λ, the regularizer and the cache, saved in Lightning's checkpoints."""
        return self.regularization.extra_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.regularization.load_extra_state(state_dict)


def _embed_function(
    module: pl.LightningModule,
    embed: Callable[[pl.LightningModule, torch.Tensor], torch.Tensor] | None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    if embed is not None:
        return lambda images: embed(module, images)
    for _, sub in module.named_modules():
        if callable(getattr(sub, "embed", None)):
            return sub.embed
    raise ValueError("no submodule has an embed method; pass embed=(module, images) -> z")
