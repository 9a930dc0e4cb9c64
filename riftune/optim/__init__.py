"""Optimizers beyond ``torch.optim``: AdamW with Selective Projection Decay or Fast Trainable
Projection.

It imports :mod:`riftune.models` and :mod:`riftune.tuning` (which parameters a method
trains), nothing above them.
"""

from riftune.optim.ftp import FTPAdamW
from riftune.optim.spd import SPDAdamW, spd_anchors, spd_param_groups

__all__ = ["FTPAdamW", "SPDAdamW", "spd_anchors", "spd_param_groups"]
