"""Optimizers beyond ``torch.optim``: AdamW with Selective Projection Decay or Fast Trainable
Projection."""

from riftune.optim.ftp import FTPAdamW
from riftune.optim.spd import SPDAdamW, spd_anchors, spd_param_groups

__all__ = ["FTPAdamW", "SPDAdamW", "spd_anchors", "spd_param_groups"]
