"""LP-FT (Kumar et al. 2022, arXiv 2202.10054): linear probe first, then full finetuning."""

from __future__ import annotations

from dataclasses import dataclass

from riftune.errors import UserError
from riftune.options import Section, non_negative, option
from riftune.tuning.base import FinetuningMethod, FrozenMode, is_head, register


@register
class LPFT(FinetuningMethod):
    """Epochs ``0 .. lp_epochs-1`` train the head on a frozen backbone, later epochs everything.

    The probe phase is :class:`~riftune.tuning.linear.Linear` (whole backbone in eval mode),
    the finetuning phase :class:`~riftune.tuning.full.Full` (BatchNorm statistics update).
    Starting full finetuning from a trained head is what keeps the features from being
    distorted by a random head's large early gradients. The optimizer holds every parameter
    from the start; backbone parameters only receive gradients in the second phase.

    Args:
        lp_epochs: epochs of linear probing; ``None`` means half the run, ``epochs // 2``
            (so a one-epoch run has no probe phase). Must leave at least one finetuning epoch.
    """

    name = "lp-ft"
    phases = ("probe", "finetune")

    def __init__(self, lp_epochs: int | None = None):
        self.Options(lp_epochs=lp_epochs)  # checks the value
        self.lp_epochs = lp_epochs

    @dataclass
    class Options(Section):
        """``--lp-epochs``."""

        lp_epochs: int | None = option(
            None,
            "lp-ft: epochs of linear probing before full finetuning (default: half of --epochs)",
            check=non_negative,
        )

    def probe_epochs(self, epochs: int) -> int:
        """How many of ``epochs`` epochs are linear probing."""
        if self.lp_epochs is None:
            return epochs // 2
        if self.lp_epochs >= epochs:
            raise UserError(
                f"--lp-epochs {self.lp_epochs} leaves no finetuning epoch out of --epochs {epochs}; "
                "lower --lp-epochs or use --method linear"
            )
        return self.lp_epochs

    def phase(self, epoch: int, epochs: int) -> str:
        return "probe" if epoch < self.probe_epochs(epochs) else "finetune"

    def is_trainable(self, name: str, phase: str) -> bool:
        return phase == "finetune" or is_head(name)

    def frozen_mode(self, phase: str) -> FrozenMode:
        return "backbone" if phase == "probe" else "none"
