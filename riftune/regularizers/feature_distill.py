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

from riftune.regularizers.base import StepInputs, register
from riftune.regularizers.cka import ReferencePenalty, paired_embeddings


@register
class FeatureDistill(ReferencePenalty):
    """``--reg feature-distill``: mean over samples of ‖z_i − z₀,ᵢ‖²₂; formula above.

    Args:
        reference: where z₀ comes from, ``"teacher"`` or ``"cache"``.
    """

    name = "feature-distill"
    splits_over_micro_batches = True

    def penalty(self, step: StepInputs) -> torch.Tensor:
        """Mean over the batch of the squared L2 distance (float32).

        Shape:
            step.embeddings, step.reference: (n, d) each. Returns a scalar.
        """
        z, z0 = paired_embeddings(step, "--reg feature-distill")
        with torch.autocast(device_type=z.device.type, enabled=False):
            return (z.float() - z0.float()).square().sum(1).mean()
