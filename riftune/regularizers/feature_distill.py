r"""Feature distillation: keep each sample's embedding close to its pretrained embedding.

.. math::

    \Omega(z) = \frac{1}{n}\sum_{i=1}^{n} \lVert z_i - z_{0,i}\rVert_2^2

per-sample squared Euclidean distance, summed over the d features (not divided by d) and
averaged over the n samples of the local batch. Under ``torch.distributed`` with equal local
batches, DistributedDataParallel's gradient averaging makes this the global-batch mean; no
collective is needed. This is the embedding-level form of the feature-map distillation
baselines in DELTA (Li et al., ICLR 2019, https://openreview.net/forum?id=rkgbwsAcYm) and of
"learning without forgetting"-style feature matching (e.g. Li & Hoiem, 2017,
https://arxiv.org/abs/1606.09282).

z₀ comes from a frozen pretrained forward pass (``--reference teacher``) or the per-sample cache
(``--reference cache``); the flag is shared with ``--reg cka``.
"""

from __future__ import annotations

import torch
from torch import nn

from riftune.regularizers.base import StepInputs, register
from riftune.regularizers.cka import ReferencePenalty, paired_embeddings


class FeatureDistance(nn.Module):
    r"""Mean squared Euclidean distance of each embedding to its pretrained one, engine-free.

    The embedding-level feature distillation of DELTA's baselines (Li et al., ICLR 2019,
    https://openreview.net/forum?id=rkgbwsAcYm) and LwF-style feature matching:

    .. math::
        Ω(z, z_0) = \frac{1}{n}\sum_{i=1}^{n} ‖z_i − z_{0,i}‖²_2

    summed over the d features, averaged over the n local samples; z₀ is a constant. Computed
    in float32 with autocast off.

    Shape:
        - z, z0: (n, d), the same samples in the same order.
        - output: scalar, float32.
    """

    def forward(self, z: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=z.device.type, enabled=False):
            return (z.float() - z0.detach().float()).square().sum(1).mean()


@register
class FeatureDistill(ReferencePenalty):
    """``--reg feature-distill``: :class:`FeatureDistance` of the step's embeddings and their
    references.

    Args:
        reference: where z₀ comes from, ``"teacher"`` or ``"cache"``.
    """

    name = "feature-distill"
    splits_over_micro_batches = True

    def __init__(self, reference: str = "teacher"):
        super().__init__(reference)
        self.distance = FeatureDistance()

    def penalty(self, step: StepInputs) -> torch.Tensor:
        """Mean over the batch of the squared L2 distance (:class:`FeatureDistance`, float32)."""
        return self.distance(*paired_embeddings(step, "--reg feature-distill"))
