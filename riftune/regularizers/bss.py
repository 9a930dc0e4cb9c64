r"""Batch Spectral Shrinkage (BSS): shrink the smallest singular values of the batch's features.

Chen, Wang, Fu, Long & Wang, "Catastrophic Forgetting Meets Negative Transfer: Batch Spectral
Shrinkage for Safe Transfer Learning", NeurIPS 2019
(https://proceedings.neurips.cc/paper/2019/hash/c6bff625bdb0393992c9d4db0c6bbe45-Abstract.html;
reference code: thuml/Transfer-Learning-Library, ``tllib/regularization/bss.py``).

.. math::

    \Omega(Z) = \sum_{i=1}^{k} \sigma_{-i}^2(Z)

with Z the finetuned embeddings of the batch, one row per image (not centred), and
σ_{−1} ≤ σ_{−2} ≤ … its smallest singular values (of the min(n, d) there are); k =
``--bss-k`` (1, the paper's and the reference's default). The paper's weight is η = 10⁻³
(``--lam``'s default here). BSS needs no pretrained model: it only suppresses the spectral
components that finetuning on few images learns least reliably, so beside RIFT's covariance
form at Q = identity it separates what matching the *pretrained* spectrum adds. Under
``torch.distributed`` Z is the global batch (every rank's rows, gathered with gradient), so
the penalty does not depend on how the batch is split; it is a batch statistic, so it does not
split over ``--micro-batches``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from riftune.distributed import gather_global_batch
from riftune.errors import UserError
from riftune.options import Section, option, positive
from riftune.regularizers.base import Regularizer, StepInputs, register


class BatchSpectralShrinkage(nn.Module):
    """Σ of the k smallest squared singular values of a feature matrix; formula above.

    Args:
        k: how many of the smallest singular values to penalize.

    Shape:
        z: (n, d). Returns a scalar (float32; the SVD runs in float32 outside autocast).

    Raises:
        ValueError: ``z`` has fewer than k singular values (min(n, d) < k).
    """

    def __init__(self, k: int = 1):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be >= 1; got {k}")
        self.k = k

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if min(z.shape) < self.k:
            raise ValueError(
                f"BSS penalizes the {self.k} smallest singular values; a {tuple(z.shape)} "
                f"feature matrix has {min(z.shape)}"
            )
        with torch.autocast(device_type=z.device.type, enabled=False):
            singular = torch.linalg.svdvals(z.float())  # descending
            return singular[-self.k :].square().sum()


@register
class BSS(Regularizer):
    """``--reg bss``: Σ of the k smallest squared singular values of the (global) batch's
    embeddings; formula in the module docstring.

    Args:
        k: how many singular values (``--bss-k``).
    """

    name = "bss"
    min_batch_size = 2  # one image's only singular value is its norm
    default_lam = 1e-3  # η in the paper
    penalizes_features_only = True

    @dataclass
    class Options(Section):
        """``--bss-*``."""

        flag_prefix: ClassVar[str] = "bss"
        k: int = option(
            1, "bss: how many of the batch features' smallest singular values to shrink",
            check=positive,
        )  # fmt: skip

    def __init__(self, k: int = 1):
        super().__init__()
        self.shrinkage = BatchSpectralShrinkage(k)

    def penalty(self, step: StepInputs) -> torch.Tensor:
        """Ω on the global batch's embeddings.

        Shape:
            step.embeddings: (n, d). Returns a scalar.

        Raises:
            UserError: the batch has fewer than k singular values (min(n, d) < k).
        """
        z = gather_global_batch(step.embeddings)
        if min(z.shape) < self.shrinkage.k:
            raise UserError(
                f"--bss-k {self.shrinkage.k} needs at least as many images per step and "
                f"embedding dimensions; this batch has {min(z.shape)} singular values: lower "
                "--bss-k or raise --batch-size"
            )
        return self.shrinkage(z)
