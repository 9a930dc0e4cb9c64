"""BitFit (Ben Zaken et al. 2022, arXiv 2106.10199): only bias terms and the head learn."""

from __future__ import annotations

from riftune.tuning.base import FinetuningMethod, is_head, register


@register
class BitFit(FinetuningMethod):
    """The head and every bias of the backbone train; all other weights stay pretrained.

    "Bias" means every parameter named ``bias``: those of convolutions and linear layers, of
    LayerNorm, and BatchNorm's shift β. BatchNorm's scale γ is a weight and stays frozen.
    BatchNorm layers are kept in eval mode, so their running statistics stay pretrained: the
    finetuned function then differs from the pretrained one through the biases alone (a
    per-channel shift after each normalization), which is what BitFit claims to measure.
    Letting the statistics adapt would add AdaBN-style re-normalization on top and confound
    the comparison with ``linear`` and ``full``. (EfficientNet-Lite's convolutions have no
    bias, so there BitFit trains BatchNorm's β and the head.)
    """

    name = "bitfit"

    def is_trainable(self, name: str, phase: str) -> bool:
        return is_head(name) or name.rsplit(".", 1)[-1] == "bias"
