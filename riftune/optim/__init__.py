"""Optimizers beyond ``torch.optim``: AdamW with Selective Projection Decay."""

from riftune.optim.spd import SPDAdamW, spd_anchors, spd_param_groups

__all__ = ["SPDAdamW", "spd_anchors", "spd_param_groups"]
