"""riftune's regularizers inside training loops that other frameworks run.

:class:`Regularization` (here, framework-free) holds a riftune regularizer, its weight λ (fixed
or a similarity budget) and RIFT's per-sample pretrained cache, filled by one pass of the
pretrained model before training. Each framework has its own module, the only place that
imports it, so ``import riftune.integrations`` needs neither: :mod:`.lightning` (a PyTorch
Lightning callback, ``pip install 'riftune[lightning]'``) and :mod:`.hf_trainer` (a Hugging
Face ``Trainer`` subclass, ``pip install 'riftune[hf]'``). Their module docstrings show the
lines an existing training script gains.

It may import the public surface below it (:mod:`riftune.budget`, regularizers, metrics,
models); nothing imports it.
"""

from riftune.integrations.regularization import Regularization

__all__ = ["Regularization"]
